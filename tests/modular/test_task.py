"""The single-token task: encodings, splits, the training task's batches, and the one evaluation
path (`evaluate_pairs`) on models whose answers are known."""
from __future__ import annotations

import pytest
import torch

from mechlab.core.model import ModelConfig, build_model
from mechlab.modular.mlp import MLPConfig, build_mlp
from mechlab.modular.task import (
    ModularTask,
    all_pairs,
    answer_logits,
    encode,
    evaluate_pairs,
    labels,
    make_split,
    vocab,
)

P = 7


class Adder(torch.nn.Module):
    """A perfect 'pair' model: logits are one-hot (times 10) at (a + b) mod p, except for pairs
    with a == 0, where it answers b + 1."""

    def __init__(self, p: int):
        super().__init__()
        self.p = p
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # so the model has a device

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        answer = (pairs[:, 0] + pairs[:, 1] + (pairs[:, 0] == 0).long()) % self.p
        return 10.0 * torch.nn.functional.one_hot(answer, self.p).double()


def test_encodings_share_one_grid():
    pairs = all_pairs(P)
    assert pairs[3 * P + 5].tolist() == [3, 5] and labels(P)[3 * P + 5].item() == 1
    assert encode(pairs[:1], "three_layer", P).tolist() == [[0, P, 0, P + 1]]
    assert encode(pairs[:1], "one_layer", P).tolist() == [[0, 0, P]]
    assert vocab("three_layer", P)[-2:] == ("+", "=")
    with pytest.raises(ValueError, match="unknown format 'quad'"):
        encode(pairs, "quad", P)


def test_split_is_deterministic_and_disjoint():
    a, b = make_split(P, train_fraction=0.5, seed=3), make_split(P, train_fraction=0.5, seed=3)
    assert torch.equal(a.train, b.train) and len(a.train) == round(0.5 * P * P)
    assert not set(a.train.tolist()) & set(a.test.tolist())
    with pytest.raises(ValueError, match="give train_fraction or n_train"):
        make_split(P)


def test_evaluate_pairs_scores_known_answers():
    model = Adder(P)
    pairs = all_pairs(P)
    right = pairs[pairs[:, 0] > 0]  # the model is right on these
    metrics = evaluate_pairs(model, right, "pair", "x", P)
    assert set(metrics) == {"x_loss", "x_acc"} and metrics["x_acc"] == 1.0
    assert metrics["x_loss"] == pytest.approx(torch.log1p(torch.tensor(6.0) * torch.exp(torch.tensor(-10.0))).item())
    assert evaluate_pairs(model, pairs, "pair", "all", P)["all_acc"] == pytest.approx((P * P - P) / (P * P))


def test_task_evaluate_is_evaluate_pairs_on_train_and_test():
    split = make_split(P, train_fraction=0.5, seed=0)
    out = ModularTask(split, "pair").evaluate(Adder(P))
    pairs = all_pairs(P)
    test = evaluate_pairs(Adder(P), pairs[split.test], "pair", "test", P)
    train = evaluate_pairs(Adder(P), pairs[split.train], "pair", "train", P)
    assert list(out) == ["train_loss_full", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc"]
    assert out["test_acc"] == out["val_acc"] == test["test_acc"] and out["train_loss_full"] == train["train_loss"]


def test_last_position_shortcut_gives_the_full_forward_logits():
    cfg = ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=P + 2, n_ctx=4, act_fn="relu",
                      vocab=vocab("three_layer", P))
    model = build_model(cfg, device="cpu").double()
    x = encode(all_pairs(P), "three_layer", P)
    assert torch.allclose(answer_logits(model, x, P), model(x)[:, -1, :P], atol=1e-12)
    mlp = build_mlp(MLPConfig(p=P, d_embed=4, d_hidden=8), device="cpu")
    assert torch.equal(answer_logits(mlp, all_pairs(P), P), mlp(all_pairs(P)))


def test_minibatches_cover_an_epoch_once():
    task = ModularTask(make_split(P, n_train=20, seed=0), "pair", batch_size=8, seed=1)
    assert task.steps_per_epoch == 3
    seen = torch.cat([task.batch(step)[0] for step in range(3)])
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, task.train_x.tolist()))
    assert torch.equal(task.batch(4)[0], task.batch(4)[0])
