"""Sweeps: points of a grid x seeds, trained through a study's own train, resumable, with a results table."""
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mechlab.core import sweep as sweep_module
from mechlab.core.io import LockedError, exclusive_lock, load_torch_dict
from mechlab.core.studies import get_study
from mechlab.core.sweep import (
    Sweep,
    SweepError,
    load_results,
    plot_sweep,
    points,
    run_point,
    run_sweep,
    select_points,
    write_results,
)

MODULE = "mechlab.modular.sweeps"  # registers the modular studies


def tiny_sweep(tmp_path, study="grokking_mlp", grid=None, **options) -> Sweep:
    """A quick sweep of the grokking MLP (10 steps a point) writing under tmp_path."""
    return Sweep("tiny", study, MODULE, grid={"model.d_hidden": [16, 32]} if grid is None else grid, quick=True,
                 out_dir=tmp_path / "runs", results_path=tmp_path / "results.json", **options)


def without(row: dict, *keys: str) -> dict:
    return {k: v for k, v in row.items() if k not in keys}


def last_checkpoints(sweep: Sweep) -> dict[str, tuple[int, int]]:
    """Point id -> (mtime in ns, step) of its run's last.pt."""
    paths = {point.id: sweep.run_root / point.id / "last.pt" for point in points(sweep)}
    return {pid: (path.stat().st_mtime_ns, load_torch_dict(path)["step"]) for pid, path in paths.items()}


def test_points_are_the_grid_times_the_seeds_with_readable_ids(tmp_path):
    sweep = tiny_sweep(tmp_path, grid={"model.d_hidden": [16, 32], "train.lr": [1e-3]}, seeds=(1, 2),
                       recipe={"weight_decay": 0.5})
    found = points(sweep)
    assert [p.id for p in found] == ["d_hidden=16,lr=0.001,seed=1", "d_hidden=16,lr=0.001,seed=2",
                                     "d_hidden=32,lr=0.001,seed=1", "d_hidden=32,lr=0.001,seed=2"]
    last = found[-1]
    assert (last.model_config.d_hidden, last.model_config.seed, last.model_config.d_embed) == (32, 2, 128)
    assert (last.train_config.lr, last.train_config.seed, last.train_config.weight_decay) == (1e-3, 2, 0.5)
    assert last.train_config.max_steps == get_study("grokking_mlp").recipe(quick=True).max_steps  # quick-aware


def test_a_seed_sets_the_initialisation_and_the_batch_order(tmp_path):
    """grokking_mlp_seed trains in minibatches: its task's `seed` option draws their order."""
    study = get_study("grokking_mlp_seed")
    first, second = points(tiny_sweep(tmp_path, "grokking_mlp_seed", grid={}, seeds=(0, 1)))
    assert (first.id, second.id) == ("seed=0", "seed=1")
    assert first.model_config.seed == 0 and second.model_config.seed == 1
    assert not torch.equal(study.make_task(True, seed=0).batch(0)[0], study.make_task(True, seed=1).batch(0)[0])


def test_every_study_task_takes_the_seed_a_sweep_sets():
    import inspect

    import mechlab.__main__  # noqa: F401  (registers every study)
    from mechlab.core.studies import STUDIES

    for study in STUDIES.values():
        inspect.signature(study.make_task).bind(True, seed=1)
    from mechlab.arithmetic.study import make_task
    assert "seed" in inspect.signature(make_task).parameters  # what the main study's lambda passes it to


def test_a_sweep_runs_once_and_a_rerun_trains_nothing(tmp_path, capsys):
    sweep = tiny_sweep(tmp_path)
    rows = run_sweep(sweep)
    assert [(row["id"], row["status"], row["steps"]) for row in rows] == [
        ("d_hidden=16,seed=0", "trained", 10), ("d_hidden=32,seed=0", "trained", 10)]
    assert rows[0]["parameters"] < rows[1]["parameters"] and 0 <= rows[0]["test_acc"] <= 1
    table = json.loads(sweep.table_path.read_text())
    assert table["command"] == "python -m mechlab sweep tiny --quick" and table["sweep"]["grid"] == sweep.grid
    before = last_checkpoints(sweep)

    again = run_sweep(sweep)
    assert [row["status"] for row in again] == ["skipped", "skipped"]
    assert "d_hidden=32,seed=0: skipped" in capsys.readouterr().out
    assert last_checkpoints(sweep) == before  # no checkpoint rewritten, same steps
    assert json.loads(sweep.table_path.read_text()) == table  # the same table: a re-run reproduces it
    assert load_results(sweep.table_path) == [without(row, "status", "wall_seconds") for row in again]


