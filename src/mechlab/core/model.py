"""The one model factory: config dataclasses -> TransformerLens `HookedTransformer`, plus
checkpoint save/load that refuses a checkpoint written for another config or vocabulary.

Everything that touches TransformerLens' model classes lives here, so a later move to
TransformerLens 4 (`TransformerBridge.boot_native`) changes this file only.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechlab.core.io import torch_save_atomic, write_json_atomic


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer. Defaults are the main study's model."""

    n_layers: int = 4
    n_heads: int = 8
    d_model: int = 128
    d_head: int = 16
    d_mlp: int | None = 512  # None = attention-only
    d_vocab: int = 19
    n_ctx: int = 32
    act_fn: str = "gelu"
    normalization_type: str | None = "LN"  # pre-LayerNorm; None = no LayerNorm
    positional_embedding_type: str = "standard"  # learned absolute positions
    vocab: tuple[str, ...] = field(default_factory=tuple)  # token strings, checked on load
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "ModelConfig":
        obj = dict(obj)
        obj["vocab"] = tuple(obj.get("vocab", ()))
        return cls(**obj)


class CheckpointMismatchError(ValueError):
    """A checkpoint was written for a different config or vocabulary than the one asked for."""


def default_device() -> torch.device:
    """CUDA when available, otherwise CPU: the same code path runs on both."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> HookedTransformer:
    """A freshly initialised `HookedTransformer` for `cfg` (deterministic given `cfg.seed`)."""
    if cfg.vocab and len(cfg.vocab) != cfg.d_vocab:
        raise ValueError(f"config has d_vocab={cfg.d_vocab} but a vocabulary of {len(cfg.vocab)} tokens")
    tl_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        d_vocab=cfg.d_vocab,
        n_ctx=cfg.n_ctx,
        act_fn=cfg.act_fn if cfg.d_mlp else None,
        attn_only=cfg.d_mlp is None,
        normalization_type=cfg.normalization_type,
        positional_embedding_type=cfg.positional_embedding_type,
        seed=cfg.seed,
        device=str(device or default_device()),
    )
    with warnings.catch_warnings():  # TL 3.x warns that 4.0 drops HookedTransformer; we pin <4
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = HookedTransformer(tl_cfg)
    model.mechlab_config = cfg  # the config travels with the model, for save_checkpoint
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(model: torch.nn.Module, cfg: Any, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Write weights to `path` (a .pt file) and the config as `config.json` beside it, atomically.

    `cfg` is any dataclass with `to_json()`: a ModelConfig, or another study's model config.
    """
    path = Path(path)
    torch_save_atomic(path, {"config": cfg.to_json(), "state_dict": model.state_dict(), **(extra or {})})
    write_json_atomic(path.parent / "config.json", cfg.to_json())


def check_config_matches(saved: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """Raise CheckpointMismatchError listing every field where `saved` differs from `expected`."""
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, expected {expected.get(k)!r}"
             for k in sorted(set(saved) | set(expected)) if saved.get(k) != expected.get(k)]
    if diffs:
        raise CheckpointMismatchError(f"{path} was saved for another config:\n  " + "\n  ".join(diffs))


def load_checkpoint(path: Path, expected: ModelConfig | None = None, device: torch.device | str | None = None) -> HookedTransformer:
    """Rebuild the model saved at `path`. If `expected` is given, its config (including the
    vocabulary) must match the checkpoint's exactly, or CheckpointMismatchError is raised."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if expected is not None:
        saved = json.loads(json.dumps(ckpt["config"]))
        check_config_matches(saved, json.loads(json.dumps(expected.to_json())), path)
    cfg = ModelConfig.from_json(ckpt["config"])
    model = build_model(cfg, device)
    model.load_state_dict(ckpt["state_dict"])
    return model


# --- The grokking MLP (issue 3, part A): a plain torch module, built and saved like the rest. ---


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


def load_mlp_checkpoint(path: Path, expected: MLPConfig | None = None,
                        device: torch.device | str | None = None) -> ModularMLP:
    """Rebuild a ModularMLP saved with `save_checkpoint`; config checked like `load_checkpoint`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if expected is not None:
        check_config_matches(ckpt["config"], expected.to_json(), path)
    model = build_mlp(MLPConfig.from_json(ckpt["config"]), device)
    model.load_state_dict(ckpt["state_dict"])
    return model
