"""The grokking MLP: embeddings of a and b -> one ReLU hidden layer -> p logits. A plain torch
module, registered as model kind "modular_mlp" so `core.model.load_checkpoint` rebuilds it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from mechlab.core.model import default_device, register_model_kind


@dataclass(frozen=True)
class MLPConfig:
    """Embeddings of a and b (d_embed each, separate tables) -> concatenation -> one ReLU hidden
    layer (d_hidden) -> p logits."""

    p: int = 113
    d_embed: int = 128
    d_hidden: int = 256
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"kind": "modular_mlp", **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "MLPConfig":
        return cls(**{k: v for k, v in obj.items() if k != "kind"})


class ModularMLP(torch.nn.Module):
    """forward(pairs [n, 2]) -> logits [n, p]. `hidden(pairs)` gives the post-ReLU neurons."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_a = torch.nn.Embedding(cfg.p, cfg.d_embed)
        self.embed_b = torch.nn.Embedding(cfg.p, cfg.d_embed)
        self.hidden_layer = torch.nn.Linear(2 * cfg.d_embed, cfg.d_hidden)
        self.out = torch.nn.Linear(cfg.d_hidden, cfg.p)

    def hidden(self, pairs: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.embed_a(pairs[:, 0]), self.embed_b(pairs[:, 1])], dim=-1)
        return torch.relu(self.hidden_layer(x))

    def forward(self, pairs: torch.Tensor, hidden_hook=None) -> torch.Tensor:
        h = self.hidden(pairs)
        if hidden_hook is not None:  # e.g. zero-ablate neurons: lambda h: h * mask
            h = hidden_hook(h)
        return self.out(h)


def build_mlp(cfg: MLPConfig, device: torch.device | str | None = None) -> ModularMLP:
    """A freshly initialised ModularMLP (deterministic given `cfg.seed`)."""
    torch.manual_seed(cfg.seed)
    model = ModularMLP(cfg).to(device or default_device())
    model.mechlab_config = cfg
    return model


register_model_kind("modular_mlp", MLPConfig, build_mlp)
