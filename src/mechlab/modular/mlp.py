"""The grokking MLP: embeddings of a and b -> one ReLU hidden layer -> p logits. A TransformerLens
`HookedRootModule` with one hook point, `hook_hidden` (the post-ReLU neurons), so neuron ablations
are ordinary forward hooks (`model.hooks(fwd_hooks=[("hook_hidden", fn)])`, as in
`mechlab.analysis.neurons`). Registered as model kind "modular_mlp" so `core.model.load_checkpoint`
rebuilds it; hook points hold no weights, so the state dict is that of the plain module."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mechlab.core.model import build_module, register_model_kind


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


class ModularMLP(HookedRootModule):
    """forward(pairs [n, 2]) -> logits [n, p]. `hidden(pairs)` gives the post-ReLU neurons [n, d_hidden],
    which the forward pass routes through `hook_hidden`."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_a = torch.nn.Embedding(cfg.p, cfg.d_embed)
        self.embed_b = torch.nn.Embedding(cfg.p, cfg.d_embed)
        self.hidden_layer = torch.nn.Linear(2 * cfg.d_embed, cfg.d_hidden)
        self.out = torch.nn.Linear(cfg.d_hidden, cfg.p)
        self.hook_hidden = HookPoint()  # [n, d_hidden]
        self.setup()

    def hidden(self, pairs: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.embed_a(pairs[:, 0]), self.embed_b(pairs[:, 1])], dim=-1)
        return torch.relu(self.hidden_layer(x))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.out(self.hook_hidden(self.hidden(pairs)))


def build_mlp(cfg: MLPConfig, device: torch.device | str | None = None) -> ModularMLP:
    """A freshly initialised ModularMLP (deterministic given `cfg.seed`)."""
    return build_module(ModularMLP, cfg, device)


register_model_kind("modular_mlp", MLPConfig, build_mlp)