def test_where_runs_only_the_selected_points_and_the_table_keeps_every_row(tmp_path):
    sweep = tiny_sweep(tmp_path, seeds=(0, 1))
    rows = run_sweep(sweep, where={"d_hidden": [32], "seed": [1]})
    assert [(row["id"], row["status"]) for row in rows] == [("d_hidden=32,seed=1", "trained")]
    assert not (sweep.run_root / "d_hidden=16,seed=0").exists()

    rows = run_sweep(sweep, where={"d_hidden": [16]})  # the other points join the table
    assert [(row["id"], row["status"]) for row in rows] == [("d_hidden=16,seed=0", "trained"),
                                                            ("d_hidden=16,seed=1", "trained")]
    assert [row["id"] for row in load_results(sweep.table_path)] == [
        "d_hidden=16,seed=0", "d_hidden=16,seed=1", "d_hidden=32,seed=1"]  # in point order
    assert [row["status"] for row in run_sweep(sweep)] == ["skipped", "skipped", "trained", "skipped"]


def test_where_takes_values_as_the_point_ids_write_them(tmp_path):
    sweep = tiny_sweep(tmp_path, grid={"train.lr": [1e-3, 3e-3], "train.compile": [False, True]})
    assert [p.id for p in select_points(sweep, {"lr": ["0.001"], "compile": ["True"]})] == [
        "lr=0.001,compile=True,seed=0"]  # the text of the command line ...
    assert [p.id for p in select_points(sweep, {"lr": [0.003], "compile": [False]})] == [
        "lr=0.003,compile=False,seed=0"]  # ... or the values themselves
    with pytest.raises(SweepError, match=r"compile=1 is not among the grid's values \[False, True\]"):
        select_points(sweep, {"compile": ["1"]})  # True == 1 in Python, but not in a point id


def test_two_sweep_processes_on_different_points_keep_each_others_rows(tmp_path, monkeypatch):
    sweep = tiny_sweep(tmp_path)
    train_point = sweep_module.run_point

    def another_process_finishes_first(sweep: Sweep, point, **options) -> dict:
        if point.id == "d_hidden=32,seed=0":  # while this one trains, another adds its row
            run_sweep(sweep, where={"d_hidden": [16]})
        return train_point(sweep, point, **options)

    monkeypatch.setattr(sweep_module, "run_point", another_process_finishes_first)
    run_sweep(sweep, where={"d_hidden": [32]})  # read the table before the other row was in it
    assert [row["id"] for row in load_results(sweep.table_path)] == ["d_hidden=16,seed=0", "d_hidden=32,seed=0"]


def test_a_waiting_lock_waits_for_its_holder(tmp_path):
    events, held = [], threading.Event()

    def hold_a_moment():
        with exclusive_lock(tmp_path / "table.lock", "the table"):
            held.set()
            time.sleep(0.2)
            events.append("holder done")

    holder = threading.Thread(target=hold_a_moment)
    holder.start()
    held.wait()
    with pytest.raises(LockedError, match="the table is in use by another process"):
        with exclusive_lock(tmp_path / "table.lock", "the table"):
            pass
    with exclusive_lock(tmp_path / "table.lock", "the table", wait=True):
        events.append("waiter in")
    holder.join()
    assert events == ["holder done", "waiter in"]


def test_a_grown_sweep_keeps_its_rows_and_a_changed_recipe_drops_them(tmp_path):
    run_sweep(tiny_sweep(tmp_path, grid={"model.d_hidden": [16]}, export=True))
    shutil.rmtree(tmp_path / "runs")  # as in a fresh clone: the table and the exports only
    grown = tiny_sweep(tmp_path, grid={"model.d_hidden": [16, 32]}, seeds=(0, 1), export=True)
    rows = run_sweep(grown, where={"seed": [1]})  # a second seed and a wider grid: new points only
    assert [(row["id"], row["status"]) for row in rows] == [("d_hidden=16,seed=1", "trained"),
                                                            ("d_hidden=32,seed=1", "trained")]
    assert [row["id"] for row in load_results(grown.table_path)] == [
        "d_hidden=16,seed=0", "d_hidden=16,seed=1", "d_hidden=32,seed=1"]  # the first point's row kept

    changed = dataclasses.replace(grown, recipe={"weight_decay": 0.5}, out_dir=tmp_path / "other_runs")
    export = changed.export_root / "d_hidden=32,seed=1" / "model.pt"
    old_model = load_torch_dict(export, "model")["state_dict"]
    run_sweep(changed, where={"d_hidden": [32], "seed": [1]})  # results of another recipe are not kept
    assert [row["id"] for row in load_results(changed.table_path)] == ["d_hidden=32,seed=1"]
    new_model = load_torch_dict(export, "model")["state_dict"]  # nor is its export
    assert not all(torch.equal(old_model[name], new_model[name]) for name in old_model)


