"""The patching benchmark's timing helpers on the tiny model."""
import pytest

from mechlab.analysis.patching import run_cache
from mechlab.arithmetic.data import MODULUS, Example, bucket_of
from mechlab.arithmetic.pairs import first_digit_metric, make_pairs
from mechlab.bench.patching import best_time, time_against_tl


def test_best_time_keeps_the_fastest_run_and_the_last_result():
    calls = []
    seconds, out = best_time(lambda: calls.append(1) or len(calls), repeats=3)
    assert out == 3 and len(calls) == 3 and 0 <= seconds < 1


def test_time_against_tl_reports_agreement(tiny_model, tiny_config):
    rows = [Example(a, b, MODULUS, bucket_of(a, b)).to_json() for a in (150, 234, 431) for b in (313, 640)]
    pairs = make_pairs(rows, "a", 2, seed=0)
    metric = first_digit_metric(pairs)  # raw units
    _, clean_cache = run_cache(tiny_model, pairs.clean_tokens)
    row = time_against_tl(tiny_model, pairs.corrupted_tokens, clean_cache, metric, "z_all_pos")
    assert set(row) == {"patches", "tl_seconds", "batched_seconds", "speedup", "max_abs_diff"}
    assert row["patches"] == tiny_config.n_layers * tiny_config.n_heads
    assert row["max_abs_diff"] < 1e-6
    assert row["speedup"] == pytest.approx(row["tl_seconds"] / row["batched_seconds"])
