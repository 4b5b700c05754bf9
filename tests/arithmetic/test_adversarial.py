"""Adversarial designs: their rows, their input errors, their predictions and the measuring functions,
on hand-made evidence, the arithmetic oracle and the tiny model."""
import math

import pytest
import torch

from mechlab.analysis.ablation import Component, reference_activations
from mechlab.analysis.compare import position_remap_hook
from mechlab.arithmetic.adversarial import (
    JUDGEMENT,
    MEASURED,
    POSITION_READ_SHARE,
    REFUSED,
    Design,
    DesignError,
    Evidence,
    Prediction,
    a_hundreds,
    crossed_digit_index,
    example_rows,
    knockout_effects,
    knockout_holds,
    lookalike_prediction,
    make_designs,
    measure_designs,
    position_read_prediction,
    position_read_rows,
    position_read_split,
    predict_designs,
    prediction_holds,
    realigned_a_index,
    swapped_operand_index,
    target_components,
    target_effects,
    tokenizer_verdict,
    wilson_interval,
    wrap_boundary_pairs,
    zero_padded_prompt,
)
from mechlab.arithmetic.circuit import layout_rows
from mechlab.arithmetic.data import check_row
from mechlab.arithmetic.task import TOKENIZER, ArithmeticSplit, accuracy_by, digit_lengths
from mechlab.arithmetic.tokenizer import MODEL_INPUT_LEN, TokenizerError, parse_prompt

DESIGNS = make_designs()
PLAIN = [name for name in DESIGNS if name != "leading_zeros"]


def evidence_for(rows, failing=lambda row: False) -> Evidence:
    return Evidence(rows, torch.tensor([not failing(r) for r in rows]))


@pytest.mark.parametrize("name", PLAIN)
def test_each_design_builds_valid_rows_that_round_trip_through_the_tokenizer(name):
    rows = DESIGNS[name].build(40, seed=0)
    assert len(rows) == 40
    for row in rows:
        check_row(row, name)  # prompt and answer agree with a, b, m
        assert TOKENIZER.decode(TOKENIZER.encode_prompt(row["prompt"])) == row["prompt"]
        assert parse_prompt(row["prompt"]).answer == row["answer"]
    assert DESIGNS[name].build(40, seed=0) == rows  # seeded
    assert DESIGNS[name].build(40, seed=1) != rows


