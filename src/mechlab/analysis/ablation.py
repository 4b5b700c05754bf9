"""Zero, mean and resample ablation of heads, MLPs and whole layers, scored with the repo's one
evaluation path (`arithmetic.evaluate_split`: exact match overall and per difficulty bucket).

Components (`Component`):

* head (layer, h): the head's output `z` (blocks.L.attn.hook_z[:, :, h]), so the head writes
  nothing (zero), its average (mean) or what it writes on another prompt (resample);
* mlp L:           blocks.L.hook_mlp_out;
* layer L:         both blocks.L.hook_attn_out and blocks.L.hook_mlp_out (the whole block's
                   write to the residual stream; the residual connection itself is kept).

Methods:

* zero:     the activation is set to 0;
* mean:     set to its mean over a reference set of prompts, per position (positions line up
            across prompts because every prompt is left-padded to the same width);
* resample: set to its value on a random prompt of the reference set (a fresh draw for every
            row, from a generator seeded identically on every forward call, so greedy decoding
            sees the same draws at every step).

Reference activations come from the unablated model on the reference prompts, teacher-forced
with their own answers (`reference_activations`). Use a split other than the one evaluated
(e.g. val as reference, test evaluated).

Impact classes (`impact_class`): accuracy drop >= CRITICAL_DROP (0.10) is "critical", >=
MODERATE_DROP (0.02) "moderate", otherwise "redundant".
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from mechlab.arithmetic.task import ArithmeticSplit, evaluate_split
from mechlab.arithmetic.tokenizer import MODEL_INPUT_LEN

METHODS = ("zero", "mean", "resample")
CRITICAL_DROP = 0.10
MODERATE_DROP = 0.02


@dataclass(frozen=True)
class Component:
    kind: str  # "head", "mlp" or "layer"
    layer: int
    head: int | None = None

    @property
    def name(self) -> str:
        return {"head": f"L{self.layer}H{self.head}", "mlp": f"MLP{self.layer}", "layer": f"layer{self.layer}"}[self.kind]

    def hook_names(self) -> list[str]:
        if self.kind == "head":
            return [f"blocks.{self.layer}.attn.hook_z"]
        if self.kind == "mlp":
            return [f"blocks.{self.layer}.hook_mlp_out"]
        if self.kind == "layer":
            return [f"blocks.{self.layer}.hook_attn_out", f"blocks.{self.layer}.hook_mlp_out"]
        raise ValueError(f"unknown component kind {self.kind!r}")


def heads(cfg) -> list[Component]:
    return [Component("head", l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]


def mlps(cfg) -> list[Component]:
    """MLP components of a TransformerLens config or a mechlab ModelConfig (none if attention-only)."""
    attn_only = getattr(cfg, "attn_only", False) or getattr(cfg, "d_mlp", 1) is None
    return [] if attn_only else [Component("mlp", l) for l in range(cfg.n_layers)]


def layers(cfg) -> list[Component]:
    return [Component("layer", l) for l in range(cfg.n_layers)]


def all_components(cfg) -> list[Component]:
    return heads(cfg) + mlps(cfg) + layers(cfg)


def impact_class(drop: float, critical: float = CRITICAL_DROP, moderate: float = MODERATE_DROP) -> str:
    return "critical" if drop >= critical else "moderate" if drop >= moderate else "redundant"


@torch.no_grad()
def reference_activations(model, split: ArithmeticSplit, batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """Activations at every ablatable hook on `split` (teacher-forced), [n, pos, ...] per hook."""
    names = {n for c in all_components(model.cfg) for n in c.hook_names()}
    tokens = split.tokens[:, :MODEL_INPUT_LEN]
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk.to(model.cfg.device), names_filter=lambda n: n in names)
        for n in names:
            parts[n].append(cache[n].cpu())
    return {n: torch.cat(v) for n, v in parts.items()}


def ablation_hooks(components: Iterable[Component], method: str, reference: dict[str, torch.Tensor] | None = None,
                   seed: int = 0) -> list[tuple[str, callable]]:
    """TransformerLens forward hooks that ablate every component in `components` with `method`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method != "zero" and reference is None:
        raise ValueError(f"{method} ablation needs reference activations (see reference_activations)")
    means = {}
    hooks = []
    for comp in components:
        for name in comp.hook_names():
            head = comp.head

            def hook(act, hook, name=name, head=head):
                pos = act.shape[1]
                if method == "zero":
                    value = torch.zeros_like(act)
                elif method == "mean":
                    if name not in means:
                        means[name] = reference[name].mean(0)
                    value = means[name][:pos].to(act.device, act.dtype).expand_as(act)
                else:
                    ref = reference[name]
                    gen = torch.Generator().manual_seed(seed)
                    idx = torch.randint(0, ref.shape[0], (act.shape[0],), generator=gen)
                    value = ref[idx, :pos].to(act.device, act.dtype)
                if head is None:
                    return value.clone()
                act = act.clone()
                act[:, :, head] = value[:, :, head]
                return act

            hooks.append((name, hook))
    return hooks


