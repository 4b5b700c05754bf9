"""The circuit's choice rule, the 3 + 1 predictor and the scorecard verdicts, on hand-made
measurements, the arithmetic oracle and the tiny model."""
import numpy as np
import pandas as pd
import pytest
import torch

from mechlab.analysis.ablation import Component
from mechlab.arithmetic.circuit import (
    FAILED,
    HELD,
    PARTIAL,
    add_modulo_verdict,
    apply_rule,
    attention_knockout_hooks,
    auc,
    backup_verdict,
    best_threshold_rule,
    choose_circuit,
    component_measurements,
    expected_knockout_sign,
    failure_mode_verdict,
    feature_aucs,
    layout_rows,
    positional_verdict,
    prediction_scores,
    role_attention,
    role_positions,
    row_correct,
    rule_auc,
    scorecard,
    specialization_verdict,
    split_seen,
    sudden_learning_verdict,
)
from mechlab.arithmetic.roles import ROLES
from mechlab.arithmetic.task import ArithmeticSplit
from mechlab.arithmetic.tokenizer import MODEL_INPUT_LEN


def test_the_choice_rule_names_the_criteria_each_component_meets():
    components = [Component("head", 0, 0), Component("head", 0, 1), Component("mlp", 0)]
    ablation = pd.DataFrame({"component": ["L0H0", "L0H1", "MLP0", "L0H0"], "method": ["mean"] * 3 + ["zero"],
                             "drop": [0.5, 0.01, 0.02, 0.9]})
    heads = {"a": torch.tensor([[0.05, 0.25]]), "b": torch.tensor([[0.1, 0.0]])}
    mlp = {"a": torch.tensor([[0.0, 0.1, 0.0]]), "b": torch.tensor([[0.15, 0.0, 0.0]])}
    dla = pd.Series({"L0H0": 0.0, "L0H1": 0.1, "MLP0": -0.4})
    table = choose_circuit(component_measurements(components, ablation, heads, mlp, dla))
    assert table.loc["L0H1", "restore"] == pytest.approx(0.25) and table.loc["MLP0", "restore:b"] == pytest.approx(0.15)
    assert table["chosen_by"].tolist() == ["ablation", "patching", "attribution"]
    assert table["in_circuit"].tolist() == [True, True, True]
    assert choose_circuit(table, drop=0.6, restore=0.3, dla=0.5)["in_circuit"].tolist() == [False, False, False]


def test_layout_rows_and_fresh_prompts():
    rows = layout_rows(3, 1)
    assert len(rows) == 900 * 10 and rows[0]["prompt"] == "100 + 0 mod 113 =" and rows[-1]["answer"] == str((999 + 9) % 113)
    seen, fresh = split_seen(rows, [{"a": 100, "b": 0, "m": 113}, {"a": 5, "b": 5, "m": 113}])
    assert [r["prompt"] for r in seen] == ["100 + 0 mod 113 ="] and len(fresh) == 8999


def test_row_correct_is_exact_match_per_row(arithmetic_oracle):
    split = ArithmeticSplit.from_rows(layout_rows(3, 1)[::300])  # a = 100, 130, ...
    correct = row_correct(arithmetic_oracle(wrong=lambda a, b, m: a > 500), split)
    assert correct.tolist() == [r["a"] <= 500 for r in split.rows]


def test_auc_and_the_threshold_rule_recover_a_planted_feature():
    rng = np.random.default_rng(0)
    failed = rng.random(400) < 0.3
    features = pd.DataFrame({"noise": rng.random(400), "planted": np.where(failed, 0.8, 0.2) + 0.1 * rng.random(400),
                             "inverted": np.where(failed, 0.0, 1.0)})
    assert auc(features["planted"], failed) == pytest.approx(1.0) and auc(features["inverted"], failed) == 0.0
    rule = best_threshold_rule(features[["noise", "planted"]], failed)
    assert rule["feature"] == "planted" and rule["direction"] == ">=" and 0.3 < rule["threshold"] <= 0.9
    assert (apply_rule(rule, features) == failed).all()
    low = best_threshold_rule(features[["noise", "inverted"]], failed)
    assert low["direction"] == "<=" and low["auc"] == 1.0 and (apply_rule(low, features) == failed).all()
    assert rule_auc(low, features, ~failed) == 0.0  # on rows where it points the wrong way
    assert feature_aucs(features, failed).index[-1] == "noise"


def test_prediction_scores_by_hand():
    scores = prediction_scores(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 0, 1, 1], bool))
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["base_rate"] == pytest.approx(0.6) and scores["lift"] == pytest.approx((2 / 3) / 0.6)
    assert scores["agreement"] == pytest.approx(0.6) and scores["predicted"] == 3


