"""The arithmetic task's scoring, checked on a model whose answers are known (an oracle that is
right, or wrong on a chosen set of rows), so broken scoring fails these tests."""
import pytest
import torch

from mechlab.arithmetic.data import Example, bucket_of
from mechlab.arithmetic.task import (
    TOKENIZER,
    ArithmeticSplit,
    evaluate_split,
    exact_match,
    greedy_answers,
    predicted_answers,
)


def split_of(pairs, m=113):
    return ArithmeticSplit.from_rows([Example(a, b, m, bucket_of(a, b, m)).to_json() for a, b in pairs])


PAIRS = [(1, 2), (234, 567), (999, 999), (56, 7), (100, 12), (13, 100), (7, 0), (500, 499)]


def test_a_perfect_model_scores_one_greedy_and_teacher_forced(arithmetic_oracle):
    split = split_of(PAIRS)
    oracle = arithmetic_oracle()
    assert exact_match(oracle, split).all()
    metrics = evaluate_split(oracle, split, "test")
    assert metrics["test_exact"] == 1.0
    assert all(v == 1.0 for k, v in metrics.items() if k.startswith("test_exact/"))


def test_exact_match_counts_exactly_the_rows_a_model_gets_wrong(arithmetic_oracle):
    split = split_of(PAIRS)
    oracle = arithmetic_oracle(wrong=lambda a, b, m: a % 2 == 1)  # (1, 2), (999, 999), (13, 100), (7, 0)
    assert exact_match(oracle, split).tolist() == [False, True, False, True, True, False, False, True]
    generated = greedy_answers(oracle, split.prompts)
    assert generated.shape == (len(PAIRS), split.answers.shape[1])


def test_teacher_forced_exact_match_equals_greedy_decoding_on_a_model_that_is_partly_right(arithmetic_oracle):
    split = split_of(PAIRS + [(a, 3 * a % 1000) for a in range(20, 60)])
    oracle = arithmetic_oracle(wrong=lambda a, b, m: (a + b) % 3 == 0)
    decoded = [TOKENIZER.decode_answer(ids) for ids in greedy_answers(oracle, split.prompts)]  # every row, token by token
    greedy_right = torch.tensor([d == r["answer"] for d, r in zip(decoded, split.rows)])
    assert 0.3 < greedy_right.float().mean() < 0.9  # neither all right nor all wrong: the comparison means something
    assert torch.equal(exact_match(oracle, split), greedy_right)
    assert evaluate_split(oracle, split, "x")["x_exact"] == pytest.approx(greedy_right.float().mean().item())
    assert predicted_answers(oracle, split) == decoded  # only the wrong rows were decoded


def test_per_bucket_exact_match_is_the_mean_over_that_bucket(arithmetic_oracle):
    split = split_of(PAIRS)
    oracle = arithmetic_oracle(wrong=lambda a, b, m: bucket_of(a, b, m) == "large_wrap")
    metrics = evaluate_split(oracle, split, "test")
    buckets = [row["bucket"] for row in split.rows]
    assert metrics["test_exact/large_wrap"] == 0.0
    assert metrics["test_exact"] == pytest.approx(1 - buckets.count("large_wrap") / len(buckets))
    assert all(metrics[f"test_exact/{b}"] == 1.0 for b in set(buckets) - {"large_wrap"})
