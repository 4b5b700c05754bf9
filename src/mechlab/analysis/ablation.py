"""Zero, mean and resample ablation of heads, MLPs and whole layers of any `HookedTransformer`,
scored by any score function.

A score is `score(model) -> dict[str, float]` (or an object with the training loop's `Task.evaluate`),
e.g. `functools.partial(arithmetic.task.evaluate_split, split=test, prefix="ablated")` or
`functools.partial(modular.task.evaluate_pairs, pairs=test_pairs, fmt="three_layer", prefix="test")`;
the sweeps measure the drop of one of its metrics (`metric`), and of `metric/<group>` entries
(e.g. "ablated_exact/no_wrap") for the groups asked for.

Components (`Component`):

* head (layer, h): the head's output `z` (blocks.L.attn.hook_z[:, :, h]), so the head writes
  nothing (zero), its average (mean) or what it writes on another prompt (resample);
* mlp L:           blocks.L.hook_mlp_out;
* layer L:         both blocks.L.hook_attn_out and blocks.L.hook_mlp_out (the whole block's
                   write to the residual stream; the residual connection itself is kept).

A component may be restricted to some positions (`Component.positions`, counted from the left, with a
label `where`): it is then ablated at those positions only, e.g. a head at the answer-predicting
positions (`at_positions`), which splits a head into parts that a circuit can keep or drop apart.

Methods:

* zero:     the activation is set to 0;
* mean:     set to its mean over a reference set of prompts, per position (positions line up
            across prompts, counted from the left: every arithmetic prompt is left-padded to the
            same width, every modular input has the same length);
* resample: set to its value on a random prompt of the reference set (a fresh draw for every
            row, from a generator seeded identically on every forward call, so greedy decoding
            sees the same draws at every step).

Reference activations come from the unablated model on reference inputs (`reference_activations`;
for the arithmetic task, prompts teacher-forced with their own answers). Use prompts other than
the ones scored (e.g. val as reference, test scored).

Impact classes (`impact_class`): accuracy drop >= CRITICAL_DROP (0.10) is "critical", >=
MODERATE_DROP (0.02) "moderate", otherwise "redundant". Pairs of heads back each other up when
their pair drop exceeds the sum of their single drops by more than BACKUP_EXCESS (`backup_pairs`);
a head is specific to some groups (e.g. wrapping buckets) when its drop there reaches
SPECIFIC_DROP and its drop on a control group stays below it (`group_specific`).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, Union

import pandas as pd
import torch

METHODS = ("zero", "mean", "resample")
CRITICAL_DROP = 0.10
MODERATE_DROP = 0.02
BACKUP_EXCESS = MODERATE_DROP  # pair drop - single drops above this: the two heads back each other up
SPECIFIC_DROP = MODERATE_DROP  # drop that counts as "hurts this group" in group_specific


class Evaluates(Protocol):
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]: ...


Score = Union[Callable[[torch.nn.Module], dict[str, float]], Evaluates]


def _score_fn(score: Score) -> Callable[[torch.nn.Module], dict[str, float]]:
    """A score function from a function or from a `Task` (its `evaluate`)."""
    return score.evaluate if hasattr(score, "evaluate") else score


@dataclass(frozen=True)
class Component:
    kind: str  # "head", "mlp" or "layer"
    layer: int
    head: int | None = None
    positions: tuple[int, ...] | None = None  # ablated at these positions only (None: every position)
    where: str = ""  # a label for `positions`, e.g. "answer"; part of the name

    @property
    def name(self) -> str:
        base = {"head": f"L{self.layer}H{self.head}", "mlp": f"MLP{self.layer}", "layer": f"layer{self.layer}"}[self.kind]
        return f"{base}@{self.where}" if self.positions is not None else base

    def hook_names(self) -> list[str]:
        if self.kind == "head":
            return [f"blocks.{self.layer}.attn.hook_z"]
        if self.kind == "mlp":
            return [f"blocks.{self.layer}.hook_mlp_out"]
        if self.kind == "layer":
            return [f"blocks.{self.layer}.hook_attn_out", f"blocks.{self.layer}.hook_mlp_out"]
        raise ValueError(f"unknown component kind {self.kind!r}")


def at_positions(component: Component, positions: Sequence[int], where: str) -> Component:
    """The part of `component` at `positions` (labelled `where`): ablating it leaves the others alone."""
    return Component(component.kind, component.layer, component.head, tuple(positions), where)


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
def reference_activations(model, tokens: torch.Tensor, batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """Activations at every ablatable hook on model inputs `tokens` [n, pos]: [n, pos, ...] per hook."""
    names = {n for c in all_components(model.cfg) for n in c.hook_names()}
    parts: dict[str, list[torch.Tensor]] = {}
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk.to(model.cfg.device), names_filter=lambda n: n in names)
        for n in cache.keys():  # the hooks that ran: an attention-only model has no hook_mlp_out
            parts.setdefault(n, []).append(cache[n].cpu())
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
            head, at = comp.head, (slice(None) if comp.positions is None else list(comp.positions))

            def hook(act, hook, name=name, head=head, at=at):
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
                act = act.clone()
                if head is None:
                    act[:, at] = value[:, at]
                else:
                    act[:, at, head] = value[:, at, head]
                return act

            hooks.append((name, hook))
    return hooks


def evaluate_ablated(model, score: Score, components: Sequence[Component], method: str,
                     reference: dict[str, torch.Tensor] | None = None, seed: int = 0) -> dict[str, float]:
    """`score(model)` with the components ablated."""
    with torch.no_grad(), model.hooks(fwd_hooks=ablation_hooks(components, method, reference, seed)):
        return _score_fn(score)(model)


def _row(metrics: dict[str, float], baseline: dict[str, float], metric: str, groups: Sequence[str] | None) -> dict:
    """score and drop of `metric`, and of `metric/<group>` for each group (None: every such key)."""
    row = {"score": metrics[metric], "drop": baseline[metric] - metrics[metric]}
    if groups is None:
        groups = [k.split("/", 1)[1] for k in metrics if k.startswith(f"{metric}/")]
    for group in groups:
        key = f"{metric}/{group}"
        row[f"score/{group}"] = metrics[key]
        row[f"drop/{group}"] = baseline[key] - metrics[key]
    return row


def ablation_sweep(model, score: Score, components: Sequence[Component], methods: Sequence[str] = METHODS,
                   reference: dict[str, torch.Tensor] | None = None, seed: int = 0, *, metric: str,
                   groups: Sequence[str] | None = ()) -> pd.DataFrame:
    """One row per (component, method): `metric` ("score"), its drop from the unablated model, both
    per group ("score/<group>", "drop/<group>" from the score's "<metric>/<group>" entries;
    `groups=None`: every such entry), and the impact class of the drop. The unablated model is
    the row "none"."""
    with torch.no_grad():
        baseline = _score_fn(score)(model)
    rows = [{"component": "none", "kind": "none", "layer": -1, "head": -1, "method": "none",
             **_row(baseline, baseline, metric, groups)}]
    for method in methods:
        for comp in components:
            metrics = evaluate_ablated(model, score, [comp], method, reference, seed)
            rows.append({"component": comp.name, "kind": comp.kind, "layer": comp.layer,
                         "head": -1 if comp.head is None else comp.head, "method": method,
                         **_row(metrics, baseline, metric, groups)})
    df = pd.DataFrame(rows)
    df["impact"] = [impact_class(d) if c != "none" else "" for d, c in zip(df["drop"], df["component"])]
    return df


def group_ablation(model, score: Score, groups: dict[str, Sequence[Component]], method: str = "mean",
                   reference: dict[str, torch.Tensor] | None = None, seed: int = 0, *, metric: str) -> pd.DataFrame:
    """Ablate each named set of components together. Columns: ablated (the set's name), n (its
    size), score (`metric` under ablation), drop and relative drop (1 - score / unablated score;
    NaN when the unablated score is 0)."""
    with torch.no_grad():
        base = _score_fn(score)(model)[metric]
    rows = []
    for name, components in groups.items():
        value = evaluate_ablated(model, score, components, method, reference, seed)[metric]
        rows.append({"ablated": name, "n": len(components), "score": value, "drop": base - value,
                     "relative drop": 1 - value / base if base else float("nan")})
    return pd.DataFrame(rows)


def pairwise_ablation(model, score: Score, components: Sequence[Component], method: str = "mean",
                      reference: dict[str, torch.Tensor] | None = None, seed: int = 0,
                      single: pd.DataFrame | None = None, *, metric: str) -> pd.DataFrame:
    """Ablate every pair of `components` together. Columns: a, b, drop_a, drop_b, drop_pair and
    `excess` = drop_pair - drop_a - drop_b (> 0: the pair matters more together than alone,
    i.e. one backs the other up). Single drops come from `single` (an `ablation_sweep` frame
    of the same score) when given, otherwise they are measured."""
    with torch.no_grad():
        base = _score_fn(score)(model)[metric]
    drops = {}
    for comp in components:
        if single is not None:
            sel = single[(single["component"] == comp.name) & (single["method"] == method)]
            if len(sel):
                drops[comp] = float(sel["drop"].iloc[0])
                continue
        drops[comp] = base - evaluate_ablated(model, score, [comp], method, reference, seed)[metric]
    rows = []
    for a, b in itertools.combinations(components, 2):
        pair = base - evaluate_ablated(model, score, [a, b], method, reference, seed)[metric]
        rows.append({"a": a.name, "b": b.name, "drop_a": drops[a], "drop_b": drops[b], "drop_pair": pair,
                     "excess": pair - drops[a] - drops[b]})
    return pd.DataFrame(rows, columns=["a", "b", "drop_a", "drop_b", "drop_pair", "excess"])


def redundant_heads(sweep: pd.DataFrame, method: str, max_heads: int) -> list[str]:
    """Names of the heads whose `method` ablation is "redundant", largest drop first, at most
    `max_heads`: the candidates for backups (`pairwise_ablation`)."""
    single = sweep[(sweep["kind"] == "head") & (sweep["method"] == method)]
    redundant = single[single["impact"] == "redundant"].sort_values("drop", ascending=False)
    return list(redundant["component"].head(max_heads))


def excess_matrix(pairs: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """[names x names] symmetric table of the pairs' `excess` (0 on the diagonal)."""
    mat = pd.DataFrame(0.0, index=list(names), columns=list(names))
    for r in pairs.itertuples():
        mat.loc[r.a, r.b] = mat.loc[r.b, r.a] = r.excess
    return mat


def backup_pairs(pairs: pd.DataFrame, threshold: float = BACKUP_EXCESS) -> pd.DataFrame:
    """The pairs whose pair drop exceeds the sum of their single drops by more than `threshold`,
    largest excess first."""
    return pairs[pairs["excess"] > threshold].sort_values("excess", ascending=False)


def group_drops(sweep: pd.DataFrame, groups: Sequence[str], kind: str = "head", method: str = "mean") -> pd.DataFrame:
    """[component x group] drop of each `kind` component under `method` ablation, per group."""
    rows = sweep[(sweep["kind"] == kind) & (sweep["method"] == method)].set_index("component")
    return rows[[f"drop/{g}" for g in groups]].rename(columns=lambda c: c.split("/", 1)[1])


def group_specific(drops: pd.DataFrame, groups: Sequence[str], control: str,
                   threshold: float = SPECIFIC_DROP) -> list[str]:
    """Components (rows of a `group_drops` table) whose drop reaches `threshold` on at least one of
    `groups` but stays below it on `control`: e.g. heads that matter only for wrapping sums."""
    hurts = drops[list(groups)].max(axis=1) >= threshold
    spares_control = drops[control] < threshold
    return list(drops.index[hurts & spares_control])
