"""Declarative sweeps: a grid over model and recipe fields x seeds of one registered study, trained by
a resumable runner through the study's own `train` (the one training loop), with a results table.

    python -m mechlab sweep NAME [--quick] [--workers N] [--address ray://HOST:10001] [--where FIELD=VALUE ...]

A `Sweep` names a study, a grid (`{"model.n_layers": [1, 2], "train.lr": [1e-3, 3e-3]}`: fields of the
study's model config and of its `TrainConfig`), seeds, and recipe changes applied to every point. Each
point (grid value combination x seed) trains into its own run folder with the study's machinery, so
a finished point is skipped by the loop's own record (training a finished run is a no-op) and an
interrupted one resumes from its last checkpoint, exactly as the uninterrupted run would have gone.

A point's seed sets three things: the model's initialisation (`model.seed`), the order of the
training batches (the study task's `seed` option) and `train.seed` (the seed of torch's global
generator in the training loop, which no task draws from today; recorded with the run). It does not
change the data sets (the main study's files) or a modular study's train/test split (`split_seed`).

Where things go:
    runs/sweeps/<name>/<point id>/   each point's training run (git-ignored, like every run under runs/)
    checkpoints/sweeps/<name>.json   the results table, committed beside the exported models: the sweep's
                                     definition, the command that reproduces it, one row per point
    checkpoints/sweeps/<name>/<point id>/   with `export=True`: each finished point exported by the
                                     study's own `export` (model.pt, metrics.json, ...), so analyses
                                     such as the replication table read committed models, not runs
A quick sweep (`--quick`: each point a quick run) trains into runs/sweeps/<name>/quick/ and writes its
table (and exports, under exports/) there, so it never overwrites the committed ones.

`--where n_layers=3 n_layers=4` runs only the points with those grid values, written as the point ids
write them (one field's values are alternatives; different fields must all match); the table keeps
every point's row. Two sweep processes may run different points of one sweep at once (`--where
seed=0` and `--where seed=1`): each re-reads the table under a lock (runs/sweeps/<name>/results.lock)
before it adds a row, so neither loses the other's.

Points run one after another in this process by default; `workers=N` runs N local processes (a worker
whose sweep process ends, however it ends, stops too: it saves its step and exits), and
`address=` runs each point as a Ray core task on that cluster (`pip install "mechlab[ray]"`; every
node needs mechlab installed and the repository at the same path, e.g. one machine or a shared
filesystem: a task runs in the driver's working directory and writes its run folder there).
"""
from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from mechlab.core.io import exclusive_lock, write_json_atomic
from mechlab.core.model import build, count_parameters
from mechlab.core.studies import STUDIES, Study
from mechlab.core.train import InvalidRecipeError, TrainConfig

RUNS_DIR = Path("runs/sweeps")
RESULTS_DIR = Path("checkpoints/sweeps")
# Model fields the task is built from (changing them would need another task) and the seed, which `seeds` sets.
FIXED_MODEL_FIELDS = ("vocab", "d_vocab", "n_ctx", "p", "seed")
# Keys of a row that describe one call of the runner, not the result: left out of the results table.
CALL_KEYS = ("status", "wall_seconds")
ALREADY_FINISHED = "already finished: "  # how core.train reports a finished run it did not train


class SweepError(ValueError):
    """A sweep that cannot run; the message lists everything wrong with it."""


