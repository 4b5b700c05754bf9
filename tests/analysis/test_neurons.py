"""Neuron importance and top-k ablation curves on a hand-made hooked module with known answers,
and on the grokking MLP's `hook_hidden`; the neuron taxonomy on synthetic activations."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mechlab.analysis.neurons import (
    FEATURE_SHARE,
    FREQUENCY_SHARE,
    classify_neuron,
    explained_variance,
    neuron_table,
    single_neuron_importance,
    strongest_features,
    top_activating,
    topk_ablation_curve,
    zero_neurons_hook,
)
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


@dataclass(frozen=True)
class F:
    name: str
    kind: str
    family: str
    n_classes: int = 0


def test_explained_variance_of_a_class_a_scalar_and_noise():
    g = torch.Generator().manual_seed(0)
    digit = torch.randint(0, 10, (2000,), generator=g)
    noise = torch.randn(2000, generator=g, dtype=torch.float64)
    acts = torch.stack([(digit == 7).double(), digit * 2.0 + 1, noise], dim=1)
    eta = explained_variance(acts, digit, "class", 10)
    assert eta[0] == pytest.approx(1.0) and eta[1] == pytest.approx(1.0) and eta[2] < 0.01  # adjusted: ~0 for noise
    r2 = explained_variance(acts, digit, "scalar")
    assert r2[1] == pytest.approx(1.0) and r2[0] < 0.2 and r2[2] < 0.01


def test_the_simplest_feature_within_the_tie_fraction_names_the_neuron():
    features = [F("answer", "class", "answer", 113), F("first digit", "class", "answer", 10)]
    explained = torch.tensor([[[0.99, 0.99], [0.95, 0.5]]], dtype=torch.float64)  # [1 slot, 2 features, 2 units]
    assert strongest_features(explained, features).tolist() == [1, 0]


def test_classify_neuron_by_the_stated_rule():
    kinds = {"answer": "answer digit"}
    assert classify_neuron(FREQUENCY_SHARE, 0.9, "answer", kinds) == "frequency"
    assert classify_neuron(FREQUENCY_SHARE - 0.01, FEATURE_SHARE, "answer", kinds) == "answer digit"
    assert classify_neuron(0.0, FEATURE_SHARE - 0.01, "answer", kinds) == "unexplained"


def test_neuron_table_names_kinds_and_top_prompts():
    g = torch.Generator().manual_seed(0)
    n = 500
    digit = torch.randint(0, 10, (n,), generator=g)
    acts = torch.randn(n, 2, 3, generator=g, dtype=torch.float64)  # [n, slots, 3 units in 3 layers of 1]
    acts[:, 1, 0] = (digit == 3).double()  # unit 0 detects digit 3 at slot 1
    features = [F("d", "class", "digits", 10)]
    table = neuron_table(acts, torch.ones(n, 2, dtype=torch.bool), digit[:, None], features, ["s0", "s1"],
                         frequency=torch.tensor([0, 5, 0]), frequency_share=torch.tensor([0.0, 0.8, 0.1]),
                         kind_by_family={"digits": "digit detector"}, n_per_layer=1,
                         prompts=[f"prompt {d}" for d in digit.tolist()], n_top=2)
    assert table["kind"].tolist() == ["digit detector", "frequency", "unexplained"]
    assert table["layer"].tolist() == [0, 1, 2] and table.loc[0, "slot"] == "s1"
    assert table.loc[0, "top prompts"] == "prompt 3 | prompt 3"
    assert digit[top_activating(acts[:, 1, :1], digit != 3, 1).item()] != 3  # only valid rows are ranked


def test_a_residue_explains_a_unit_on_its_circle_not_an_arbitrary_function_of_it():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 113, (3000,), generator=g)
    lookup = torch.randn(113, generator=g, dtype=torch.float64)
    acts = torch.stack([torch.cos(2 * math.pi * 3 * x / 113 + 0.4), lookup[x]], dim=1)
    circle = explained_variance(acts, x, "residue", 113)
    assert circle[0] == pytest.approx(1.0) and circle[1] < 0.2
    assert explained_variance(acts, x, "class", 113)[1] == pytest.approx(1.0)  # as a class it explains anything
