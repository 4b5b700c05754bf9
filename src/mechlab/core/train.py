"""The one training loop. Every study (main task, grokking, toy language models) calls
`train(model, task, cfg, run_dir)` with its own model, data and config.

A *task* supplies three things (see `Task`): the batch for a given step (a pure function of
the step, so a resumed run sees exactly the batches the uninterrupted run would have), the
loss of a batch, and an evaluation that returns named metrics.

Run folder layout (`run_dir`):
    train_config.json   the TrainConfig
    last.pt             model + optimizer + step + history: what `resume` restarts from
    step_000500.pt ...  weights-only snapshots every `checkpoint_every` steps (for emergence studies)
    metrics.json        one row per evaluation: step, lr, train_loss, task metrics, grad norms
All files are written atomically, so an interrupted run resumes from its last checkpoint and
loses at most the steps since then.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm  # the text bar: tqdm.auto warns in notebooks without ipywidgets (they train with progress=False)

from mechlab.core.io import load_torch_file, torch_save_atomic, write_json_atomic


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 0
    schedule: str = "cosine"  # "cosine" (decay to min_lr_frac * lr at decay_steps) or "constant"
    min_lr_frac: float = 0.1
    decay_steps: int | None = None  # where the cosine reaches its floor (None = max_steps); constant after
    grad_clip: float | None = 1.0
    eval_every: int = 500
    checkpoint_every: int = 500
    snapshot_every: int | None = None  # weights-only step_*.pt files; None = checkpoint_every
    early_stopping_patience: int | None = None  # evaluations without a new best `early_stopping_metric`
    early_stopping_metric: str = "val_loss"
    stop_metric: str | None = None  # stop once task metric `stop_metric` >= `stop_value` ...
    stop_value: float = 1.0
    stop_patience: int = 1  # ... at this many consecutive evaluations
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Task(Protocol):
    def batch(self, step: int) -> Any:
        """The training batch for `step`; must depend on nothing but `step` (and fixed seeds)."""

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Scalar training loss of `batch`."""

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Named metrics, e.g. {"val_loss": ..., "val_acc": ...}; called in eval mode, no grad."""


# A resumed run may change these (extend the run, re-aim the decay); any other change is refused.
SCHEDULE_FIELDS = ("max_steps", "decay_steps")


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then constant, or cosine decay to `min_lr_frac * lr` at
    `decay_steps` (default `max_steps`) and constant at that floor after it."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule != "cosine":
        raise ValueError(f"unknown schedule {cfg.schedule!r}: use 'cosine' or 'constant'")
    decay_steps = cfg.decay_steps or cfg.max_steps
    progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * cosine)


def grad_norms_by_module(model: torch.nn.Module) -> dict[str, float]:
    """L2 norm of the gradient per top-level module: `blocks.0`, `blocks.1`, ..., `embed`, `unembed`."""
    squares: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        parts = name.split(".")
        group = ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]
        squares[group] = squares.get(group, 0.0) + p.grad.detach().float().pow(2).sum().item()
    return {f"grad_norm/{k}": math.sqrt(v) for k, v in squares.items()}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    steps: int
    seconds: float
    stopped_because: str


def _evaluate(model: torch.nn.Module, task: Task) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model)
    model.train(was_training)
    return metrics


def train(
    model: torch.nn.Module,
    task: Task,
    cfg: TrainConfig,
    run_dir: Path | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train `model` on `task` for `cfg.max_steps` steps (or until a stop rule fires).

    With `run_dir`, checkpoints go there and, if `resume` and `run_dir/last.pt` exists, training
    continues from it. `stop_after_steps` ends this call early at that step without marking the
    run finished (used to simulate an interruption in tests). Deterministic algorithms are on while
    it runs: without them two runs of the same command drift apart on a multi-core CPU.
    """
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: an op with no deterministic kernel still runs
    try:
        return _train(model, task, cfg, run_dir, resume, progress, stop_after_steps)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _train(model: torch.nn.Module, task: Task, cfg: TrainConfig, run_dir: Path | None, resume: bool, progress: bool,
           stop_after_steps: int | None) -> TrainResult:
    torch.manual_seed(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    state = {"step": 0, "history": [], "best": math.inf, "evals_since_best": 0, "hits": 0, "seconds": 0.0}
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume and (run_dir / "last.pt").exists():
            state = _load_state(run_dir / "last.pt", model, optimizer, cfg)
        write_json_atomic(run_dir / "train_config.json", cfg.to_json())

    device = next(model.parameters()).device
    model.train()
    snapshot_every = cfg.snapshot_every or cfg.checkpoint_every
    step, history = state["step"], state["history"]
    stopped_because = "max_steps"
    loss_sum, loss_count = 0.0, 0
    start = time.perf_counter() - state["seconds"]
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not progress, desc="train", dynamic_ncols=True)
    while step < cfg.max_steps:
        if stop_after_steps is not None and step >= stop_after_steps:
            stopped_because = "interrupted"
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        with torch.enable_grad():  # also when a notebook has switched gradients off globally
            loss = task.loss(model, _to_device(task.batch(step), device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        step += 1
        is_eval_step = step % cfg.eval_every == 0 or step == cfg.max_steps
        grad_norms = grad_norms_by_module(model) if is_eval_step else {}
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1

        if is_eval_step:
            row = {"step": step, "lr": learning_rate(cfg, step - 1), "train_loss": loss_sum / loss_count,
                   "seconds": time.perf_counter() - start, **_evaluate(model, task), **grad_norms}
            history.append(row)
            loss_sum, loss_count = 0.0, 0
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("train_loss", "val_loss", cfg.stop_metric)})
            stopped_because = _stop_rule(cfg, row, state)
        if run_dir is not None and (step % cfg.checkpoint_every == 0 or stopped_because != "max_steps" or step == cfg.max_steps):
            state.update(step=step, history=history, seconds=time.perf_counter() - start)
            _save_state(run_dir, model, optimizer, state, snapshot=step % snapshot_every == 0)
        bar.update(1)
        if stopped_because != "max_steps":
            break
    bar.close()
    return TrainResult(history=history, steps=step, seconds=time.perf_counter() - start, stopped_because=stopped_because)


