"""Head classification for the 3-layer a + b = model: the rule on hand-made patterns, the grouping
into ablation components, and the attention read-out on a tiny untrained model (seconds)."""
from __future__ import annotations

import torch

from mechlab.analysis.ablation import Component
from mechlab.core.model import ModelConfig, build_model
from mechlab.modular.heads import (
    attention_entropy,
    classify_heads,
    classify_pattern,
    eq_attention,
    heads_by_class,
    label_agreement,
)
from mechlab.modular.task import vocab

P = 7


def test_rule_on_hand_made_patterns():
    assert classify_pattern(torch.tensor([0.7, 0.1, 0.1, 0.1])) == "attends-a"
    assert classify_pattern(torch.tensor([0.1, 0.0, 0.8, 0.1])) == "attends-b"
    assert classify_pattern(torch.tensor([0.05, 0.05, 0.1, 0.8])) == "self"
    assert classify_pattern(torch.tensor([0.4, 0.1, 0.4, 0.1])) == "spread"
    assert classify_pattern(torch.tensor([0.1, 0.7, 0.1, 0.1])) == "attends-+"
    assert classify_pattern(torch.tensor([0.5, 0.0, 0.2, 0.3]), threshold=0.5) == "attends-a"


def test_classify_heads_covers_every_head():
    mass = torch.zeros(3, 4, 4)
    mass[..., 3] = 1.0  # everything on '='
    mass[1, 2] = torch.tensor([0.9, 0.0, 0.1, 0.0])
    classes = classify_heads(mass)
    assert len(classes) == 12 and classes[(1, 2)] == "attends-a"
    assert sum(v == "self" for v in classes.values()) == 11


def tiny_model():
    cfg = ModelConfig(n_layers=3, n_heads=4, d_model=16, d_head=4, d_mlp=32, d_vocab=P + 2, n_ctx=4, act_fn="relu",
                      vocab=vocab("three_layer", P))
    return build_model(cfg, device="cpu")


def test_eq_attention_is_a_distribution_over_the_four_positions():
    pattern = eq_attention(tiny_model(), torch.tensor([[1, 2], [5, 6]]), P)
    assert pattern.shape == (2, 3, 4, 4)
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 3, 4), atol=1e-5)


def test_heads_by_class_groups_components_alphabetically():
    classes = {(0, 0): "spread", (0, 1): "attends-a", (1, 0): "spread", (1, 1): "self"}
    groups = heads_by_class(classes)
    assert list(groups) == ["attends-a", "self", "spread"]
    assert groups["spread"] == [Component("head", 0, 0), Component("head", 1, 0)]


def test_label_agreement_counts_single_inputs_with_the_same_class():
    patterns = torch.zeros(4, 1, 2, 4)
    patterns[:, 0, 0] = torch.tensor([0.9, 0.0, 0.1, 0.0])  # head 0 always attends to a
    patterns[:, 0, 1] = torch.tensor([0.1, 0.0, 0.9, 0.0])  # head 1 attends to b ...
    patterns[3, 0, 1] = torch.tensor([0.3, 0.3, 0.3, 0.1])  # ... except on the last input
    classes = {(0, 0): "attends-a", (0, 1): "attends-b"}
    assert label_agreement(patterns, classes, every=1) == {(0, 0): 1.0, (0, 1): 0.75}
    assert label_agreement(patterns, classes, every=2) == {(0, 0): 1.0, (0, 1): 1.0}  # inputs 0 and 2


def test_attention_entropy():
    mass = torch.tensor([[[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]])
    assert torch.allclose(attention_entropy(mass), torch.tensor([torch.log(torch.tensor(4.0)).item() / 2]), atol=1e-6)
