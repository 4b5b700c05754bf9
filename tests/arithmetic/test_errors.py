"""The error taxonomy: each category on hand-made answers, the precedence where categories
overlap, and the helpers that make answers to classify (on an oracle whose answers are known)."""
import pytest

from mechlab.arithmetic.data import Example, bucket_of
from mechlab.arithmetic.errors import (
    CATEGORIES,
    PRECEDENCE,
    classify_answer,
    classify_answers,
    model_answers,
    one_digit_moduli,
    same_answer_share,
    shifted_operand_positions,
    shuffled_answers,
    taxonomy_table,
    with_modulus,
)


def rows_of(pairs, m=113):
    return [Example(a, b, m, bucket_of(a, b, m)).to_json() for a, b in pairs]


@pytest.mark.parametrize("a, b, m, predicted, category", [
    (234, 567, 113, "10", "correct"),                  # 801 = 7 * 113 + 10
    (300, 200, 127, "48", "other modulus"),            # 500 mod 113 = 48 (mod 127 would be 119)
    (300, 200, 113, "15", "other modulus"),            # 500 mod 97 = 15
    (300, 200, 113, "161", "wrap count"),              # 48 + 113: one wrap too few
    (70, 60, 113, "130", "wrap count"),                # a + b itself, never reduced
    (300, 200, 113, "49", "one digit wrong"),
    (300, 200, 113, "8", "digit dropped or added"),    # "48" lost its first digit
    (300, 200, 113, "408", "digit dropped or added"),  # ... or gained one
    (300, 201, 113, "300", "operand copied"),
    (300, 201, 113, "201", "operand copied"),
    (300, 200, 113, "777", "other"),
    (300, 200, 113, "", "other"),
    (300, 200, 113, "4+", "other"),                    # not a number
    (300, 200, 113, "048", "digit dropped or added"),  # a leading zero is an added digit, not a wrap
])
def test_each_category_on_a_hand_made_answer(a, b, m, predicted, category):
    assert classify_answer(a, b, m, predicted) == category


def test_precedence_decides_where_categories_overlap():
    # 100 + 25 mod 127 = 125; "12" is both the mod-113 answer and "125" with a digit dropped
    assert classify_answer(100, 25, 127, "12") == "other modulus"
    assert classify_answer(100, 25, 127, "12", moduli=()) == "digit dropped or added"
    # 5 + 3 mod 113 = 8; "5" copies a and is one digit off: one digit wrong comes first
    assert classify_answer(5, 3, 113, "5") == "one digit wrong"
    # 300 + 200 mod 113 = 48; "119" (mod 127) is also one digit... no: it is other modulus before anything else
    assert classify_answer(300, 200, 113, "119") == "other modulus"
    assert classify_answer(300, 200, 113, "119", moduli=()) == "other"
    assert PRECEDENCE.split(" > ") == list(CATEGORIES)


def test_the_trained_modulus_counts_as_another_modulus_only_when_it_gives_a_different_answer():
    assert classify_answer(50, 20, 127, "70") == "correct"  # 70 < 113: both moduli agree
    assert classify_answer(150, 20, 127, "57") == "other modulus"  # 170 mod 113 = 57, mod 127 = 43


def test_taxonomy_table_counts_every_row_once_in_category_order():
    rows = rows_of([(300, 200), (300, 200), (300, 201), (60, 60)])
    table = taxonomy_table({"set": (rows, ["48", "49", "300", "999"]), "empty answers": (rows, [""] * 4)})
    assert list(table.columns) == list(CATEGORIES)
    assert table.loc["set"].to_dict() == {"correct": 1, "other modulus": 0, "wrap count": 0, "one digit wrong": 1,
                                          "digit dropped or added": 0, "operand copied": 1, "other": 1}
    assert table.loc["empty answers", "other"] == 4 and table.sum(axis=1).tolist() == [4, 4]
    with pytest.raises(ValueError, match="3 rows but 2 answers"):
        classify_answers(rows[:3], ["1", "2"])


def test_shuffled_answers_keep_the_answers_but_not_their_rows():
    rows = rows_of([(a, 2 * a) for a in range(40, 80)])
    truth = [r["answer"] for r in rows]
    shuffled = shuffled_answers(truth, seed=1)
    assert sorted(shuffled) == sorted(truth) and shuffled != truth
    assert shuffled == shuffled_answers(truth, seed=1)
    counts = taxonomy_table({"model": (rows, truth), "control": (rows, shuffled)})
    assert counts.loc["model", "correct"] == 40 > counts.loc["control", "correct"]


def test_model_answers_are_the_greedy_answers_and_with_modulus_changes_only_the_modulus(arithmetic_oracle):
    rows = rows_of([(300, 200), (1, 2), (999, 999)])
    oracle = arithmetic_oracle(wrong=lambda a, b, m: a == 1)  # answers 3 + 1 = "4" for 1 + 2
    assert model_answers(oracle, rows) == ["48", "4", "77"]
    moved = with_modulus(rows, 127)
    assert [(r["a"], r["b"], r["m"]) for r in moved] == [(300, 200, 127), (1, 2, 127), (999, 999, 127)]
    assert moved[0]["prompt"] == "300 + 200 mod 127 =" and moved[0]["answer"] == "119"
    assert model_answers(oracle, moved) == ["119", "4", "93"]
    assert same_answer_share(model_answers(oracle, rows), model_answers(oracle, moved)) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="one length"):
        same_answer_share(["1"], ["1", "2"])


def test_one_digit_moduli_change_exactly_one_digit_and_never_lead_with_zero():
    moduli = one_digit_moduli(113)
    assert len(moduli) == 8 + 9 + 9  # hundreds 2..9, tens and units: nine other digits each
    assert (100, 7, 713) in moduli and (10, 2, 123) in moduli and (1, 7, 117) in moduli
    assert all(len(str(k)) == 3 and k != 113 for _, _, k in moduli)
    assert all(sum(x != y for x, y in zip(str(k), "113")) == 1 for _, _, k in moduli)


def test_shifting_the_operands_by_one_puts_them_where_a_two_digit_modulus_puts_them():
    from mechlab.arithmetic.roles import position_slots
    from mechlab.arithmetic.task import TOKENIZER

    slots113 = position_slots(TOKENIZER.encode_prompts(["123 + 456 mod 113 ="]))[0]
    slots97 = position_slots(TOKENIZER.encode_prompts(["123 + 456 mod 97 ="]))[0]
    index = shifted_operand_positions(1)
    moved = {int(index[p]): s for p, s in enumerate(slots113) if s.startswith(("a:", "b:", "+"))}
    assert moved == {p: s for p, s in enumerate(slots97) if s.startswith(("a:", "b:", "+"))}
    assert index[0] == 0 and index[-1] == len(index) - 1  # <bos> and the answer stay