def test_designs_build_what_they_name():
    assert {digit_lengths(r) for r in DESIGNS["layout_3plus1"].build(200, 0)} == {"3+1"}
    assert {digit_lengths(r) for r in DESIGNS["layout_1plus3"].build(200, 0)} == {"1+3"}
    assert {digit_lengths(r) for r in DESIGNS["swapped_positions"].build(200, 0)} == {"3+3"}
    assert {r["answer"] for r in DESIGNS["wrap_boundary"].build(300, 0)} == {"112", "0", "1"}
    assert all(r["a"] == r["b"] for r in DESIGNS["equal_operands"].build(200, 0))
    assert all(digit_lengths(r) == "3+3" and (r["b"] // 10) % 10 for r in DESIGNS["crossed_digits"].build(200, 0))
    pairs = wrap_boundary_pairs()
    assert sorted(pairs) == [(a, b) for a in range(1000) for b in range(1000) if a + b >= 112 and (a + b) % 113 in (112, 0, 1)]


def test_build_leaves_out_excluded_pairs_and_refuses_an_empty_design():
    rows = DESIGNS["equal_operands"].build(1000, 0, exclude={(a, a) for a in range(500)})
    assert len(rows) == 500 and min(r["a"] for r in rows) == 500
    with pytest.raises(DesignError, match="no rows left"):
        DESIGNS["equal_operands"].build(10, 0, exclude={(a, a) for a in range(1000)})
    with pytest.raises(DesignError, match="n must be >= 1"):
        DESIGNS["equal_operands"].build(0, 0)


def test_leading_zeros_are_refused_by_the_tokenizer_with_its_message():
    with pytest.raises(TokenizerError, match="no leading zeros"):
        DESIGNS["leading_zeros"].build(5, 0)
    assert zero_padded_prompt(7, 12) == "007 + 012 mod 113 ="
    assert tokenizer_verdict("007 + 012 mod 113 =").startswith("refused: malformed prompt")
    assert tokenizer_verdict("7 + 12 mod 113 =") == "accepted"
    with pytest.raises(DesignError, match="do not fit in 3 digits"):
        zero_padded_prompt(1000, 1)


def test_malformed_designs_and_predictions_are_clear_errors():
    with pytest.raises(DesignError, match="needs a judgement or the rationale"):
        Design("x", ("L0H0",), "", lambda: [(1, 2)])
    with pytest.raises(DesignError, match="names no target"):
        Design("x", (), "", lambda: [(1, 2)], rationale="r")
    with pytest.raises(DesignError, match="low <= point <= high"):
        Prediction(JUDGEMENT, 0.9, 0.95, 1.0, "r")
    with pytest.raises(DesignError, match="prediction kind"):
        Prediction("guess", 0.5, 0.4, 0.6, "r")
    with pytest.raises(DesignError, match="2 rows but 1"):
        Evidence(example_rows([(1, 2), (3, 4)]), torch.tensor([True]))
    with pytest.raises(DesignError, match="'L9X' is not a head"):
        target_components(Design("x", ("MLP3", "L9X"), "", lambda: [(1, 2)], rationale="r"))
    assert target_components(Design("x", ("MLP3", "L0H5"), "", lambda: [(1, 2)], rationale="r")) == [
        Component("mlp", 3), Component("head", 0, 5)]


def test_swapped_operand_index_swaps_the_digit_positions_and_refuses_other_layouts():
    tokens = ArithmeticSplit.from_rows(example_rows([(123, 456), (999, 100)])).tokens[:, :MODEL_INPUT_LEN]
    index = swapped_operand_index(tokens)
    # "123 + 456 mod 113 =" left-padded: <bos> pad pad 1 2 3 _ + _ 4 5 6 ...
    assert index[3:6].tolist() == [9, 10, 11] and index[9:12].tolist() == [3, 4, 5]
    untouched = [p for p in range(MODEL_INPUT_LEN) if p not in (3, 4, 5, 9, 10, 11)]
    assert index[untouched].tolist() == untouched
    mixed = ArithmeticSplit.from_rows(example_rows([(123, 456), (12, 456)])).tokens[:, :MODEL_INPUT_LEN]
    with pytest.raises(DesignError, match="one shared layout"):
        swapped_operand_index(mixed)
    uneven = ArithmeticSplit.from_rows(example_rows([(123, 4)])).tokens[:, :MODEL_INPUT_LEN]
    with pytest.raises(DesignError, match="as many digits in a as in b, got 3 and 1"):
        swapped_operand_index(uneven)


def test_wilson_interval_and_when_a_prediction_holds():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    with pytest.raises(DesignError, match="n >= 1"):
        wilson_interval(0, 0)
    prediction = Prediction(JUDGEMENT, 0.9, 0.5, 1.0, "r")
    assert prediction_holds(prediction, 90, 100)
    assert not prediction_holds(prediction, 5, 100)


def test_lookalike_prediction_reads_the_measurement():
    reference = layout_rows(3, 1)[::30] + example_rows([(123, 456), (999, 100), (500, 400)])
    design_rows = DESIGNS["layout_3plus1"].build(50, 0)
    all_right = lookalike_prediction(design_rows, evidence_for(reference), "r")
    assert all_right.kind == MEASURED and all_right.point == 0.0 and all_right.high > 0.0
    fake = evidence_for(reference, failing=lambda r: digit_lengths(r) == "3+1")  # a fake measurement
    assert lookalike_prediction(design_rows, fake, "r").point == 1.0
    assert DESIGNS["layout_3plus1"].predict(fake, design_rows).point == 1.0
    # 3+3 rows do not enter a 3+1 prediction
    assert lookalike_prediction(design_rows, evidence_for(reference, lambda r: digit_lengths(r) == "3+3"), "r").point == 0.0


def test_lookalike_prediction_falls_back_to_the_layout_then_to_all_rows():
    reference = example_rows([(150, 5), (300, 700)])  # 3+1 single_wrap, 3+3 large_wrap
    evidence = evidence_for(reference, failing=lambda r: r["a"] == 150)
    assert lookalike_prediction(example_rows([(500, 5)]), evidence, "r").point == 1.0  # same layout, other bucket
    assert lookalike_prediction(example_rows([(5, 500)]), evidence, "r").point == 0.5  # no 1+3 row: all rows
    with pytest.raises(DesignError, match="at least one design row"):
        lookalike_prediction([], evidence, "r")


def test_judgements_do_not_read_the_measurement():
    design = DESIGNS["swapped_positions"]
    rows = design.build(10, 0)
    assert design.predict(evidence_for(rows), rows) == design.predict(evidence_for(rows, lambda r: True), rows)
    assert design.predict(evidence_for(rows), rows).kind == JUDGEMENT


def test_measure_designs_scores_with_the_one_exact_match_path(arithmetic_oracle):
    oracle = arithmetic_oracle(wrong=lambda a, b, m: a == b)  # wrong exactly on equal operands
    designs = [DESIGNS[name] for name in ("layout_1plus3", "equal_operands", "leading_zeros")]
    evidence = evidence_for(layout_rows(1, 3)[::50] + example_rows([(123, 456), (500, 400), (345, 345)]))
    table = measure_designs(oracle, designs, evidence, n=30, seed=0).set_index("design")
    assert table.loc["layout_1plus3", "measured"] == 0.0 and table.loc["layout_1plus3", "holds"]
    assert table.loc["equal_operands", "measured"] == 1.0 and table.loc["equal_operands", "failures"] == 30
    assert not table.loc["equal_operands", "holds"]  # the lookalikes never fail
    assert table.loc["leading_zeros", "kind"] == REFUSED and table.loc["leading_zeros", "n"] == 0
    assert "no leading zeros" in table.loc["leading_zeros", "refusal"] and table.loc["leading_zeros", "holds"]
    predicted = predict_designs(designs, evidence, n=30, seed=0).set_index("design")
    assert (predicted["predicted"].fillna(-1) == table["predicted"].fillna(-1)).all()
    assert predicted.loc["leading_zeros", "kind"] == REFUSED and predicted.loc["equal_operands", "predicted"] == 0.0


def test_a_remapped_design_runs_under_its_hook(tiny_model):
    design = DESIGNS["swapped_positions"]
    rows = design.build(8, 0)
    tokens = ArithmeticSplit.from_rows(rows).tokens[:, :MODEL_INPUT_LEN]
    plain = tiny_model(tokens)
    with tiny_model.hooks(fwd_hooks=design.hooks(tiny_model, tokens)):
        swapped = tiny_model(tokens)
    with tiny_model.hooks(fwd_hooks=[position_remap_hook(tiny_model, torch.arange(MODEL_INPUT_LEN))]):
        identity = tiny_model(tokens)
    assert not torch.allclose(plain, swapped)
    assert torch.allclose(plain, identity)
    table = measure_designs(tiny_model, [design], evidence_for(rows), n=8)
    assert table.loc[0, "n"] == 8 and 0.0 <= table.loc[0, "measured"] <= 1.0
    assert not math.isnan(table.loc[0, "measured low"])


def test_target_effects_compares_ablation_on_the_design_and_in_distribution(tiny_model, arithmetic_oracle):
    design = Design("tiny", ("L0H1", "MLP1"), "", DESIGNS["swapped_positions"].pairs,
                    rationale="r", remap=swapped_operand_index)
    rows = design.build(6, 0)
    reference_rows = layout_rows(2, 2)[:6]
    reference = reference_activations(tiny_model, ArithmeticSplit.from_rows(reference_rows).tokens[:, :MODEL_INPUT_LEN])
    effects = target_effects(tiny_model, design, rows, reference_rows, reference)
    assert list(effects["component"]) == ["L0H1", "MLP1", "L0H1", "MLP1"]
    assert list(effects["set"]) == ["design", "design", "in-distribution", "in-distribution"]
    assert (effects["drop"] == effects["exact"] - effects["ablated"]).all()


def prompt_tokens(pairs):
    return ArithmeticSplit.from_rows(example_rows(pairs)).tokens[:, :MODEL_INPUT_LEN]


def test_crossed_and_realigned_indices_move_the_positions_they_name():
    crossed = crossed_digit_index(prompt_tokens([(123, 456), (999, 111)]))
    assert crossed[3] == 10 and crossed[10] == 3  # a's hundreds <-> b's tens
    assert (crossed[[p for p in range(MODEL_INPUT_LEN) if p not in (3, 10)]] ==
            torch.tensor([p for p in range(MODEL_INPUT_LEN) if p not in (3, 10)])).all()
    with pytest.raises(DesignError, match="needs 3 \\+ 3 prompts, got 3 \\+ 1"):
        crossed_digit_index(prompt_tokens([(123, 4)]))
    # "123 + 4 mod 113 =": <bos> pad*4 1 2 3 _ + _ 4 ...; a, " + " move one left, b stays
    realigned = realigned_a_index(prompt_tokens([(123, 4), (500, 7)]))
    assert realigned[5:11].tolist() == [4, 5, 6, 7, 8, 9] and realigned[11] == 11 and realigned[4] == 4
    with pytest.raises(DesignError, match="onto <bos>"):
        realigned_a_index(prompt_tokens([(123, 456)]), shift=-3)


def test_position_read_rows_spell_the_problem_the_positions_hold():
    rows = example_rows([(123, 456)])
    tokens = prompt_tokens([(123, 456)])
    assert position_read_rows(rows, swapped_operand_index(tokens))[0]["prompt"] == "456 + 123 mod 113 ="
    crossed = position_read_rows(rows, crossed_digit_index(tokens))[0]
    assert (crossed["a"], crossed["b"], crossed["answer"]) == (523, 416, str((523 + 416) % 113))
    assert (523 + 416) - (123 + 456) == 90 * (5 - 1)
    with pytest.raises(DesignError, match="does not permute"):
        position_read_rows(example_rows([(123, 4)]), realigned_a_index(prompt_tokens([(123, 4)])))
    with pytest.raises(DesignError, match="reads as '023 \\+ 416 mod 113 =' under the remap, which is not a prompt"):
        position_read_rows(example_rows([(123, 406)]), crossed_digit_index(prompt_tokens([(123, 406)])))
    split = position_read_split(DESIGNS["crossed_digits"], rows)
    assert TOKENIZER.decode(split.prompts[0]) == "123 + 456 mod 113 ="  # the tokens as written ...
    assert TOKENIZER.decode_answer(split.answers[0]) == crossed["answer"]  # ... the answer as read
    with pytest.raises(DesignError, match="moves no position"):
        position_read_split(DESIGNS["equal_operands"], rows)


def test_position_read_prediction_reads_the_rows_and_the_measurement():
    design = DESIGNS["crossed_digits"]
    same = example_rows([(123, 415), (456, 341)])  # b's tens digit = a's hundreds digit: the same sum
    moved = example_rows([(123, 456), (456, 321)])
    evidence = evidence_for(example_rows([(300, 400), (700, 800)]))
    assert position_read_prediction(design, evidence, same).point == 0.0
    prediction = position_read_prediction(design, evidence, same + moved)
    assert prediction.point == 0.5 and prediction.low == pytest.approx(POSITION_READ_SHARE * 0.5 * (1 - wilson_interval(0, 2)[1]))
    assert "another answer for 0.500 of the rows" in prediction.rationale
    assert position_read_prediction(design, evidence_for(evidence.rows, lambda r: True), same).point == 1.0
    assert design.predict(evidence, same + moved) == prediction



def test_knockout_effects_remove_attention_to_the_role(tiny_model, arithmetic_oracle):
    rows = layout_rows(3, 1)[:12]
    table = knockout_effects(tiny_model, rows, ["L0H1", "L1H0"]).set_index("knocked out")
    assert list(table.index) == ["none", "L0H1", "L1H0", "all"]
    assert table.loc["none", "change"] == 0.0
    assert (table["change"] == table["failure"] - table.loc["none", "failure"]).all()
    with pytest.raises(DesignError, match="'H1' is not a head name"):
        knockout_effects(tiny_model, rows, ["H1"])
    with pytest.raises(ValueError, match="do not share one token layout"):
        knockout_effects(tiny_model, example_rows([(123, 4), (12, 4)]), ["L0H1"])
    assert knockout_holds(-0.06) and not knockout_holds(-0.01) and not knockout_holds(0.2)
    assert knockout_holds(0.2, sign=1)


def test_a_hundreds_groups_rows_by_the_hundreds_digit_of_a():
    rows = example_rows([(123, 4), (145, 5), (999, 1), (7, 3)])
    assert [a_hundreds(r) for r in rows] == ["1", "1", "9", "0"]
    assert accuracy_by(rows, torch.tensor([True, False, True, True]), a_hundreds) == {"0": 1.0, "1": 0.5, "9": 1.0}