@dataclass(frozen=True)
class Sweep:
    """A grid over `model.<field>` / `train.<field>` values x `seeds` of registered study `study`.

    module: the module whose import registers the study (every worker process imports it).
    recipe: TrainConfig changes applied to every point (before the grid's `train.` values).
    export: export each finished point with the study's `export` (into `export_root`/<point id>).
    out_dir: the run folders (default runs/sweeps/<name>); results_path: the results table
    (default checkpoints/sweeps/<name>.json, or <out_dir>/quick/results.json for a quick sweep).
    """
    name: str
    study: str
    module: str
    grid: dict[str, list] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    recipe: dict[str, Any] = field(default_factory=dict)
    export: bool = False
    quick: bool = False
    out_dir: Path | None = None
    results_path: Path | None = None

    def __post_init__(self) -> None:
        problems = sweep_problems(self)
        if problems:
            raise SweepError(f"invalid sweep {self.name!r}: " + "; ".join(problems))

    @property
    def run_root(self) -> Path:
        """The folder holding one run folder per point."""
        root = Path(self.out_dir) if self.out_dir is not None else RUNS_DIR / self.name
        return root / "quick" if self.quick else root

    @property
    def table_path(self) -> Path:
        """The results table's path."""
        if self.results_path is not None:
            return Path(self.results_path)
        return self.run_root / "results.json" if self.quick else RESULTS_DIR / f"{self.name}.json"

    @property
    def export_root(self) -> Path:
        """The folder holding one exported model per finished point (with `export=True`): beside the
        results table, in a folder named like it without ".json"."""
        return self.table_path.parent / ("exports" if self.quick else self.table_path.stem)

    @property
    def command(self) -> str:
        """The command line that runs this (registered) sweep."""
        return f"python -m mechlab sweep {self.name}" + (" --quick" if self.quick else "")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "study": self.study, "module": self.module, "grid": self.grid,
                "seeds": list(self.seeds), "recipe": self.recipe, "export": self.export, "quick": self.quick,
                "runs": str(self.run_root)}


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its grid values (key -> value), seed, model config and recipe."""
    id: str
    values: dict[str, Any]
    seed: int
    model_config: Any
    train_config: TrainConfig


def short_name(key: str) -> str:
    """The field name of grid key `key` ("model.n_layers" -> "n_layers")."""
    return key.split(".", 1)[1]


def sweep_problems(sweep: Sweep) -> list[str]:
    """Everything wrong with `sweep`: its study, grid keys and values, recipe and seeds."""
    problems = []
    try:
        importlib.import_module(sweep.module)
    except ImportError as error:
        problems.append(f"module {sweep.module!r} cannot be imported ({error})")
    study = STUDIES.get(sweep.study)
    if study is None:
        problems.append(f"unknown study {sweep.study!r} (registered: {', '.join(sorted(STUDIES)) or 'none'})")
    fields = {"model": {f.name for f in dataclasses.fields(study.model_config)} if study else None,
              "train": {f.name for f in dataclasses.fields(TrainConfig)}}
    for key, values in sweep.grid.items():
        part, _, name = key.partition(".")
        if part not in fields:
            problems.append(f"grid key {key!r} must start with 'model.' or 'train.'")
        elif fields[part] is not None and name not in fields[part]:  # (None: an unknown study's model)
            problems.append(f"{key!r} is not a field of the study's {part} config ({', '.join(sorted(fields[part]))})")
        elif name == "seed":
            problems.append(f"{key!r}: seeds are set by `seeds`")
        elif part == "model" and name in FIXED_MODEL_FIELDS:
            problems.append(f"{key!r} is fixed by the study's task")
        if not isinstance(values, (list, tuple)) or not values:
            problems.append(f"{key!r} needs a non-empty list of values, got {values!r}")
        elif len(set(map(repr, values))) < len(values):
            problems.append(f"{key!r} repeats a value: {values!r}")
    for name in sweep.recipe:
        if name not in fields["train"] or name == "seed":
            problems.append(f"recipe change {name!r} is not a TrainConfig field other than seed")
    if not sweep.seeds or len(set(sweep.seeds)) < len(sweep.seeds):
        problems.append(f"seeds must be distinct and at least one, got {tuple(sweep.seeds)!r}")
    if not problems:  # the grid is well formed: does every point's recipe run?
        problems = sorted({str(error) for error in _recipe_errors(sweep, study)})
    return problems


def _recipe_errors(sweep: Sweep, study: Study) -> Iterator[InvalidRecipeError]:
    """The InvalidRecipeError of each grid point whose recipe cannot run."""
    for values in itertools.product(*sweep.grid.values()):
        try:
            point_recipe(sweep, study, dict(zip(sweep.grid, values)), sweep.seeds[0])
        except InvalidRecipeError as error:
            yield error


def point_recipe(sweep: Sweep, study: Study, values: dict[str, Any], seed: int) -> TrainConfig:
    """The recipe of one point: the study's, with the sweep's recipe changes (quick-aware, as
    `Study.recipe`), the point's `train.` values and its seed."""
    base = dataclasses.replace(study, train_config=dataclasses.replace(study.train_config, **sweep.recipe))
    changes = {short_name(k): v for k, v in values.items() if k.startswith("train.")}
    return dataclasses.replace(base.recipe(sweep.quick), **changes, seed=seed)


