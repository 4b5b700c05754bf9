"""The explorer benchmark's timing of one update and its summary."""
import pytest

from mechlab.apps.explore import Explorer, InputError, find_checkpoints
from mechlab.bench.explore import INTERVENTION, summarize, time_update


def test_time_update_splits_one_update_into_its_parts(repo_root):
    explorer = Explorer({"main": find_checkpoints(repo_root / "checkpoints")["main"]})
    row = time_update(explorer, "main", "999 + 1 mod 113 =", repeats=1)
    assert set(row) == {"prompt", "total_ms", "model_ms", "figures_ms", "encode_ms"}
    assert all(row[k] > 0 for k in ("total_ms", "model_ms", "figures_ms", "encode_ms"))
    with pytest.raises(InputError, match="malformed prompt"):  # not timed as if it were an update
        time_update(explorer, "main", "1 ++ 2", repeats=1)
    assert INTERVENTION["components"] == ["L0H0"]


def test_summarize_takes_medians_over_prompts():
    rows = [{"total_ms": t, "model_ms": t / 2, "figures_ms": 1.0, "encode_ms": 0.5} for t in (10.0, 30.0, 20.0)]
    summary = summarize(rows)
    assert summary["median_total_ms"] == 20.0 and summary["median_model_ms"] == 10.0
    assert summary["max_total_ms"] == 30.0 and summary["prompts"] == 3