def test_where_names_a_field_or_value_the_grid_does_not_have(tmp_path):
    sweep = tiny_sweep(tmp_path)
    with pytest.raises(SweepError) as error:
        run_sweep(sweep, where={"d_hidden": [16, 64], "n_layers": [2]})
    assert "d_hidden=64 is not among the grid's values [16, 32]" in str(error.value)
    assert "'n_layers' is not a field of the grid (d_hidden, seed)" in str(error.value)
    with pytest.raises(SweepError, match="no value given for seed"):
        run_sweep(sweep, where={"seed": []})
    assert not sweep.run_root.exists()  # nothing trained


def test_an_exporting_sweep_exports_each_point_once_beside_its_table(tmp_path):
    sweep = tiny_sweep(tmp_path, grid={}, seeds=(0, 1), export=True)
    rows = run_sweep(sweep)
    exports = [tmp_path / "exports" / "seed=0", tmp_path / "exports" / "seed=1"]
    assert [row["export"] for row in rows] == [path.as_posix() for path in exports]
    model = [load_torch_dict(path / "model.pt", "model") for path in exports]
    assert [m["config"]["seed"] for m in model] == [0, 1]  # each point's own model
    mtimes = [(path / "model.pt").stat().st_mtime_ns for path in exports]
    assert [row["status"] for row in run_sweep(sweep)] == ["skipped", "skipped"]
    assert [(path / "model.pt").stat().st_mtime_ns for path in exports] == mtimes  # not exported again


def test_points_recorded_with_their_exports_are_not_retrained_without_their_runs(tmp_path):
    sweep = tiny_sweep(tmp_path, export=True)
    run_sweep(sweep)
    table = sweep.table_path.read_text()
    shutil.rmtree(sweep.run_root)  # a fresh clone: the table and the exports are committed, the runs are not
    rows = run_sweep(sweep)
    assert [row["status"] for row in rows] == ["recorded", "recorded"]
    assert not sweep.run_root.exists() and sweep.table_path.read_text() == table
    shutil.rmtree(sweep.export_root / rows[0]["id"])  # without its export, a point is trained again
    assert [row["status"] for row in run_sweep(sweep)] == ["trained", "recorded"]


def test_without_exports_a_recorded_point_is_kept_until_its_step_budget_grows(tmp_path):
    sweep = tiny_sweep(tmp_path)
    run_sweep(sweep)
    shutil.rmtree(sweep.run_root)
    assert [row["status"] for row in run_sweep(sweep)] == ["recorded", "recorded"]
    rows = load_results(sweep.table_path)
    write_results(sweep, [{**rows[0], "steps": 5}, rows[1]])  # as if recorded when the budget was 5 steps
    assert [row["status"] for row in run_sweep(sweep)] == ["trained", "recorded"]


