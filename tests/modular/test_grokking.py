"""The grokking detector on synthetic curves and the progress measures on a tiny model (seconds)."""
from __future__ import annotations

import math

import torch

from mechlab.core.model import ModelConfig, build, build_model
from mechlab.modular.grokking import (
    circuit_before_test_loss,
    crossings,
    detect_from_history,
    detect_grokking,
    grokking_record,
    key_share_over_series,
    mlp_fourier_summary,
    progress_measures,
)
from mechlab.modular.mlp import MLPConfig
from mechlab.modular.task import all_pairs, make_split, vocab


def sigmoid_curve(epochs, midpoint, width=0.15):
    return [1 / (1 + math.exp(-(math.log10(e) - math.log10(midpoint)) / width)) for e in epochs]


EPOCHS = [10 * i for i in range(1, 2001)]  # 10 .. 20,000


def history(train_acc, test_acc, epochs=EPOCHS):
    """Training rows as `core.train.train` writes them (step = epoch for full-batch runs)."""
    return [{"step": e, "train_acc": tr, "test_acc": te} for e, tr, te in zip(epochs, train_acc, test_acc)]


def test_delayed_generalisation_is_detected_at_the_right_epochs():
    train = sigmoid_curve(EPOCHS, 300)
    test = sigmoid_curve(EPOCHS, 5000)
    c = detect_grokking(history(train, test))
    assert c is not None
    assert 1000 <= c.train_99 <= 2000 and 4500 <= c.test_50 <= 5500 and c.test_95 > c.test_50
    assert c.delay_ratio > 2


def test_a_run_that_never_groks_returns_none():
    train = sigmoid_curve(EPOCHS, 300)
    assert detect_grokking(history(train, [0.01] * len(EPOCHS))) is None
    assert detect_grokking(history(train, [min(0.9, t) for t in sigmoid_curve(EPOCHS, 5000)])) is None  # stalls < 95%


def test_generalising_with_memorisation_is_not_grokking():
    train = sigmoid_curve(EPOCHS, 300)
    test = sigmoid_curve(EPOCHS, 350)
    assert detect_grokking(history(train, test)) is None
    c = crossings(history(train, test))
    assert c.test_95 is not None and c.delay_ratio < 2


def test_detect_from_history_reads_training_rows():
    c, det = detect_from_history(history(sigmoid_curve(EPOCHS, 100), sigmoid_curve(EPOCHS, 2000)))
    assert det == c and c.train_99 < c.test_50


def test_progress_measures_run_on_a_tiny_one_layer_model():
    p = 13
    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=p + 1, n_ctx=3, act_fn="relu",
                      normalization_type=None, vocab=vocab("one_layer", p))
    model = build_model(cfg, device="cpu")
    split = make_split(p, train_fraction=0.5, seed=0)
    m = progress_measures(model, p, [1, 2], split.train, split.test)
    assert set(m) >= {"train_loss", "test_loss", "restricted_loss", "excluded_loss"}
    assert all(math.isfinite(v) for v in m.values())
    # with no key frequency nothing is removed: the excluded loss is the training loss itself, and
    # removing key directions changes it
    none = progress_measures(model, p, [], split.train, split.test)
    assert none["excluded_loss"] == none["train_loss"] == m["train_loss"]
    assert m["excluded_loss"] != m["train_loss"]


def test_circuit_before_test_loss_orders_the_first_steps_below_the_level():
    progress = [{"step": 100, "restricted_loss": 3.0, "test_loss": 4.0, "excluded_loss": 1.0},
                {"step": 200, "restricted_loss": 0.9, "test_loss": 2.0, "excluded_loss": 5.0},
                {"step": 300, "restricted_loss": 0.1, "test_loss": 0.5, "excluded_loss": 2.0}]
    assert circuit_before_test_loss(progress) == {"circuit_step": 200, "test_step": 300, "circuit_first": True,
                                                  "peak_excluded_step": 200}
    # a level neither loss goes below: no ordering claimed
    assert circuit_before_test_loss(progress, level=0.05)["circuit_first"] is None
    # both cross at the same evaluation: not "before"
    assert circuit_before_test_loss(progress, level=0.6)["circuit_first"] is False


def test_a_grokking_record_says_whether_the_circuit_formed_during_the_plateau():
    train, test = sigmoid_curve(EPOCHS, 300), sigmoid_curve(EPOCHS, 5000)
    progress = [{"step": 500, "restricted_loss": 4.0, "test_loss": 5.0, "excluded_loss": 0.1},
                {"step": 3000, "restricted_loss": 0.8, "test_loss": 3.0, "excluded_loss": 2.0},
                {"step": 6000, "restricted_loss": 0.1, "test_loss": 0.2, "excluded_loss": 1.0}]
    record = grokking_record(history(train, test), progress)
    assert record["grokked"] and 1000 <= record["T"] <= 2000 and record["G50"] > 2 * record["T"]
    assert (record["circuit epoch"], record["test loss epoch"], record["peak excluded loss epoch"]) == (3000, 6000, 3000)
    assert record["circuit during plateau"] and record["epochs trained"] == 20_000
    assert record["circuit lead"] == 3000  # epochs from restricted loss < 1 to test loss < 1
    # the circuit "forming" before the training set is fitted is not forming during the plateau
    early = [{**progress[0], "restricted_loss": 0.5}, *progress[1:]]
    assert grokking_record(history(train, test), early)["circuit during plateau"] is False
    # a run that never generalised: no test-loss epoch, so no claim either way
    flat = grokking_record(history(train, [0.01] * len(EPOCHS)), [{**row, "test_loss": 4.0} for row in progress])
    assert not flat["grokked"] and flat["test loss epoch"] is None and flat["circuit during plateau"] is None
    assert flat["circuit lead"] is None


def planted_fourier_mlp(p: int = 13, k: int = 3):
    """A grokking MLP whose embeddings are cos/sin of frequency k (plus zeros): a pure one-frequency model."""
    mlp = build(MLPConfig(p=p, d_embed=4, d_hidden=8, seed=0), device="cpu")
    x = torch.arange(p, dtype=torch.float32)[:, None]
    wave = torch.cat([torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p), torch.zeros(p, 2)], dim=1)
    with torch.no_grad():
        mlp.embed_a.weight.copy_(wave)
        mlp.embed_b.weight.copy_(wave)
    return mlp


def test_mlp_fourier_summary_finds_a_planted_frequency():
    p, k = 13, 3
    mlp = planted_fourier_mlp(p, k)
    grid = mlp.hidden(all_pairs(p)).detach().reshape(p, p, -1)
    order = torch.arange(grid.shape[-1])
    summary = mlp_fourier_summary(mlp, grid, order, n_top=3)
    assert summary["key frequencies, embed a"] == summary["key frequencies, embed b"] == [k]
    assert math.isclose(summary["embed a variance in its key frequencies"], 1.0, abs_tol=1e-5)
    assert len(summary["top-3 neurons' frequencies"]) == 3


def test_key_share_over_series_tracks_each_snapshot():
    p, k = 13, 3
    planted, random = planted_fourier_mlp(p, k), build(MLPConfig(p=p, d_embed=4, d_hidden=8, seed=1), device="cpu")
    rows = key_share_over_series([(0, random), (10, planted)], [k], [k])
    assert [r["step"] for r in rows] == [0, 10]
    assert rows[0]["embed a variance in key freqs"] < 0.5
    assert math.isclose(rows[1]["embed b variance in key freqs"], 1.0, abs_tol=1e-5)