def point_id(values: dict[str, Any], seed: int) -> str:
    """"n_layers=2,d_model=64,seed=1": the point's run folder and row id."""
    return ",".join([*(f"{short_name(k)}={id_text(v)}" for k, v in values.items()), f"seed={seed}"])


def id_text(value: Any) -> str:
    """A grid value as a point id writes it: 0.001, True, (0.9,0.98)."""
    return str(value).replace(" ", "")


def points(sweep: Sweep) -> list[Point]:
    """Every point of `sweep`: the grid's cartesian product (in the grid's order) x seeds."""
    study = STUDIES[sweep.study]
    result = []
    for combination in itertools.product(*sweep.grid.values()):
        values = dict(zip(sweep.grid, combination))
        model_changes = {short_name(k): v for k, v in values.items() if k.startswith("model.")}
        for seed in sweep.seeds:
            result.append(Point(point_id(values, seed), values, seed,
                                dataclasses.replace(study.model_config, **model_changes, seed=seed),
                                point_recipe(sweep, study, values, seed)))
    return result


def run_point(sweep: Sweep, point: Point, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train (or resume, or skip if finished) `point` into run_root/<point id> with the study's own
    `train`, and return its results row: the grid values, seed, parameter count, steps, training
    seconds (to the last evaluation, as the run records them, so a skipped point gives the same row),
    why it stopped and the final evaluation's metrics (the last row of the run's history), plus this
    call's `status` ("trained", "resumed", "skipped"; "paused" at `stop_after_steps`) and `wall_seconds`.
    With `sweep.export`, a finished point is exported to export_root/<point id>, named in the row: once
    when it finishes (replacing an export left there by an earlier recipe), not again when skipped."""
    start = time.perf_counter()
    study = dataclasses.replace(STUDIES[sweep.study], model_config=point.model_config)
    run_dir = sweep.run_root / point.id
    had_run = (run_dir / "last.pt").exists()
    result = study.train(run_dir, sweep.quick, progress=False, stop_after_steps=stop_after_steps,
                         recipe_changes=dataclasses.asdict(point.train_config), seed=point.seed)
    skipped = result.stopped_because.startswith(ALREADY_FINISHED)
    status = ("skipped" if skipped else "paused" if result.stopped_because == "interrupted"
              else "resumed" if had_run else "trained")
    final = result.history[-1] if result.history else {}
    exported = {}
    if sweep.export and status != "paused":
        out_dir = sweep.export_root / point.id
        if status != "skipped" or not (out_dir / "model.pt").exists():  # (a point trained now replaces an old export)
            study.export(run_dir, out_dir, sweep.quick)
        exported = {"export": out_dir.as_posix()}
    return {"id": point.id, **point_fields(point),
            "parameters": count_parameters(build(point.model_config, "cpu")), "steps": result.steps,
            "seconds": round(final.get("seconds", result.seconds), 2),
            "stopped_because": result.stopped_because.removeprefix(ALREADY_FINISHED),
            **{k: v for k, v in final.items() if k not in ("step", "lr", "seconds") and "/" not in k},
            **exported, "status": status, "wall_seconds": round(time.perf_counter() - start, 2)}


def select_points(sweep: Sweep, where: dict[str, list] | None) -> list[Point]:
    """The points of `sweep` whose grid values (by short name) and seed are among `where`'s, compared
    as the point ids write them, so {"n_layers": [3, 4]} and {"n_layers": ["3", "4"]} (as the command
    line gives them) both keep the 3- and 4-layer points, and {"n_layers": [3], "n_heads": [2]} the one
    with both. None keeps them all; a field or value the grid does not have is a SweepError."""
    every = points(sweep)
    if where is None:
        return every
    grid = {**{short_name(k): [id_text(v) for v in values] for k, values in sweep.grid.items()},
            "seed": [id_text(seed) for seed in sweep.seeds]}
    wanted = {name: [id_text(v) for v in values] for name, values in where.items()}
    problems = [f"{name!r} is not a field of the grid ({', '.join(grid)})" for name in wanted if name not in grid]
    problems += [f"no value given for {name}" for name, values in wanted.items() if not values]
    problems += [f"{name}={value} is not among the grid's values [{', '.join(grid[name])}]"
                 for name, values in wanted.items() if name in grid for value in values if value not in grid[name]]
    if problems:
        raise SweepError("cannot select points: " + "; ".join(problems))
    return [p for p in every if all(id_text(point_fields(p)[name]) in values for name, values in wanted.items())]


def point_fields(point: Point) -> dict[str, Any]:
    """The point's grid values by short name, and its seed: {"n_layers": 3, "n_heads": 2, "seed": 0}."""
    return {**{short_name(k): v for k, v in point.values.items()}, "seed": point.seed}