def test_an_interrupted_point_resumes_to_the_uninterrupted_weights(tmp_path):
    """grokking_mlp_seed trains in minibatches, so the resumed run must also see the same batches."""
    interrupted = tiny_sweep(tmp_path / "a", "grokking_mlp_seed", grid={})
    uninterrupted = tiny_sweep(tmp_path / "b", "grokking_mlp_seed", grid={})
    (point,) = points(interrupted)
    assert run_point(interrupted, point, stop_after_steps=4)["status"] == "paused"
    assert not interrupted.table_path.exists()
    assert [row["status"] for row in run_sweep(interrupted)] == ["resumed"]
    assert [row["status"] for row in run_sweep(uninterrupted)] == ["trained"]
    weights = [load_torch_dict(s.run_root / point.id / "last.pt")["state_dict"] for s in (interrupted, uninterrupted)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert [without(row, "seconds") for row in load_results(interrupted.table_path)] == \
        [without(row, "seconds") for row in load_results(uninterrupted.table_path)]  # all but the wall time


def test_a_bad_sweep_names_every_mistake(tmp_path):
    with pytest.raises(SweepError) as error:
        tiny_sweep(tmp_path, grid={"model.n_layers": [1], "train.lr": [], "lr": [1e-3], "model.seed": [1],
                                   "model.p": [97]}, recipe={"nope": 1})
    for mistake in ["'model.n_layers' is not a field of the study's model config", "'train.lr' needs a non-empty list",
                    "grid key 'lr' must start with 'model.' or 'train.'", "'model.seed': seeds are set by `seeds`",
                    "'model.p' is fixed by the study's task", "recipe change 'nope' is not a TrainConfig field"]:
        assert mistake in str(error.value)
    with pytest.raises(SweepError, match="unknown study 'nostudy'.*'train.lrr' is not a field of the study's train"):
        tiny_sweep(tmp_path, "nostudy", grid={"model.width": [1], "train.lrr": [1e-3]})
    with pytest.raises(SweepError, match="lr must be > 0, got -1.0"):
        tiny_sweep(tmp_path, grid={"train.lr": [1e-3, -1.0]})


def test_the_plot_shows_one_marker_per_point(tmp_path):
    rows = [{"id": f"d_hidden={w},seed={s}", "d_hidden": w, "seed": s, "test_acc": w / 100 + s}
            for w in (16, 32) for s in (0, 1)]
    fig = plot_sweep(rows, "d_hidden", "test_acc", color="seed")
    assert [len(trace.x) for trace in fig.data] == [2, 2]
    assert [trace.name for trace in fig.data] == ["0", "1"] and fig.layout.xaxis.title.text == "d_hidden"


@pytest.mark.slow  # each spawned worker imports torch and TransformerLens: ~45 s on a loaded 2-core machine
def test_two_workers_give_the_rows_of_one(tmp_path):
    one, two = tiny_sweep(tmp_path / "one"), tiny_sweep(tmp_path / "two")
    run_sweep(one)
    rows = run_sweep(two, workers=2)
    assert [row["status"] for row in rows] == ["trained", "trained"]
    # The same rows but the wall time; the metrics to float precision (a worker computes on fewer threads).
    for row_two, row_one in zip(load_results(two.table_path), load_results(one.table_path), strict=True):
        floats = [k for k, v in row_one.items() if isinstance(v, float) and k != "seconds"]
        assert without(row_two, "seconds", *floats) == without(row_one, "seconds", *floats)
        assert [row_two[k] for k in floats] == pytest.approx([row_one[k] for k in floats], rel=1e-6)


ENDLESS_SWEEP = f"""
import signal, sys
from pathlib import Path
from mechlab.core.sweep import Sweep, run_sweep
signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the test run inherited it ignored
root = Path(sys.argv[1])
sweep = Sweep("endless", "grokking_mlp", {MODULE!r}, grid={{"model.d_hidden": [16, 32]}},
              recipe={{"max_steps": 10**9, "stop_metric": None, "checkpoint_every": 50}},
              out_dir=root / "runs", results_path=root / "results.json")
run_sweep(sweep, workers=2)
"""


def lock_is_free(path: Path) -> bool:
    try:
        with exclusive_lock(path, "run"):
            return True
    except LockedError:
        return False


@pytest.mark.slow  # spawns two workers, each importing torch and TransformerLens
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_the_workers_of_a_stopped_sweep_save_their_steps_and_stop_too(tmp_path, stop):
    sweep = subprocess.Popen([sys.executable, "-c", ENDLESS_SWEEP, str(tmp_path)], env=os.environ.copy(),
                             stderr=subprocess.PIPE, text=True)
    runs = [tmp_path / "runs" / point for point in ("d_hidden=16,seed=0", "d_hidden=32,seed=0")]
    try:
        deadline = time.time() + 300
        while not all((run / "last.pt").exists() for run in runs):  # both workers are training
            assert sweep.poll() is None and time.time() < deadline, "the sweep ended before it could be stopped"
            time.sleep(0.1)
        assert not any(lock_is_free(run / "train.lock") for run in runs)
        sweep.send_signal(getattr(signal, stop))  # the sweep process only: no worker may outlive it
        _, errors = sweep.communicate(timeout=120)  # to the end of stderr, which the workers share
    finally:
        sweep.kill()
    assert sweep.returncode != 0
    assert ("stopping the sweep's 2 workers" in errors) == (stop != "SIGKILL")  # a killed sweep says nothing
    saved = re.findall(r"(\S+): stopped at step (\d+), saved; .*\(stopped by SIGTERM\)", errors)
    assert sorted(Path(run).name for run, _ in saved) == [run.name for run in runs], errors
    for run, step in saved:  # each worker saved the step it was at, and left its run folder
        assert load_torch_dict(Path(run) / "last.pt")["step"] == int(step)
        assert lock_is_free(Path(run) / "train.lock")


def test_a_sweep_on_ray_without_ray_says_how_to_install_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed")
    with pytest.raises(SweepError, match=r'^running a sweep on a Ray cluster needs ray: pip install "mechlab\[ray\]"$'):
        run_sweep(tiny_sweep(tmp_path), address="ray://nowhere:10001")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # starting a local Ray instance takes about a minute
def test_a_sweep_runs_on_a_local_ray_instance(tmp_path):
    ray = pytest.importorskip("ray")
    sweep = tiny_sweep(tmp_path)
    try:
        rows = run_sweep(sweep, address="local")
    finally:
        ray.shutdown()
    assert [row["status"] for row in rows] == ["trained", "trained"]
    assert [row["id"] for row in load_results(sweep.table_path)] == ["d_hidden=16,seed=0", "d_hidden=32,seed=0"]
