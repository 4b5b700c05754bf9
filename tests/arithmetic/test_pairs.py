"""Clean/corrupted arithmetic pairs, their normalized metrics and the modulo-head rule."""
import pytest
import torch

from mechlab.arithmetic.data import MAX_OPERAND, MODULUS
from mechlab.arithmetic.pairs import (
    ANSWER_POSITIONS,
    PAIR_KINDS,
    ExactMatchMetric,
    make_metrics,
    make_pairs,
    modulo_head_candidate,
)
from mechlab.arithmetic.tokenizer import EQUALS_POS, MODEL_INPUT_LEN, VOCAB


@pytest.mark.parametrize("kind", PAIR_KINDS)
def test_pairs_change_one_variable_and_keep_layout(kind, mixed_rows):
    pairs = make_pairs(mixed_rows, kind, 20, seed=0)
    assert len(pairs) > 0
    for c, r in zip(pairs.clean.rows, pairs.corrupted.rows):
        assert c["b"] == r["b"] if kind in ("a", "wrap") else c["a"] == r["a"]
        assert len(str(c["a"])) == len(str(r["a"])) and len(str(c["b"])) == len(str(r["b"]))
        assert r["a"] <= MAX_OPERAND and r["b"] <= MAX_OPERAND
        assert len(c["answer"]) == len(r["answer"]) and c["answer"][0] != r["answer"][0]
        k_clean, k_corr = (c["a"] + c["b"]) // MODULUS, (r["a"] + r["b"]) // MODULUS
        if kind == "wrap":
            assert {k_clean, k_corr} == {0, 1}
        else:
            assert k_clean == k_corr
    # same layout: only operand digits differ; the clean answer is appended to both
    same = pairs.clean_tokens == pairs.corrupted_tokens
    assert same[:, EQUALS_POS:].all() and same[:, 0].all()


def test_pairs_keep_one_layout_and_refuse_impossible_requests(mixed_rows):
    pairs = make_pairs(mixed_rows, "a", 50, seed=0, digits=(3, 2))
    assert {(len(str(r["a"])), len(str(r["b"]))) for r in pairs.clean.rows} == {(3, 2)}
    with pytest.raises(ValueError, match="unknown pair kind 'c'"):
        make_pairs(mixed_rows, "c", 5)
    with pytest.raises(ValueError, match="no valid 'a' pairs"):
        make_pairs(mixed_rows, "a", 5, digits=(4, 4))


def test_metrics_are_normalized(tiny_model, mixed_rows):
    pairs = make_pairs(mixed_rows, "a", 3, seed=1)
    metric = make_metrics(tiny_model, pairs)["logit_diff"]
    with torch.no_grad():
        assert metric(tiny_model(pairs.clean_tokens)).item() == pytest.approx(1.0)
        assert metric(tiny_model(pairs.corrupted_tokens)).item() == pytest.approx(0.0, abs=1e-9)


def test_exact_match_scores_the_whole_answer(mixed_rows):
    pairs = make_pairs(mixed_rows, "a", 3, seed=1)
    em = ExactMatchMetric(pairs.clean_answers)
    perfect = torch.full((len(pairs), MODEL_INPUT_LEN, len(VOCAB)), -10.0, dtype=torch.float64)
    answers = pairs.clean_answers
    for i, pos in enumerate(ANSWER_POSITIONS):
        perfect[torch.arange(len(pairs)), pos, answers[:, i]] = 10.0
    assert em.raw(perfect[:, ANSWER_POSITIONS]).item() == 1.0
    perfect[0, ANSWER_POSITIONS[0]] = perfect[0, ANSWER_POSITIONS[0]].roll(1)  # first pair: wrong first digit
    assert em.raw(perfect[:, ANSWER_POSITIONS]).item() == pytest.approx(2 / 3)


def test_modulo_head_candidate_by_hand():
    a = torch.tensor([[0.50, 0.00], [0.02, 0.10]])
    wrap = torch.tensor([[0.55, 0.15], [0.03, 0.12]])  # L0H1 gains 0.15 on wrap pairs, restores 0.15
    assert modulo_head_candidate(wrap, a) == (1, True)
    assert modulo_head_candidate(wrap, a, min_effect=0.2) == (1, False)
    no_gain = torch.tensor([[0.55, 0.05], [0.03, 0.12]])  # largest gain 0.05: too small
    assert modulo_head_candidate(no_gain, a)[1] is False
