"""The one model factory: config dataclasses -> TransformerLens `HookedTransformer`, plus
checkpoint save/load that refuses a checkpoint written for another config or vocabulary.

Everything that touches TransformerLens' model classes lives here, so a later move to
TransformerLens 4 (`TransformerBridge.boot_native`) changes this file only.

A checkpoint records its model's config, whose `kind` (absent for a transformer) names the
builder that rebuilds it: "transformer" (`ModelConfig`, `build_model`) is built in; a task
family with a model of its own registers it with `register_model_kind` (the grokking MLP in
`mechlab.modular.mlp`). `load_checkpoint` dispatches on it, and reads files with
`torch.load(weights_only=True)`, so loading a checkpoint never runs code from it.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechlab.core.io import load_torch_dict, torch_save_atomic, write_json_atomic


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


def check_vocab(cfg: Any) -> None:
    """Refuse a config (any kind with `vocab` and `d_vocab`) whose vocabulary does not have d_vocab tokens."""
    if cfg.vocab and len(cfg.vocab) != cfg.d_vocab:
        raise ValueError(f"config has d_vocab={cfg.d_vocab} but a vocabulary of {len(cfg.vocab)} tokens")


def build_module(module_class: Callable[[Any], torch.nn.Module], cfg: Any,
                 device: torch.device | str | None = None) -> torch.nn.Module:
    """`module_class(cfg)` freshly initialised from torch's global generator seeded with `cfg.seed`
    (deterministic given the seed), on `device`, carrying `cfg` as `mechlab_config` for
    `save_checkpoint`: the builder of every model kind that is a plain torch module."""
    torch.manual_seed(cfg.seed)
    model = module_class(cfg).to(device or default_device())
    model.mechlab_config = cfg
    return model


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> HookedTransformer:
    """A freshly initialised `HookedTransformer` for `cfg` (deterministic given `cfg.seed`)."""
    check_vocab(cfg)
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


def head_labels(n_layers: int, n_heads: int) -> list[str]:
    """["L0H0", "L0H1", ...]: the one way heads are named in tables and figures."""
    return [f"L{layer}H{head}" for layer in range(n_layers) for head in range(n_heads)]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(model: torch.nn.Module, cfg: Any, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Write weights to `path` (a .pt file) and the config as `config.json` beside it, atomically.

    `cfg` is any dataclass with `to_json()`: a ModelConfig, or another study's model config.
    """
    path = Path(path)
    torch_save_atomic(path, {"config": cfg.to_json(), "state_dict": model.state_dict(), **(extra or {})})
    write_json_atomic(path.parent / "config.json", cfg.to_json())


def _short(value: Any, limit: int = 40) -> str:
    """`repr(value)`, or for a long one (a vocabulary) its start and length."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} items)" if isinstance(value, (list, tuple)) else ""
    return text[:limit] + "..." + size


def check_config_matches(saved: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """Raise CheckpointMismatchError naming the model kinds when they differ, else listing in one line
    every field where `saved` differs from `expected`."""
    kinds = saved.get("kind", "transformer"), expected.get("kind", "transformer")
    if kinds[0] != kinds[1]:
        raise CheckpointMismatchError(f"{path} holds a {kinds[0]!r} model, expected a {kinds[1]!r} model")
    diffs = [f"{k}: checkpoint has {_short(saved.get(k))}, expected {_short(expected.get(k))}"
             for k in sorted(set(saved) | set(expected)) if saved.get(k) != expected.get(k)]
    if diffs:
        raise CheckpointMismatchError(f"{path} was saved for another config ({'; '.join(diffs)})")


@dataclass(frozen=True)
class ModelKind:
    """How to rebuild one kind of model: its config class (with `from_json`) and its builder."""

    config_class: type
    build: Callable[..., torch.nn.Module]


MODEL_KINDS: dict[str, ModelKind] = {"transformer": ModelKind(ModelConfig, build_model)}


def register_model_kind(kind: str, config_class: type, build: Callable[..., torch.nn.Module]) -> None:
    """Let `load_checkpoint` rebuild models whose saved config has `"kind": kind`."""
    if kind in MODEL_KINDS and MODEL_KINDS[kind] != ModelKind(config_class, build):
        raise ValueError(f"model kind {kind!r} is already registered")
    MODEL_KINDS[kind] = ModelKind(config_class, build)


def config_from_json(obj: dict[str, Any]) -> Any:
    """The config dataclass a checkpoint's `config` dict describes (dispatching on its `kind`)."""
    kind = obj.get("kind", "transformer")
    if kind not in MODEL_KINDS:
        raise CheckpointMismatchError(f"unknown model kind {kind!r} (known: {', '.join(sorted(MODEL_KINDS))}); "
                                      "import the package that registers it first")
    return MODEL_KINDS[kind].config_class.from_json(obj)


def build(cfg: Any, device: torch.device | str | None = None) -> torch.nn.Module:
    """A freshly initialised model of any registered kind for `cfg`."""
    kind = cfg.to_json().get("kind", "transformer")
    return MODEL_KINDS[kind].build(cfg, device)


def load_checkpoint(path: Path, expected: Any | None = None, device: torch.device | str | None = None) -> torch.nn.Module:
    """Rebuild the model saved at `path` (a `save_checkpoint` file) of whatever registered kind.
    If `expected` (a config) is given, the checkpoint's config, vocabulary included, must match it
    exactly, or CheckpointMismatchError is raised."""
    path = Path(path)
    ckpt = load_torch_dict(path, "model checkpoint")
    if "config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointMismatchError(f"{path} is not a model checkpoint (it has no config and state_dict)")
    if expected is not None:
        saved = json.loads(json.dumps(ckpt["config"]))
        check_config_matches(saved, json.loads(json.dumps(expected.to_json())), path)
    model = build(config_from_json(ckpt["config"]), device)
    model.load_state_dict(ckpt["state_dict"])
    return model