def run_sweep(sweep: Sweep, address: str | None = None, workers: int = 1,
              where: dict[str, list] | None = None) -> list[dict[str, Any]]:
    """Run every point of `sweep` (or those `where` selects, see `select_points`; finished ones are
    skipped, interrupted ones resumed) and return their rows in point order. Local by default: in
    this process, or `workers` spawned processes (torch threads: the cores shared out); with
    `address`, as Ray core tasks on that cluster. The results table, which keeps every point's row,
    is rewritten (atomically, see `record_row`) after each finished point. A point recorded in the
    table without a run folder (a fresh clone of committed results) is kept, not trained again."""
    selected = select_points(sweep, where)
    rows = previous_rows(sweep)
    recorded = {p.id for p in selected if is_recorded_without_run(sweep, p, rows)}
    if recorded:
        print(f"{len(recorded)} of {len(selected)} points are recorded in {sweep.table_path} without a run folder: "
              "kept, not trained again", flush=True)
    todo = [p for p in selected if p.id not in recorded]
    with closing(_completed_points(sweep, todo, address, workers)) as completed:  # closed at once if stopped
        for done, row in enumerate(completed, 1):
            rows[row["id"]] = row
            print(f"[{done}/{len(todo)}] {row['id']}: {row['status']} in {row['wall_seconds']:.1f} s "
                  f"({row['steps']} steps, {row['stopped_because']})", flush=True)
            record_row(sweep, row)
    return [{**rows[p.id], "status": "recorded", "wall_seconds": 0.0} if p.id in recorded else rows[p.id]
            for p in selected]


def is_recorded_without_run(sweep: Sweep, point: Point, rows: dict[str, dict]) -> bool:
    """Whether `point` has a row in the results table (and, for an exporting sweep, its exported model)
    but no run folder to resume, as in a fresh clone: it finished where the table was written. A row
    that spent a smaller step budget than the point's recipe now has is not finished (as in `train`)."""
    row = rows.get(point.id)
    run_dir = sweep.run_root / point.id
    return (row is not None and not any((run_dir / name).exists() for name in ("last.pt", "previous.pt"))
            and not (row["stopped_because"] == "max_steps" and row["steps"] < point.train_config.max_steps)
            and (not sweep.export or (sweep.export_root / point.id / "model.pt").exists()))


