"""Task-agnostic helpers for training runs: export a run folder into the committed checkpoint
layout, read its snapshot series back, and find the first evaluation past a threshold.

Committed layout (`export_run`'s `out_dir`):
    model.pt + config.json   the final weights (`save_checkpoint`)
    train_config.json        the TrainConfig the run used (copied)
    metrics.json             one row per evaluation (the run's history)
    series.pt                optional: `n_series` evenly spaced snapshots in float16 (`load_series`)
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from mechlab.core.io import load_torch_dict, torch_save_atomic, write_json_atomic
from mechlab.core.model import build, save_checkpoint


def first_reaching(history: list[dict], metric: str, target: float, below: bool = False) -> dict | None:
    """The first row of `history` whose `metric` is >= `target` (or < `target` if `below`), or None.
    Rows without `metric` never count."""
    for row in history:
        value = row.get(metric)
        if value is not None and (value < target if below else value >= target):
            return row
    return None


def snapshot_paths(run_dir: Path) -> list[Path]:
    """The run's weights-only snapshots step_NNNNNN.pt, in step order."""
    return sorted(Path(run_dir).glob("step_*.pt"))


def evenly_spaced(items: list, n: int) -> list:
    """`n` items from `items` evenly spaced, first and last included (fewer if `items` is shorter)."""
    if n <= 1 or len(items) <= 1:
        return items[-1:] if n >= 1 else []
    return [items[i] for i in sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})]


def export_run(run_dir: Path, out_dir: Path, model_config: Any, n_series: int = 0) -> Path:
    """Write the committed layout (module docstring) for the run in `run_dir`; returns the model path."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"export folder {out_dir} is a file, not a folder")
    last = load_torch_dict(run_dir / "last.pt", "run checkpoint")
    model = build(model_config, "cpu")
    model.load_state_dict(last["state_dict"])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, model_config, out_dir / "model.pt", extra={"step": last["step"]})
    # the history and recipe saved with these weights (last.pt holds both), not files written after them
    write_json_atomic(out_dir / "metrics.json", last["history"])
    if "train_config" in last:
        write_json_atomic(out_dir / "train_config.json", last["train_config"])
    else:  # a run saved before last.pt recorded its config
        shutil.copyfile(run_dir / "train_config.json", out_dir / "train_config.json")
    if n_series:
        series = {"steps": [], "state_dicts": []}
        for path in evenly_spaced(snapshot_paths(run_dir), n_series):
            snap = load_torch_dict(path, "snapshot")
            series["steps"].append(snap["step"])
            # float16 keeps the committed series small; load_series converts back to float32
            series["state_dicts"].append({k: v.half() for k, v in snap["state_dict"].items()})
        torch_save_atomic(out_dir / "series.pt", series)
    return out_dir / "model.pt"


def model_from_state_dict(model_config: Any, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A float32 CPU model of `model_config` holding `state_dict` (float16 tensors are converted)."""
    model = build(model_config, "cpu")
    model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return model


def load_snapshot(path: Path, model_config: Any) -> tuple[int, torch.nn.Module]:
    """(step, model) from a run's weights-only snapshot step_NNNNNN.pt (`snapshot_paths`)."""
    snap = load_torch_dict(path, "snapshot")
    return snap["step"], model_from_state_dict(model_config, snap["state_dict"])


def load_series(path: Path, model_config: Any) -> list[tuple[int, torch.nn.Module]]:
    """[(step, model)] from a series.pt written by `export_run`, as float32 models of `model_config`."""
    series = load_torch_dict(path, "snapshot series")
    return [(step, model_from_state_dict(model_config, state_dict))
            for step, state_dict in zip(series["steps"], series["state_dicts"])]
