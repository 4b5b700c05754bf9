"""The study registry: every trained model of the project, by name, with everything needed to
train, export and evaluate it (`python -m mechlab <study> train|export|evaluate`).

The studies are defined in their task family's package (`mechlab.arithmetic.study`,
`mechlab.modular.studies`) and register themselves on import with `register_study`; `core`
does not import the task families (the CLI, `mechlab.__main__`, imports them to fill the registry).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mechlab.core.io import load_torch_dict, write_json_atomic
from mechlab.core.model import build, count_parameters
from mechlab.core.runs import export_run
from mechlab.core.train import TrainConfig, TrainResult, train

QUICK_STEPS = 40  # default length of a quick run (smoke tests, quick notebooks)
QUICK_SERIES = 2  # quick runs keep at most this many snapshots in series.pt


def quick_recipe(cfg: TrainConfig, steps: int = QUICK_STEPS) -> TrainConfig:
    """`cfg` shortened to `steps` steps: warm-up over the first quarter, evaluations and
    snapshots at every half."""
    half = steps // 2
    return dataclasses.replace(cfg, max_steps=steps, warmup_steps=steps // 4, eval_every=half,
                               checkpoint_every=half, snapshot_every=half)


@dataclass(frozen=True)
class Study:
    """One trained model: its model config and recipe, how to build its task, where it lives.

    make_task(quick, **options) -> the training task (options: study-specific, e.g. the main
        task's data_dir, length_balance; every study's takes `seed`, the batch order, which a sweep sets).
    evaluate(checkpoint_dir, limit, **options) -> named metrics of the exported model in checkpoint_dir
        (options: e.g. the main task's data_dir).
    record() -> extra fields for the export's study.json (None: no study.json).
    after_export(run_dir, out_dir, quick) -> further export files (e.g. progress measures).
    """
    name: str
    model_config: Any
    train_config: TrainConfig
    make_task: Callable[..., Any]
    evaluate: Callable[..., dict]
    export_dir: Path
    quick_steps: int = QUICK_STEPS
    n_series: int = 0  # float16 snapshots kept in the export's series.pt
    eval_file: str | None = None  # where `evaluate` writes its metrics in the checkpoint dir (None: print only)
    record: Callable[[], dict] | None = None
    after_export: Callable[[Path, Path, bool], Any] | None = None

    @property
    def run_dir(self) -> Path:
        return Path("runs") / self.name

    def recipe(self, quick: bool = False) -> TrainConfig:
        return quick_recipe(self.train_config, self.quick_steps) if quick else self.train_config

    def train(self, run_dir: Path | None = None, quick: bool = False, progress: bool = True,
              stop_after_steps: int | None = None, recipe_changes: dict | None = None, **task_options) -> TrainResult:
        """Train (or resume) this study's model into `run_dir` (default runs/<name>). `recipe_changes`
        replace fields of the recipe (e.g. max_steps); `task_options` go to `make_task`."""
        cfg = dataclasses.replace(self.recipe(quick), **(recipe_changes or {}))
        model = build(self.model_config)
        print(f"{self.name}: {count_parameters(model):,} parameters")
        return train(model, self.make_task(quick, **task_options), cfg, Path(run_dir or self.run_dir),
                     progress=progress, stop_after_steps=stop_after_steps)

    def export(self, run_dir: Path | None = None, out_dir: Path | None = None, quick: bool = False) -> Path:
        """Export the run (default runs/<name>) to out_dir (default `export_dir`): the committed
        layout of `export_run`, plus study.json (record, steps, seconds, final metrics row) and
        `after_export`'s files."""
        run_dir, out_dir = Path(run_dir or self.run_dir), Path(out_dir or self.export_dir)
        n_series = min(self.n_series, QUICK_SERIES) if quick else self.n_series
        path = export_run(run_dir, out_dir, self.model_config, n_series)
        if self.record is not None:
            last = load_torch_dict(run_dir / "last.pt", "run checkpoint")
            history = json.loads((out_dir / "metrics.json").read_text())
            write_json_atomic(out_dir / "study.json", {**self.record(), "steps": last["step"],
                                                        "seconds": last["seconds"], "final": history[-1]})
        if self.after_export is not None:
            self.after_export(run_dir, out_dir, quick)
        return path


STUDIES: dict[str, Study] = {}


def register_study(study: Study) -> Study:
    """Add `study` to the registry (a name can be registered once)."""
    if study.name in STUDIES and STUDIES[study.name] is not study:
        raise ValueError(f"a study named {study.name!r} is already registered")
    STUDIES[study.name] = study
    return study


def get_study(name: str) -> Study:
    """The registered study `name`."""
    if name not in STUDIES:
        raise KeyError(f"unknown study {name!r}; registered studies: {', '.join(sorted(STUDIES)) or 'none'} "
                       "(import mechlab.arithmetic.study and mechlab.modular.studies to register them)")
    return STUDIES[name]