def _completed_points(sweep: Sweep, todo: list[Point], address: str | None, workers: int) -> Iterator[dict]:
    """The rows of `todo`'s points as they finish."""
    if address is not None:
        yield from _on_ray(sweep, todo, address)
    elif workers == 1:
        for point in todo:
            yield run_point(sweep, point)
    else:
        yield from _on_local_workers(sweep, todo, workers)


def _on_local_workers(sweep: Sweep, todo: list[Point], workers: int) -> Iterator[dict]:
    """The rows of `todo`'s points, run by `workers` spawned processes sharing the cores. If the
    sweep stops early (Ctrl-C, SIGTERM, an error), it stops its workers with SIGTERM, which saves the
    step each is at; if this process dies without doing so (SIGKILL), each worker notices and stops itself."""
    threads = max(1, _cores() // workers)
    others = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(sweep.module, threads, os.getpid()))
    try:
        with _sigterm_raises():
            futures = [pool.submit(_run_point_in_worker, sweep, point, os.getpid()) for point in todo]
            for future in as_completed(futures):
                yield future.result()
    except BaseException:
        workers_now = set(multiprocessing.active_children()) - others  # this pool's workers
        print(f"stopping the sweep's {len(workers_now)} workers: each saves the step it is at when that step ends "
              "(a step being compiled, after the compilation)", file=sys.stderr, flush=True)
        for worker in workers_now:
            worker.terminate()
        raise
    finally:
        pool.shutdown(cancel_futures=True)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the block runs in the main thread, SIGTERM raises SystemExit(143) there, so a sweep told
    to end goes through its clean-up (stopping its workers) instead of vanishing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(number: int, frame: Any) -> None:
    raise SystemExit(128 + number)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _start_worker(module: str, threads: int, sweep_pid: int | None = None) -> None:
    """A worker process: fill the study registry, share the cores and, given the pid of the sweep
    process that started it, stop (SIGTERM to itself) once that process has gone."""
    importlib.import_module(module)
    torch.set_num_threads(threads)
    if sweep_pid is not None:
        threading.Thread(target=_stop_when_orphaned, args=(sweep_pid,), daemon=True).start()


def _is_orphaned(sweep_pid: int) -> bool:
    """Whether the sweep process `sweep_pid` that started this worker has gone (the worker was re-parented).
    (POSIX: on Windows a process keeps its parent's pid, so a worker there is never seen orphaned.)"""
    return os.getppid() != sweep_pid


def _stop_when_orphaned(sweep_pid: int, every_seconds: float = 1.0) -> None:
    """Send this process SIGTERM, every `every_seconds` (training takes the first, saves and ends),
    once the sweep process has gone."""
    while True:
        if _is_orphaned(sweep_pid):
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(every_seconds)


def _run_point_in_worker(sweep: Sweep, point: Point, sweep_pid: int) -> dict[str, Any]:
    """`run_point` in a worker process. A worker whose sweep has gone, or that a signal stopped, exits
    (its step saved) instead of going on to a point the pool has already queued for it."""
    try:
        if _is_orphaned(sweep_pid):
            raise SystemExit(128 + signal.SIGTERM)
        return run_point(sweep, point)
    except (SystemExit, KeyboardInterrupt) as stop:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stop.code if isinstance(stop, SystemExit) and isinstance(stop.code, int) else 130)


def _run_point_on_ray(cwd: str, sweep: Sweep, point: Point) -> dict[str, Any]:
    """A Ray task: `run_point` in the driver's working directory, on one core."""
    os.chdir(cwd)
    _start_worker(sweep.module, 1)
    return run_point(sweep, point)


