"""Run-level helpers: first_reaching on a metrics history, export and series round trip."""
from __future__ import annotations

import json

import pytest
import torch

from mechlab.core.runs import evenly_spaced, export_run, first_reaching, load_series

HISTORY = [{"step": 0, "acc": 0.1, "loss": 3.0}, {"step": 10, "loss": 2.0},
           {"step": 20, "acc": 0.5, "loss": 0.9}, {"step": 30, "acc": 0.99, "loss": 1.5}]


def test_first_reaching_returns_the_first_row_at_or_past_the_target():
    assert first_reaching(HISTORY, "acc", 0.5)["step"] == 20  # >= counts
    assert first_reaching(HISTORY, "acc", 0.0)["step"] == 0
    assert first_reaching(HISTORY, "acc", 1.0) is None
    assert first_reaching([], "acc", 0.5) is None


def test_first_reaching_below_skips_rows_without_the_metric():
    assert first_reaching(HISTORY, "loss", 1.0, below=True)["step"] == 20
    assert first_reaching(HISTORY, "loss", 0.9, below=True) is None  # strictly below
    assert first_reaching(HISTORY, "acc", 0.2, below=True)["step"] == 0


def test_evenly_spaced_keeps_both_ends():
    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly_spaced([1, 2], 8) == [1, 2]


def test_export_writes_the_committed_layout_and_the_series_reads_back(tiny_config, tiny_model, tmp_path):
    from mechlab.core.io import torch_save_atomic, write_json_atomic

    run = tmp_path / "run"
    run.mkdir()
    for step in (5, 10, 15):
        torch_save_atomic(run / f"step_{step:06d}.pt", {"step": step, "state_dict": tiny_model.state_dict()})
    torch_save_atomic(run / "last.pt", {"step": 15, "seconds": 1.5, "state_dict": tiny_model.state_dict(),
                                        "history": [{"step": 15, "seconds": 1.5}], "train_config": {"max_steps": 15}})
    write_json_atomic(run / "metrics.json", [{"step": 10, "seconds": 1.0}])  # stale: a crash came before its update
    path = export_run(run, tmp_path / "out", tiny_config, n_series=2)
    assert sorted(p.name for p in path.parent.iterdir()) == ["checksums.json", "config.json", "metrics.json", "model.pt",
                                                            "series.pt", "train_config.json"]
    assert json.loads((tmp_path / "out" / "train_config.json").read_text()) == {"max_steps": 15}
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == [{"step": 15, "seconds": 1.5}]
    series = load_series(tmp_path / "out" / "series.pt", tiny_config)
    assert [step for step, _ in series] == [5, 15]
    weight = next(iter(tiny_model.state_dict()))
    torch.testing.assert_close(series[-1][1].state_dict()[weight].double(),
                               tiny_model.state_dict()[weight].half().double())  # stored as float16
    with pytest.raises(FileNotFoundError, match="no checkpoint file at .*no_run/last.pt"):
        export_run(tmp_path / "no_run", tmp_path / "out2", tiny_config)
