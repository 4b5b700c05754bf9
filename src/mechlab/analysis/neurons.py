"""Neuron analysis by zero-ablation at one hook point of any TransformerLens `HookedRootModule`
(a `HookedTransformer`'s `blocks.L.mlp.hook_post`, or the grokking MLP's `hook_hidden`), scored by
any score function (`score(model) -> dict[str, float]`, as in `mechlab.analysis.ablation`).

* `single_neuron_importance`: neuron i's importance is the increase of a score metric (e.g. a
  loss) when neuron i alone is zero-ablated;
* `topk_ablation_curve`: the metric with the top-k neurons of a ranking ablated together, against
  k random neurons (the mean over `n_random` draws), for several k.

The neuron axis is the last axis of the hooked activation.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

Score = Callable[[torch.nn.Module], dict[str, float]]


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