def evaluate_ablated(model, split: ArithmeticSplit, components: Sequence[Component], method: str,
                     reference: dict[str, torch.Tensor] | None = None, seed: int = 0, greedy: bool = False) -> dict[str, float]:
    """`evaluate_split` (prefix "ablated") with the components ablated."""
    with model.hooks(fwd_hooks=ablation_hooks(components, method, reference, seed)):
        return evaluate_split(model, split, "ablated", greedy=greedy)


def _row(metrics: dict[str, float], baseline: dict[str, float]) -> dict:
    row = {"exact": metrics["ablated_exact"], "drop": baseline["ablated_exact"] - metrics["ablated_exact"]}
    for k, v in metrics.items():
        if k.startswith("ablated_exact/") and not k.startswith("ablated_exact/digits_"):
            bucket = k.split("/", 1)[1]
            row[f"exact/{bucket}"] = v
            row[f"drop/{bucket}"] = baseline[k] - v
    return row


def ablation_sweep(model, split: ArithmeticSplit, components: Sequence[Component], methods: Sequence[str] = METHODS,
                   reference: dict[str, torch.Tensor] | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per (component, method): exact match, its drop from the unablated model, and both
    per bucket, plus the impact class of the drop. The unablated model is the row "none"."""
    with torch.no_grad():
        baseline = evaluate_split(model, split, "ablated")
    rows = [{"component": "none", "kind": "none", "layer": -1, "head": -1, "method": "none", **_row(baseline, baseline)}]
    for method in methods:
        for comp in components:
            metrics = evaluate_ablated(model, split, [comp], method, reference, seed)
            rows.append({"component": comp.name, "kind": comp.kind, "layer": comp.layer,
                         "head": -1 if comp.head is None else comp.head, "method": method, **_row(metrics, baseline)})
    df = pd.DataFrame(rows)
    df["impact"] = [impact_class(d) if c != "none" else "" for d, c in zip(df["drop"], df["component"])]
    return df


def pairwise_ablation(model, split: ArithmeticSplit, components: Sequence[Component], method: str = "mean",
                      reference: dict[str, torch.Tensor] | None = None, seed: int = 0,
                      single: pd.DataFrame | None = None) -> pd.DataFrame:
    """Ablate every pair of `components` together. Columns: a, b, drop_a, drop_b, drop_pair and
    `excess` = drop_pair - drop_a - drop_b (> 0: the pair matters more together than alone,
    i.e. one backs the other up). Single drops come from `single` (an `ablation_sweep` frame)
    when given, otherwise they are measured."""
    with torch.no_grad():
        base = evaluate_split(model, split, "ablated")["ablated_exact"]
    drops = {}
    for comp in components:
        if single is not None:
            sel = single[(single["component"] == comp.name) & (single["method"] == method)]
            if len(sel):
                drops[comp] = float(sel["drop"].iloc[0])
                continue
        drops[comp] = base - evaluate_ablated(model, split, [comp], method, reference, seed)["ablated_exact"]
    rows = []
    for a, b in itertools.combinations(components, 2):
        pair = base - evaluate_ablated(model, split, [a, b], method, reference, seed)["ablated_exact"]
        rows.append({"a": a.name, "b": b.name, "drop_a": drops[a], "drop_b": drops[b], "drop_pair": pair,
                     "excess": pair - drops[a] - drops[b]})
    return pd.DataFrame(rows)
