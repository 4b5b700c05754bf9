import math

import pytest
import torch

from mechlab.core.model import build_model
from mechlab.toylm.bigram import (
    bigram_counts,
    bigram_entropy,
    bigram_loss,
    bigram_report,
    conditional_probs,
    kl_per_token,
    learned_bigram_log_probs,
    pca,
    top_next,
    top_predictors,
    weighted_kl,
)
from mechlab.toylm.studies import toy_config

# "abab...": after a always b; after b, a three times out of four and b once.
TEXT = [0, 1, 0, 1, 0, 1, 1, 0, 1]  # a b a b a b b a b
VOCAB = ("a", "b")


def test_counts_and_conditionals_of_a_tiny_corpus():
    counts = bigram_counts(torch.tensor(TEXT), 2)
    assert counts.tolist() == [[0, 4], [3, 1]]
    torch.testing.assert_close(conditional_probs(counts), torch.tensor([[0.0, 1.0], [0.75, 0.25]], dtype=torch.float64))


def test_the_entropy_floor_is_the_conditional_entropy():
    counts = bigram_counts(torch.tensor(TEXT), 2)
    h_after_b = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert bigram_entropy(counts) == pytest.approx(4 / 8 * 0 + 4 / 8 * h_after_b)


def test_loss_is_entropy_plus_weighted_kl_and_kl_vanishes_only_at_the_true_table():
    counts = bigram_counts(torch.tensor(TEXT), 2)
    uniform = torch.full((2, 2), 0.5).log()
    assert bigram_loss(uniform, counts) == pytest.approx(math.log(2))
    assert weighted_kl(counts, uniform) == pytest.approx(bigram_loss(uniform, counts) - bigram_entropy(counts))
    assert kl_per_token(counts, uniform)[0] == pytest.approx(math.log(2))  # after a: certain b vs a coin
    assert weighted_kl(counts, conditional_probs(counts).log()) == pytest.approx(0.0, abs=1e-12)


def test_a_zero_layer_model_predicts_its_bigram_table():
    model = build_model(toy_config(0, n_heads=1), "cpu")
    tokens = torch.randint(0, 65, (3, 20))
    table = learned_bigram_log_probs(model)
    torch.testing.assert_close(model(tokens).log_softmax(-1).double(), table[tokens], atol=1e-5, rtol=1e-5)  # float32 model


def test_what_follows_and_what_predicts_read_rows_and_columns():
    table = conditional_probs(bigram_counts(torch.tensor(TEXT), 2)).log()
    assert top_next(table, VOCAB, "b", k=2)["next"].tolist() == ["a", "b"]
    assert top_predictors(table, VOCAB, "b", k=1)["previous"].tolist() == ["a"]


def test_pca_finds_the_direction_of_largest_variance():
    points = torch.tensor([[-2.0, 0.1], [0.0, -0.1], [2.0, 0.0]])
    coords, share = pca(points, 2)
    assert abs(coords[:, 0]).tolist() == pytest.approx([2.0, 0.0, 2.0], abs=0.02)
    assert share[0] > 0.99


def test_the_report_gives_floor_loss_and_kl_per_split():
    counts = {"train": bigram_counts(torch.tensor(TEXT), 2), "val": bigram_counts(torch.tensor([0, 1, 0, 1]), 2)}
    report = bigram_report(conditional_probs(counts["train"]).log(), counts)
    assert report.loc["train", "KL(empirical || model)"] == pytest.approx(0.0, abs=1e-12)
    assert report.loc["val", "entropy floor"] == pytest.approx(0.0, abs=1e-12)  # a b a b: fully determined
    assert report.loc["val", "model loss"] == pytest.approx(-(2 * math.log(1.0) + math.log(0.75)) / 3)
    assert report.loc["val", "bigrams"] == 3