def test_role_attention_and_its_knockout(tiny_model):
    split = ArithmeticSplit.from_rows(layout_rows(3, 1)[::900])
    tokens = split.tokens[:, :MODEL_INPUT_LEN]
    mass = role_attention(tiny_model, tokens)
    assert mass.shape == (10, 2, 2, len(ROLES)) and torch.allclose(mass.sum(-1), torch.ones(10, 2, 2, dtype=mass.dtype))
    pad = role_positions(tokens, "pad")
    assert pad.sum() == 4  # "123 + 4 mod 113 =" is 17 characters: 4 pads before it
    with tiny_model.hooks(fwd_hooks=attention_knockout_hooks(1, 0, pad)):
        knocked = role_attention(tiny_model, tokens)
    assert knocked[:, 1, 0, ROLES.index("pad")].abs().max() == 0 and mass[:, 1, 0, ROLES.index("pad")].min() > 0
    assert torch.allclose(knocked.sum(-1), torch.ones(10, 2, 2, dtype=mass.dtype))
    assert torch.equal(knocked[:, 0], mass[:, 0]) and torch.equal(knocked[:, 1, 1], mass[:, 1, 1])
    mixed = ArithmeticSplit.from_rows(layout_rows(1, 1)[:1] + layout_rows(3, 1)[:1]).tokens
    with pytest.raises(ValueError, match="do not share one token layout"):
        role_positions(mixed, "pad")


def test_verdicts_follow_their_rules():
    drops = pd.DataFrame({"layer": [0, 0, 1, 1], "drop": [0.9, 0.5, 0.1, 0.0]})
    assert specialization_verdict(drops, True)[0] == HELD and specialization_verdict(drops, False)[0] == PARTIAL
    flat = pd.DataFrame({"layer": [0, 1, 2], "drop": [0.3, 0.3, 0.3]})
    assert specialization_verdict(flat, False)[0] == FAILED
    assert [add_modulo_verdict(c, w)[0] for c, w in [("L0H2", ["L3H0"]), (None, ["L3H0"]), (None, [])]] == [HELD, PARTIAL, FAILED]
    assert positional_verdict(0.99, 0.2)[0] == HELD and positional_verdict(0.99, 0.95)[0] == FAILED
    pairs = pd.DataFrame({"a": ["x"], "b": ["y"], "drop_a": [0.01], "drop_b": [0.02], "drop_pair": [0.08], "excess": [0.05]})
    assert backup_verdict(pairs)[0] == PARTIAL and backup_verdict(pairs.assign(excess=0.2))[0] == HELD
    assert backup_verdict(pairs.assign(excess=0.01))[0] == FAILED
    layouts = {"3+3": 1.0, "3+1": 0.8}
    assert failure_mode_verdict(layouts, 0.99, -0.2, -1)[0] == HELD and failure_mode_verdict(layouts, 0.99, 0.0, -1)[0] == PARTIAL
    assert failure_mode_verdict(layouts, 0.99, +0.2, -1)[0] == PARTIAL  # the knock-out hurts: needed, not the cause
    assert failure_mode_verdict(layouts, 0.99, +0.2, +1)[0] == HELD
    assert failure_mode_verdict({"3+3": 0.98}, 0.99, 0.0, -1)[0] == FAILED
    assert expected_knockout_sign({"direction": ">="}) == -1 and expected_knockout_sign({"direction": "<="}) == 1


def test_sudden_learning_verdict_tells_grokking_from_a_jump():
    def history(train, val):
        return [{"step": 100 * (i + 1), "train_exact": t, "val_exact": v} for i, (t, v) in enumerate(zip(train, val))]
    jump = history([0.1, 0.2, 0.8, 0.99, 1.0], [0.1, 0.2, 0.8, 0.97, 0.99])  # both jump together
    verdict, text = sudden_learning_verdict(jump)
    assert verdict == PARTIAL and "0.200 -> 0.800 between steps 200 and 300" in text
    grok = history([0.5, 0.99, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.1, 0.9, 0.97])  # train first, val far later
    assert sudden_learning_verdict(grok)[0] == HELD
    assert sudden_learning_verdict(history([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]))[0] == FAILED


def test_scorecard_needs_every_hypothesis():
    from mechlab.arithmetic.circuit import HYPOTHESES
    card = scorecard({h: (HELD, "m") for h in HYPOTHESES}, {"backup circuits": "ablation_pairs.png"})
    assert len(card) == 6 and card.set_index("hypothesis").loc["backup circuits", "figure"] == "ablation_pairs.png"
    with pytest.raises(ValueError, match="no verdict for"):
        scorecard({}, {})


def test_rule_knockout_hooks_remove_the_attention_the_rule_reads(tiny_model):
    from mechlab.arithmetic.circuit import rule_knockout_hooks
    tokens = ArithmeticSplit.from_rows(layout_rows(3, 1)[::900]).tokens[:, :MODEL_INPUT_LEN]
    with tiny_model.hooks(fwd_hooks=rule_knockout_hooks({"feature": "L1H1->b"}, tokens)):
        knocked = role_attention(tiny_model, tokens)
    assert knocked[:, 1, 1, ROLES.index("b")].abs().max() == 0
    assert role_attention(tiny_model, tokens)[:, 1, 1, ROLES.index("b")].min() > 0


def test_node_roles_cite_the_measured_numbers():
    from mechlab.arithmetic.circuit import node_roles
    measurements = pd.DataFrame({"kind": ["head", "mlp"], "dla": [0.0, 7.14], "restore": [0.68, 0.4]}, index=["L0H0", "MLP3"])
    role_table = pd.DataFrame({"head": ["L0H0"], "label": ["b reader"], "mass:a": [0.05], "mass:b": [0.48]})
    assert node_roles(measurements, role_table) == {"L0H0": "b reader: b 0.48", "MLP3": "DLA 7.14, restore 0.40"}
