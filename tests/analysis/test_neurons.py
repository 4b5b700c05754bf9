"""Neuron importance and top-k ablation curves on a hand-made hooked module with known answers,
and on the grokking MLP's `hook_hidden`."""
from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mechlab.analysis.neurons import single_neuron_importance, topk_ablation_curve, zero_neurons_hook
from mechlab.modular.mlp import MLPConfig, build_mlp
from mechlab.modular.task import all_pairs


class Neurons(HookedRootModule):
    """Four neurons with fixed values 1, 2, 3, 4 (through `hook_neurons`); the output is their sum."""

    def __init__(self):
        super().__init__()
        self.values = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        self.hook_neurons = HookPoint()
        self.setup()

    def forward(self, x=None):
        return self.hook_neurons(self.values[None]).sum()


def score(model) -> dict[str, float]:
    """'loss' = 10 - output (zeroing neuron i raises it by i + 1); 'acc' = output / 10."""
    out = model().item()
    return {"loss": 10.0 - out, "acc": out / 10.0}


def test_zero_neurons_hook():
    act = torch.arange(1.0, 7.0).reshape(2, 3)
    assert zero_neurons_hook([0, 2], 3)(act).tolist() == [[0.0, 2.0, 0.0], [0.0, 5.0, 0.0]]


def test_importance_is_the_metric_increase_per_neuron():
    model = Neurons()
    importance = single_neuron_importance(model, score, "loss", "hook_neurons", 4)
    assert importance.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert model().item() == 10.0  # nothing stays ablated


def test_topk_curve_against_random_neurons():
    model = Neurons()
    ranking = torch.tensor([3, 2, 1, 0])
    curve = topk_ablation_curve(model, score, "acc", "hook_neurons", ranking, [1, 2, 4], n_random=3, seed=0)
    assert list(curve.columns) == ["k", "top-k", "relative drop (top-k)", "random-k", "relative drop (random-k)"]
    assert curve["top-k"].tolist() == pytest.approx([0.6, 0.3, 0.0])
    assert curve["relative drop (top-k)"].tolist() == pytest.approx([0.4, 0.7, 1.0])
    # random draws: reproduce them with the same generator
    g = torch.Generator().manual_seed(0)
    expected = []
    for k in (1, 2, 4):
        draws = [torch.randperm(4, generator=g)[:k] for _ in range(3)]
        expected.append(sum(1.0 - (model.values[d].sum().item()) / 10.0 for d in draws) / 3)
    assert curve["random-k"].tolist() == pytest.approx(expected)
    assert curve.loc[2, "random-k"] == pytest.approx(0.0)  # all four neurons, whichever draw


def test_importance_on_the_grokking_mlp_hidden_layer():
    model = build_mlp(MLPConfig(p=5, d_embed=4, d_hidden=6), device="cpu")
    pairs = all_pairs(5)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.weight[0, 2] = 1.0  # only neuron 2 reaches the output (logit 0)

    def logit0(m):
        return {"minus_logit0": -m(pairs)[:, 0].sum().item()}

    importance = single_neuron_importance(model, logit0, "minus_logit0", "hook_hidden", 6)
    neuron2_total = model.hidden(pairs)[:, 2].sum().item()
    assert neuron2_total > 0 and importance[2].item() == pytest.approx(neuron2_total, rel=1e-5)
    assert (importance[[0, 1, 3, 4, 5]] == 0).all()