def _stop_rule(cfg: TrainConfig, row: dict[str, float], state: dict) -> str:
    """Update early-stopping counters in `state`; return why training should stop, or "max_steps"."""
    if cfg.stop_metric is not None:
        state["hits"] = state["hits"] + 1 if row.get(cfg.stop_metric, -math.inf) >= cfg.stop_value else 0
        if state["hits"] >= cfg.stop_patience:
            return f"{cfg.stop_metric} >= {cfg.stop_value}"
    if cfg.early_stopping_patience is not None:
        value = row[cfg.early_stopping_metric]
        if value < state["best"]:
            state["best"], state["evals_since_best"] = value, 0
        else:
            state["evals_since_best"] += 1
            if state["evals_since_best"] >= cfg.early_stopping_patience:
                return f"no new best {cfg.early_stopping_metric} in {cfg.early_stopping_patience} evaluations"
    return "max_steps"


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _save_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, snapshot: bool) -> None:
    step = state["step"]
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if snapshot:
        torch_save_atomic(run_dir / f"step_{step:06d}.pt", {"step": step, "state_dict": weights})
    torch_save_atomic(run_dir / "last.pt", {**state, "state_dict": weights, "optimizer": optimizer.state_dict(),
                                             "rng": torch.get_rng_state()})
    write_json_atomic(run_dir / "metrics.json", state["history"])


def _load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> dict:
    ckpt = load_torch_file(path)
    saved_cfg = json.loads((path.parent / "train_config.json").read_text())
    fixed = lambda c: {k: v for k, v in c.items() if k not in SCHEDULE_FIELDS}  # noqa: E731
    if fixed(saved_cfg) != fixed(json.loads(json.dumps(cfg.to_json()))):
        raise ValueError(f"{path.parent} holds a run with another TrainConfig (only {', '.join(SCHEDULE_FIELDS)} "
                         "may change on resume); use a new run_dir or resume=False")
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"])
    return {k: ckpt[k] for k in ("step", "history", "best", "evals_since_best", "hits", "seconds")}


def load_history(run_dir: Path) -> list[dict[str, float]]:
    """The metrics rows of a run (see `train`)."""
    return json.loads((Path(run_dir) / "metrics.json").read_text())
