"""Sharing of components across the multi-task model's operators: a planted ablation table for the
rule, a tiny multi-task model for the measurements."""
import dataclasses

import pandas as pd
import pytest

from mechlab.analysis.ablation import Component, reference_activations
from mechlab.arithmetic.data import MODULUS, Example, bucket_of
from mechlab.arithmetic.extension_studies import multitask_config
from mechlab.arithmetic.extensions import MULTITASK_TOKENIZER, multitask_rows
from mechlab.arithmetic.multitask import (
    answer_probes,
    component_sharing,
    neuron_selectivity,
    per_task_ablation,
    share_of_heads,
)
from mechlab.arithmetic.task import ArithmeticSplit
from mechlab.arithmetic.tokenizer import MODEL_INPUT_LEN
from mechlab.core.model import build_model


def planted(drops: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    """A `per_task_ablation` table: component ("L0H0" or "MLP3") -> its drop under +, -, *."""
    rows = [{"component": "none", "kind": "none", "layer": -1, "method": "none", "drop/op_+": 0.0, "drop/op_-": 0.0,
             "drop/op_*": 0.0}]
    for name, (p, s, t) in drops.items():
        kind, layer = ("mlp", int(name[3:])) if name.startswith("MLP") else ("head", int(name[1]))
        rows.append({"component": name, "kind": kind, "layer": layer, "method": "mean", "drop/op_+": p, "drop/op_-": s,
                     "drop/op_*": t})
    return pd.DataFrame(rows)


def test_a_component_critical_for_two_operators_is_shared_and_for_one_specific():
    sharing = component_sharing(planted({"L0H0": (0.9, 0.8, 0.02), "L3H1": (0.0, 0.3, 0.01),
                                         "MLP3": (0.5, 0.6, 0.7), "L2H2": (0.01, 0.02, 0.03)}))
    assert sharing["sharing"].to_dict() == {"L0H0": "shared", "L3H1": "specific to -", "MLP3": "shared", "L2H2": "unused"}
    assert sharing.loc["L0H0", "serves"] == "+-" and sharing.loc["MLP3", "serves"] == "+-*"
    assert list(sharing.columns[:5]) == ["+", "-", "*", "kind", "layer"] and sharing.loc["MLP3", "layer"] == 3
    assert share_of_heads(sharing, [0], "shared") == 1.0 and share_of_heads(sharing, [2, 3], "specific") == 0.5
    assert share_of_heads(sharing, [1], "shared") != share_of_heads(sharing, [1], "shared")  # no head there: NaN


@pytest.fixture(scope="module")
def tiny_multitask():
    config = dataclasses.replace(multitask_config(), n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32)
    model = build_model(config, "cpu")
    pairs = [(a, b) for a in (3, 45, 150, 431, 999) for b in (5, 55, 313, 640)]
    rows = multitask_rows([Example(a, b, MODULUS, bucket_of(a, b)).to_json() for a, b in pairs])
    return model, rows


def test_each_component_is_ablated_per_operator(tiny_multitask):
    model, rows = tiny_multitask
    split = ArithmeticSplit.from_rows(rows, MULTITASK_TOKENIZER)
    reference = reference_activations(model, split.tokens[:, :MODEL_INPUT_LEN])
    table = per_task_ablation(model, split, [Component("head", 0, 1), Component("mlp", 1)], reference)
    assert table["component"].tolist() == ["none", "L0H1", "MLP1"]
    assert {"drop/op_+", "drop/op_-", "drop/op_*", "score/op_*"} <= set(table.columns)
    assert set(component_sharing(table).index) == {"L0H1", "MLP1"}


def test_answer_probes_are_fitted_per_operator_and_scored_on_the_others(tiny_multitask):
    model, rows = tiny_multitask
    table = answer_probes(model, rows)
    assert sorted(table["fitted_on"].unique()) == ["*", "+", "-"]
    plus = table[table["fitted_on"] == "+"]
    assert {"own", "on -", "on *"} <= set(plus.columns) and plus["on +"].isna().all()  # "on +" is the other rows' column
    assert set(plus["point"]) == {"resid_pre 0", "resid_mid 0", "resid_pre 1", "resid_mid 1", "resid_post 1"}
    accuracy = plus[plus["target"] == "class"]
    assert accuracy["own"].between(0, 1).all() and (accuracy["metric"] == "accuracy").all()


def test_each_neuron_gets_its_mean_activation_per_operator_and_preference(tiny_multitask):
    model, rows = tiny_multitask
    table = neuron_selectivity(model, rows)
    assert len(table) == 2 * 32 and table.index[0] == "L0N0" and table.index[-1] == "L1N31"
    row = table.iloc[0]
    means = {op: row[op] for op in "+-*"}
    assert row["prefers"] == max(means, key=means.get)
    assert row["ratio"] == pytest.approx(max(means.values()) / sorted(means.values())[-2])
    assert row["selective_for"] in ("", row["prefers"]) and (row["selective_for"] != "") == (row["ratio"] >= 2.0)
