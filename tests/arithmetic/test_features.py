"""The candidate-feature table: every feature of a few problems by hand, the residue grid, and the
residue readout on planted activations."""
from __future__ import annotations

import math

import pandas as pd
import torch

from mechlab.arithmetic.data import MODULUS, Example, bucket_of
from mechlab.arithmetic.features import (
    CAUSAL_DROP,
    FEATURES,
    KEY_FREQUENCY_EXPERIMENT,
    NEURON_KIND_BY_FAMILY,
    NO_DIGIT,
    feature_table,
    feature_values,
    operand_digit_code,
    residue_account,
    residue_grid_rows,
    residue_readout,
)


def test_feature_values_of_one_problem():
    v = feature_values(234, 56, MODULUS)  # 290 = 2 * 113 + 64
    assert [v[k] for k in ("a2", "a1", "a0", "b2", "b1", "b0")] == [2, 3, 4, 0, 5, 6]
    assert (v["a"], v["b"], v["a+b"]) == (234, 56, 290)
    assert (v["a mod m"], v["b mod m"], v["(a+b) mod m"]) == (8, 56, 64)
    assert (v["a-a0 mod m"], v["b-b0 mod m"]) == (230 % 113, 50)
    assert v["wraps"] == 2
    assert [v["ans d1"], v["ans d2"], v["ans d3"], v["ans len"]] == [6, 4, NO_DIGIT, 2]


def test_feature_table_has_one_column_per_feature_within_its_classes(mixed_rows):
    rows = mixed_rows + [{"a": 999, "b": 999, "m": MODULUS}]
    table = feature_table(rows)
    assert list(table.columns) == [f.name for f in FEATURES] and len(table) == len(rows)
    for f in FEATURES:
        if f.kind != "scalar":
            assert table[f.name].between(0, f.n_classes - 1).all(), f.name
    assert (table["(a+b) mod m"] == [int(r["answer"]) if "answer" in r else 1998 % MODULUS for r in rows]).all()
    assert table["wraps"].max() == 1998 // MODULUS


def test_every_family_names_a_neuron_kind():
    assert {f.family for f in FEATURES} == set(NEURON_KIND_BY_FAMILY)


def test_residue_grid_has_one_row_per_residue_pair():
    rows = residue_grid_rows(m=7, max_operand=30, seed=1)
    assert len(rows) == 49
    assert [(r["a"] % 7, r["b"] % 7) for r in rows] == [(x, y) for x in range(7) for y in range(7)]
    assert all(r["a"] <= 30 and r["b"] <= 30 and r["answer"] == str((r["a"] + r["b"]) % 7) for r in rows)
    assert len({r["a"] for r in rows}) > 7  # representatives vary, not always the residue itself


def first_row(feature: str, target: str, metric: str, score: float, first: str, selectivity: float = 0.0) -> dict:
    return {"feature": feature, "target": target, "metric": metric, "first point": first, "first slot": "=",
            "best score": score, "best selectivity": selectivity, "best point": "L1", "best slot": "="}


def test_residue_account_verdicts_follow_the_measurements():
    first = pd.DataFrame([
        first_row("a mod m", "class", "accuracy", 0.1, "never"), first_row("a mod m", "k=1", "R2", 0.6, "L1"),
        first_row("b mod m", "class", "accuracy", 0.1, "never"), first_row("b mod m", "k=1", "R2", 0.2, "never"),
        first_row("(a+b) mod m", "class", "accuracy", 0.3, "never"),
        first_row("(a+b) mod m", "k=1", "R2", 0.99, "L2"), first_row("(a+b) mod m", "k=2", "R2", 0.4, "never"),
        first_row("a+b", "value", "R2", 0.9, "L0"), first_row("wraps", "class", "accuracy", 0.4, "never", 0.3)])
    keys = pd.DataFrame([{"point": "L1", "key frequencies": [1], "share": 0.7, "a only": 0.01, "b only": 0.01,
                          "a+b wave": 0.68}])
    sweep = pd.DataFrame([{"experiment": f"{KEY_FREQUENCY_EXPERIMENT} [1] @ L1", "dim": 2, "base": 0.99,
                           "score": 0.99 - CAUSAL_DROP - 0.1, "drop": CAUSAL_DROP + 0.1,
                           "random drop (mean)": 0.0, "random drop (max)": 0.01}])
    verdict = residue_account(pd.DataFrame(first), keys, sweep)["verdict"].tolist()
    assert verdict == ["partial", "held", "held", "failed", "held", "held"]
    sweep.loc[0, "random drop (max)"] = CAUSAL_DROP  # random directions break it as well: no evidence
    assert residue_account(pd.DataFrame(first), keys, sweep)["verdict"].iloc[-1] == "failed"


def test_operand_digit_code_is_one_hot_per_digit():
    code = operand_digit_code(feature_table([{"a": 234, "b": 56, "m": MODULUS}]))
    assert code.shape == (1, 60) and code.sum() == 6
    assert code[0].nonzero().flatten().tolist() == [2, 13, 24, 30, 45, 56]  # a2=2, a1=3, a0=4, b2=0, b1=5, b0=6


def planted_acts_and_rows(n: int, m: int, seed: int) -> tuple[torch.Tensor, list[dict]]:
    """acts [1 point, n, 6] and n rows a + b mod m; the acts hold: (cos, sin)(2 pi k (a+b) mod m / 113) for k = 1
    in the first two dimensions, noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(0, 1000, (n,), generator=g), torch.randint(0, 1000, (n,), generator=g)
    rows = [Example(int(x), int(y), m, bucket_of(int(x), int(y), m)).to_json() for x, y in zip(a, b)]
    angle = 2 * math.pi * ((a + b) % m).double() / MODULUS
    acts = torch.cat([angle.cos()[:, None], angle.sin()[:, None], 0.1 * torch.randn(n, 4, generator=g, dtype=torch.float64)], 1)
    return acts[None], rows


def test_residue_readout_recovers_a_planted_circle_and_loses_it_under_another_modulus():
    fit_acts, fit_rows = planted_acts_and_rows(800, MODULUS, seed=0)
    same_rule = planted_acts_and_rows(300, MODULUS, seed=1)
    mod_127 = planted_acts_and_rows(300, 127, seed=2)  # the stream holds (a+b) mod 127, the probe reads mod 113
    table = residue_readout(fit_acts, fit_rows, {"same rule": same_rule, "mod 127": mod_127}, ["resid"])
    circle = table[(table.feature == "(a+b) mod m") & (table.target == "k=1")].iloc[0]
    assert circle["held-out"] > 0.95 and circle["same rule"] > 0.95
    assert circle["mod 127"] < 0.5
    operand = table[(table.feature == "a mod m") & (table.target == "k=1")].iloc[0]
    assert operand["held-out"] < 0.2  # a mod 113 was not planted
