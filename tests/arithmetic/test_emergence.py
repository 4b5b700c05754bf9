"""Emergence during training: planted series for the onset rules and the verdict, a tiny model for the
measurements, and a quick run of the study exported with its series and measurements."""
import dataclasses
import json

import pandas as pd
import pytest

from mechlab.arithmetic.emergence import (
    EMERGENCE,
    MEASURES,
    ProbeData,
    accuracy_jump,
    attention_after_jump_verdict,
    load_measures,
    measure_run,
    onsets,
    snapshot_measures,
    timing_against_jump,
    with_shares_lost,
)
from mechlab.arithmetic.sweeps import MAIN_SEEDS
from mechlab.arithmetic.task import ArithmeticSplit
from mechlab.core.model import build_model
from mechlab.core.runs import load_series
from mechlab.core.sweep import points

STEPS = [500, 1000, 1500, 2000, 2500, 3000]
PLATEAU_HISTORY = [{"step": s, "val_exact": v} for s, v in zip(STEPS, [0.02, 0.3, 0.32, 0.3, 0.9, 0.99])]  # exit 2,000 -> 2,500


def measured(**columns) -> pd.DataFrame:
    return pd.DataFrame({"step": STEPS, **columns})


def test_the_onset_is_half_way_to_the_extreme_in_the_direction_moved():
    order = onsets(measured(a_mass=[0.0, 0.1, 0.2, 0.6, 0.9, 1.0], mlp_share=[1.0, 0.9, 0.4, 0.2, 0.1, 0.0],
                            b_mass=[0.3, 0.31, 0.29, 0.3, 0.32, 0.3]), ["a_mass", "mlp_share", "b_mass"]).set_index("measure")
    assert order.loc["a_mass", "onset"] == 2000 and order.loc["mlp_share", "onset"] == 1500  # a falling measurement too
    assert pd.isna(order.loc["b_mass", "onset"])  # moved less than MIN_CHANGE: no onset
    assert list(order.index) == ["mlp_share", "a_mass", "b_mass"]  # by onset, none last


def test_the_steepest_interval_and_its_share_of_the_way():
    order = onsets(measured(a_mass=[0.0, 0.1, 0.2, 0.8, 0.9, 1.0], role_heads=[4, 4, 4, 1, 0, 0]), ["a_mass", "role_heads"])
    steepest = order.set_index("measure")[["steepest_from", "steepest_to", "steepest_share"]]
    assert steepest.loc["a_mass"].tolist() == [1500, 2000, pytest.approx(0.6)]
    assert steepest.loc["role_heads"].tolist() == [1500, 2000, pytest.approx(0.75)]


def test_onsets_are_placed_before_at_or_after_the_accuracy_jump():
    table = measured(a_mass=[0.1, 0.4, 0.5, 0.5, 0.5, 0.5],  # formed during the plateau
                     test_exact=[0.0, 0.3, 0.3, 0.3, 0.9, 1.0],
                     mlp_share=[0.0, 0.0, 0.0, 0.0, 0.1, 0.8],  # after the jump
                     b_mass=[0.2] * 6)  # never moved
    timed, jump = timing_against_jump(onsets(table, ["mlp_share", "a_mass", "test_exact", "b_mass"]), PLATEAU_HISTORY)
    assert (jump["from_step"], jump["to_step"], jump["plateau_exit"]) == (2000, 2500, True)
    assert timed.set_index("measure")["when"].to_dict() == {"a_mass": "before", "test_exact": "at", "mlp_share": "after",
                                                            "b_mass": "no change"}


def test_a_steady_climb_has_a_jump_but_no_plateau_exit():
    steady = [{"step": s, "val_exact": v} for s, v in zip(STEPS, [0.1, 0.3, 0.45, 0.6, 0.8, 0.95])]
    assert accuracy_jump(steady) == {"from_step": 2000, "to_step": 2500, "before": 0.6, "after": 0.8, "plateau_exit": False}


def timed(when, onset=(1000, 2500)):
    return pd.DataFrame({"measure": ["a_mass", "b_mass"], "onset": pd.array(onset, dtype="Int64"), "when": when,
                         "steepest_from": [500, 2000], "steepest_to": [1000, 2500], "steepest_share": [0.4, 0.9]})


def test_the_seeds_attention_claim_fails_when_a_reader_forms_before_the_jump():
    verdict, evidence = attention_after_jump_verdict(timed(["before", "at"]))
    assert verdict == "failed" and "a_mass onset step 1,000 (before the jump), 40% of its change in steps 500-1,000" in evidence
    assert attention_after_jump_verdict(timed(["at", "at"]))[0] == "held"
    assert attention_after_jump_verdict(timed(["at", "after"]))[0] == "partial"
    assert attention_after_jump_verdict(timed(["at", "no change"], onset=(2500, None)))[0] == "untested"


def test_a_model_is_measured_on_every_measure(tiny_config, mixed_rows):
    split = ArithmeticSplit.from_rows(mixed_rows)
    data = ProbeData(split, split, mixed_rows, n_prompts=len(mixed_rows))
    measures = snapshot_measures(build_model(tiny_config, "cpu"), data)
    assert set(measures) == set(MEASURES)
    assert all(0 <= measures[k] <= 1 for k in ("test_exact", "a_mass", "b_mass", "residue_acc"))
    assert 0 <= measures["role_heads"] <= 4  # 2 layers x 2 heads


def test_the_study_is_the_replication_sweeps_first_run():
    """`emergence export --run-dir runs/sweeps/main_seeds/seed=1` exports the same run the study trains."""
    seed1 = points(MAIN_SEEDS)[0]
    assert (EMERGENCE.train_config, EMERGENCE.model_config) == (seed1.train_config, seed1.model_config)
    assert EMERGENCE.train_config.snapshot_every in (None, 500) and EMERGENCE.train_config.checkpoint_every == 500


def test_a_quick_run_exports_its_series_and_their_measurements(tmp_path, generated_data, monkeypatch):
    (tmp_path / "data").symlink_to(generated_data[0])
    monkeypatch.chdir(tmp_path)  # the export measures on data/
    quick = dataclasses.replace(EMERGENCE, train_config=dataclasses.replace(EMERGENCE.train_config, compile=False))
    quick.train(tmp_path / "run", quick=True, progress=False, data_dir=generated_data[0])
    quick.export(tmp_path / "run", tmp_path / "ck", quick=True)
    table = load_measures(tmp_path / "ck" / "emergence.json")
    half = quick.recipe(quick=True).snapshot_every
    assert table["step"].tolist() == [half, 2 * half] and set(MEASURES) <= set(table.columns)  # a snapshot every half
    assert [step for step, _ in load_series(tmp_path / "ck" / "series.pt", EMERGENCE.model_config)] == [half, 2 * half]
    assert json.loads((tmp_path / "ck" / "study.json").read_text())["name"] == "emergence"
    with pytest.raises(FileNotFoundError, match="no step_.*snapshots"):
        measure_run(tmp_path / "ck", EMERGENCE.model_config, generated_data[0])


def test_a_readers_share_of_the_accuracy_it_removes():
    table = with_shares_lost(measured(test_exact=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], a_drop=[0.0, 0.18, 0.36, 0.5, 0.7, 0.9],
                                      b_drop=[0.0] * 6))
    assert table["a_share_lost"].round(3).tolist() == [0.0, 0.9, 0.9, 0.833, 0.875, 0.9]
    assert onsets(table, ["a_share_lost", "a_drop"]).set_index("measure")["onset"].to_dict() == {"a_share_lost": 1000, "a_drop": 2000}