def _on_ray(sweep: Sweep, todo: list[Point], address: str) -> Iterator[dict]:
    """The rows of `todo`'s points, each run as a Ray core task (one CPU) on the cluster at `address`."""
    try:
        import ray
    except ImportError:
        raise SweepError('running a sweep on a Ray cluster needs ray: pip install "mechlab[ray]"') from None
    ray.init(address=address, ignore_reinit_error=True)
    task = ray.remote(num_cpus=1)(_run_point_on_ray)
    pending = [task.remote(os.getcwd(), sweep, point) for point in todo]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


# The parts of a sweep's definition that every point's result depends on; the grid and seeds only
# say which points there are, so a sweep can grow (a second seed, another grid value) and keep its rows.
# The study's own recipe is not in the table: a run folder refuses a changed recipe (RunMismatchError),
# but a committed row without its run does not, so a change to a study's recipe needs a new sweep.
RESULT_DEFINING = ("study", "recipe", "quick")


def previous_rows(sweep: Sweep) -> dict[str, dict]:
    """The rows (by id) of the existing results table for the points `sweep` still has, if the table
    was written with the same study, recipe and quickness, so a re-run (or a grown grid) rewrites the
    table without first dropping the rows it has not reached yet."""
    path = sweep.table_path
    if not path.exists():
        return {}
    table, now = json.loads(path.read_text()), json.loads(json.dumps(sweep.to_json()))
    if any(table.get("sweep", {}).get(key) != now[key] for key in RESULT_DEFINING):
        return {}
    ids = {point.id for point in points(sweep)}
    return {row["id"]: row for row in table["rows"] if row["id"] in ids}


def record_row(sweep: Sweep, row: dict) -> None:
    """Add (or replace) `row` in the results table, which is read again under a lock first: sweep
    processes running different points of one sweep at once (`where`) keep each other's rows."""
    sweep.run_root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(sweep.run_root / "results.lock", f"the results table of sweep {sweep.name}", wait=True):
        rows = previous_rows(sweep) | {row["id"]: row}
        write_results(sweep, [rows[p.id] for p in points(sweep) if p.id in rows])


def write_results(sweep: Sweep, rows: list[dict]) -> Path:
    """The results table at `sweep.table_path`: the sweep, the command and `rows` (without CALL_KEYS)."""
    table = {"sweep": sweep.to_json(), "command": sweep.command,
             "rows": [{k: v for k, v in row.items() if k not in CALL_KEYS} for row in rows]}
    write_json_atomic(sweep.table_path, table)
    return sweep.table_path


def load_results(path: Path) -> list[dict]:
    """The rows of a results table (see `write_results`)."""
    return json.loads(Path(path).read_text())["rows"]


def plot_sweep(results: list[dict], x: str, y: str, color: str | None = None, title: str = ""):
    """Metric `y` against field `x`, one marker per point (seeds side by side), coloured by field
    `color` (as categories); the house template of `core.plotting`. Returns the plotly figure."""
    import plotly.express as px

    from mechlab.core.plotting import TEMPLATE

    data = {x: [row[x] for row in results], y: [row[y] for row in results],
            "id": [row["id"] for row in results]}
    if color is not None:
        data[color] = [str(row[color]) for row in results]
    return px.scatter(data, x=x, y=y, color=color, hover_name="id", title=title or f"{y} by {x}", template=TEMPLATE)


SWEEPS: dict[str, Sweep] = {}


def register_sweep(sweep: Sweep) -> Sweep:
    """Add `sweep` to the registry (a name can be registered once)."""
    if sweep.name in SWEEPS and SWEEPS[sweep.name] != sweep:
        raise ValueError(f"a sweep named {sweep.name!r} is already registered")
    SWEEPS[sweep.name] = sweep
    return sweep


def get_sweep(name: str) -> Sweep:
    """The registered sweep `name`."""
    if name not in SWEEPS:
        raise SweepError(f"unknown sweep {name!r}; registered sweeps: {', '.join(sorted(SWEEPS)) or 'none'}")
    return SWEEPS[name]
