"""Neuron analysis by zero-ablation at one hook point of any TransformerLens `HookedRootModule`
(a `HookedTransformer`'s `blocks.L.mlp.hook_post`, or the grokking MLP's `hook_hidden`), scored by
any score function (`score(model) -> dict[str, float]`, as in `mechlab.analysis.ablation`).

* `single_neuron_importance`: neuron i's importance is the increase of a score metric (e.g. a
  loss) when neuron i alone is zero-ablated;
* `topk_ablation_curve`: the metric with the top-k neurons of a ranking ablated together, against
  k random neurons (the mean over `n_random` draws), for several k.

The neuron axis is the last axis of the hooked activation.

Neuron taxonomy (`neuron_table`), from activations gathered at a few slots of many prompts and
each prompt's feature values (features with `name`, `kind`, `family`, `n_classes`, as in
`mechlab.arithmetic.features.FEATURES`):

* a neuron's *strongest feature* is the simplest (slot, feature) whose values explain at least
  TIE_FRACTION of the largest share of its activation's variance that any (slot, feature)
  explains across prompts (`explained_variance`: squared correlation for scalars; adjusted eta^2
  -- the between-class share corrected for the number of classes -- for classes; the best circle
  fit for residues). Simplest = fewest `degrees_of_freedom`: a neuron that detects a digit of
  a two-digit number is named after the digit, not after the number;
* its *frequency* comes from its activations over the (a mod p, b mod p) grid
  (`mechlab.analysis.fourier.neuron_clusters`).

The rule (`NEURON_RULE`, first match wins): a neuron with at least FREQUENCY_SHARE of its grid
variance at one frequency is a "frequency" neuron; else one whose strongest feature explains at
least FEATURE_SHARE of its variance takes the kind of that feature's family (`kind_by_family`);
else it is "unexplained".
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from mechlab.analysis.fourier import n_frequencies

Score = Callable[[torch.nn.Module], dict[str, float]]

FREQUENCY_SHARE = 0.5  # share of grid variance at one frequency that makes a "frequency" neuron
FEATURE_SHARE = 0.3  # explained variance of the strongest feature that names the neuron's kind
TIE_FRACTION = 0.9  # a simpler feature within this fraction of the best explained variance is preferred
NEURON_RULE = f"""\
First match wins:
 1. frequency     >= {FREQUENCY_SHARE:.0%} of its variance over the (a mod p, b mod p) grid at one frequency k
 2. <family kind> its strongest feature (any slot) explains >= {FEATURE_SHARE:.0%} of its variance
 3. unexplained   otherwise"""


def zero_neurons_hook(neurons: torch.Tensor | Sequence[int], n_neurons: int) -> Callable:
    """A forward hook that zeroes `neurons` (indices into the last axis, of size `n_neurons`)."""
    mask = torch.ones(n_neurons)
    mask[torch.as_tensor(neurons, dtype=torch.long)] = 0.0

    def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
        return act * mask.to(act.device, act.dtype)

    return hook


@torch.no_grad()
def score_with_neurons_ablated(model, score: Score, hook_name: str, neurons: torch.Tensor | Sequence[int],
                               n_neurons: int) -> dict[str, float]:
    """`score(model)` with `neurons` at `hook_name` zero-ablated."""
    with model.hooks(fwd_hooks=[(hook_name, zero_neurons_hook(neurons, n_neurons))]):
        return score(model)


@torch.no_grad()
def single_neuron_importance(model, score: Score, metric: str, hook_name: str, n_neurons: int) -> torch.Tensor:
    """[n_neurons] increase of `score(model)[metric]` when each neuron alone is zero-ablated."""
    base = score(model)[metric]
    return torch.tensor([score_with_neurons_ablated(model, score, hook_name, [i], n_neurons)[metric] - base
                         for i in range(n_neurons)])


@torch.no_grad()
def topk_ablation_curve(model, score: Score, metric: str, hook_name: str, ranking: torch.Tensor,
                        k_values: Sequence[int], n_random: int = 5, seed: int = 0) -> pd.DataFrame:
    """`metric` with the first k neurons of `ranking` zero-ablated together, and with k random
    neurons (mean over `n_random` draws from one generator seeded with `seed`, drawn in order of
    k), for each k. Relative drops are 1 - ablated / unablated (NaN when the unablated value is 0).
    Columns: k, top-k, relative drop (top-k), random-k, relative drop (random-k)."""
    n = len(ranking)
    base = score(model)[metric]
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for k in k_values:
        top = score_with_neurons_ablated(model, score, hook_name, ranking[:k], n)[metric]
        rand = np.mean([score_with_neurons_ablated(model, score, hook_name, torch.randperm(n, generator=generator)[:k],
                                                   n)[metric] for _ in range(n_random)])
        rows.append({"k": k, "top-k": top, "relative drop (top-k)": _relative_drop(top, base),
                     "random-k": rand, "relative drop (random-k)": _relative_drop(rand, base)})
    return pd.DataFrame(rows)


def _relative_drop(value: float, base: float) -> float:
    return 1 - value / base if base > 0 else float("nan")


def explained_variance(acts: torch.Tensor, values: torch.Tensor, kind: str, n_classes: int = 0) -> torch.Tensor:
    """[N] share of each unit's variance across rows explained by one feature: acts [n, N],
    values [n]. Scalars: the squared correlation. Classes: adjusted eta^2 = (SS_between -
    (c - 1) MS_within) / SS_total with c the classes present (never below 0), so that many small
    classes do not explain noise. Residues (mod n_classes): the best R^2, over frequencies k, of a
    regression on cos(2 pi k x / n) and sin(2 pi k x / n) -- the unit lies on a circle; a residue's
    113 classes would also explain any function of the digits it is made of. A unit that does not
    vary scores 0."""
    x = acts.double() - acts.double().mean(0)
    sst = x.pow(2).sum(0)
    if kind == "scalar":
        v = values.double() - values.double().mean()
        return ((v @ x) / (v.norm() * sst.sqrt()).clamp_min(1e-30)).pow(2)
    if kind == "residue":
        best = torch.zeros(x.shape[1], dtype=torch.float64)
        for k in range(1, n_frequencies(n_classes) + 1):
            angle = 2 * math.pi * k * values.double() / n_classes
            waves = torch.stack([angle.cos(), angle.sin()], dim=1)
            q, _ = torch.linalg.qr(waves - waves.mean(0))
            best = torch.maximum(best, (q.T @ x).pow(2).sum(0) / sst.clamp_min(1e-30))
        return best * (sst > 0)
    onehot = torch.nn.functional.one_hot(values.long(), max(n_classes, int(values.max()) + 1)).double()
    counts = onehot.sum(0)
    present = counts > 0
    means = (onehot.T @ x)[present] / counts[present, None]  # [c, N] (x is centred)
    ssb = (counts[present, None] * means.pow(2)).sum(0)
    c, n = int(present.sum()), len(x)
    msw = (sst - ssb) / max(n - c, 1)
    return ((ssb - (c - 1) * msw) / sst.clamp_min(1e-30)).clamp_min(0.0) * (sst > 0)


def degrees_of_freedom(feature) -> int:
    """How many numbers a unit needs to read `feature` (the simplicity order of `strongest_features`):
    1 for a scalar, 2 for a residue (a point on a circle), the number of classes for a class."""
    return {"scalar": 1, "residue": 2}.get(feature.kind, feature.n_classes)


def feature_explained(acts: torch.Tensor, valid: torch.Tensor, values: torch.Tensor, features: Sequence) -> torch.Tensor:
    """[n_slots, n_features, N] `explained_variance` of each unit at each slot by each feature:
    acts [n, n_slots, N], valid [n, n_slots] (rows where the slot exists), values [n, n_features]."""
    out = torch.zeros(acts.shape[1], len(features), acts.shape[2], dtype=torch.float64)
    for s in range(acts.shape[1]):
        rows = valid[:, s]
        for j, f in enumerate(features):
            v = values[rows, j]
            if v.unique().numel() > 1:
                out[s, j] = explained_variance(acts[rows, s], v, f.kind, f.n_classes)
    return out


def strongest_features(explained: torch.Tensor, features: Sequence, tie: float = TIE_FRACTION) -> torch.Tensor:
    """[N] flat index s * n_features + f of each unit's strongest (slot, feature) in explained
    [n_slots, n_features, N]: among those within `tie` of the unit's largest share, the feature
    with the fewest `degrees_of_freedom`, then the largest share."""
    flat = explained.reshape(-1, explained.shape[-1])  # [S*F, N]
    classes = torch.tensor([degrees_of_freedom(f) for f in features], dtype=torch.float64).repeat(explained.shape[0])
    close = flat >= tie * flat.max(dim=0).values
    # rank: fewer classes first, then larger share (shares are in [0, 1], classes integers >= 1)
    rank = torch.where(close, -classes[:, None] + flat, torch.full_like(flat, -float("inf")))
    return rank.argmax(dim=0)


def top_activating(acts: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """[N, k] row indices of the k rows with the highest activation of each unit: acts [n, N],
    valid [n] (rows considered)."""
    masked = acts.masked_fill(~valid[:, None], float("-inf"))
    return masked.topk(k, dim=0).indices.T


def classify_neuron(freq_share: float, explained: float, family: str, kind_by_family: dict[str, str]) -> str:
    """The kind of one neuron by `NEURON_RULE`."""
    if freq_share >= FREQUENCY_SHARE:
        return "frequency"
    if explained >= FEATURE_SHARE:
        return kind_by_family[family]
    return "unexplained"


def neuron_table(acts: torch.Tensor, valid: torch.Tensor, values: torch.Tensor, features: Sequence,
                 slots: Sequence[str], frequency: torch.Tensor, frequency_share: torch.Tensor,
                 kind_by_family: dict[str, str], n_per_layer: int, prompts: Sequence[str] | None = None,
                 n_top: int = 3) -> pd.DataFrame:
    """One row per unit of acts [n, n_slots, n_layers * n_per_layer] (layers concatenated):
    layer, neuron, its strongest (slot, feature) and the share of variance it explains, its best
    grid frequency (`frequency`, 0 = none) and that frequency's share (`frequency_share`) [N],
    its kind (`classify_neuron`), and (with `prompts`) the prompts of its `n_top` top activations
    at its strongest slot."""
    explained = feature_explained(acts, valid, values, features)  # [S, F, N]
    where = strongest_features(explained, features)
    flat = explained.reshape(-1, explained.shape[-1])
    best = flat.gather(0, where[None])[0]
    rows = []
    for i in range(acts.shape[-1]):
        s, j = divmod(int(where[i]), len(features))
        f = features[j]
        row = {"layer": i // n_per_layer, "neuron": i % n_per_layer, "slot": slots[s], "feature": f.name,
               "family": f.family, "explained": float(best[i]), "frequency": int(frequency[i]),
               "frequency share": float(frequency_share[i])}
        row["kind"] = classify_neuron(row["frequency share"], row["explained"], f.family, kind_by_family)
        if prompts is not None:
            top = top_activating(acts[:, s, i:i + 1], valid[:, s], n_top)[0]
            row["top prompts"] = " | ".join(prompts[r] for r in top.tolist())
        rows.append(row)
    return pd.DataFrame(rows)
