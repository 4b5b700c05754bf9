"""The one training loop. Every study (main task, grokking, toy language models) calls
`train(model, task, cfg, run_dir)` with its own model, data and config.

A *task* supplies three things (see `Task`): the batch for a given step (a pure function of
the step, so a resumed run sees exactly the batches the uninterrupted run would have), the
loss of a batch, and an evaluation that returns named metrics.

Run folder layout (`run_dir`):
    train_config.json   the TrainConfig (rewritten only when a call trains)
    last.pt             model + optimizer + RNG + step + history + config: what a resume restarts from
    previous.pt         the checkpoint before it, the fallback if last.pt is damaged
    step_000500.pt ...  weights-only snapshots every `snapshot_every` steps (for emergence studies)
    metrics.json        one row per evaluation: step, lr, train_loss, task metrics, grad norms
    checksums.json      sha256 of every .pt file (see `mechlab.core.io`)
    train.lock          held (an OS lock) by the process training into the folder
All files are written atomically and checked on load, so an interrupted run resumes from its last
checkpoint (a pause, `stop_after_steps`, saves the step it stops at) and reproduces the
uninterrupted run exactly. `last.pt` holds the history, so `metrics.json` is rebuilt from it on
resume and `load_history` reads it from there: the record always belongs to the saved weights.
A run that has finished (its step budget spent or a stop rule fired) records why; training it again
is a no-op that says so.

While `train` runs, the run folder is locked (`train.lock`): a second process training into it is
refused, since two writers would interleave their checkpoints. SIGTERM or SIGINT (Ctrl-C, a kernel
interrupt) stops training after the current step and saves that step before the signal takes effect,
so no step is lost and the same command resumes it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
import warnings
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from tqdm import tqdm  # the text bar: tqdm.auto warns in notebooks without ipywidgets (they train with progress=False)

from mechlab.core.io import (
    CheckpointFileError,
    ChecksumMismatchError,
    LockedError,
    exclusive_lock,
    load_torch_dict,
    move_file,
    torch_save_atomic,
    write_json_atomic,
)


class InvalidRecipeError(ValueError):
    """A TrainConfig that cannot run; the message lists every field at fault."""


class RunInUseError(LockedError):
    """Another live process is training into the same run folder."""


class RunMismatchError(ValueError):
    """A run directory holds a run of another recipe; the message lists the differing fields."""


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
    # How the steps run. "bfloat16" runs the training forward pass under autocast (matmuls in bfloat16,
    # weights and optimizer state in float32); evaluations stay in float32.
    precision: str = "float32"
    compile: bool = False  # torch.compile the training loss (the first steps pay for the compilation)

    def __post_init__(self) -> None:
        """Refuse a recipe that cannot run, before anything is written."""
        problems = [message for bad, message in [
            (self.max_steps < 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.lr <= 0, f"lr must be > 0, got {self.lr}"),
            (self.warmup_steps < 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.schedule not in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (not 0 <= self.min_lr_frac <= 1, f"min_lr_frac must be in [0, 1], got {self.min_lr_frac}"),
            (self.decay_steps is not None and self.decay_steps < max(1, self.warmup_steps),
             f"decay_steps must be >= 1 and >= warmup_steps ({self.warmup_steps}), got {self.decay_steps}"),
            (self.grad_clip is not None and self.grad_clip <= 0, f"grad_clip must be > 0 or None, got {self.grad_clip}"),
            (self.eval_every < 1, f"eval_every must be >= 1, got {self.eval_every}"),
            (self.checkpoint_every < 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.snapshot_every is not None and self.snapshot_every < 1,
             f"snapshot_every must be >= 1 or None, got {self.snapshot_every}"),
            (self.early_stopping_patience is not None and self.early_stopping_patience < 1,
             f"early_stopping_patience must be >= 1 or None, got {self.early_stopping_patience}"),
            (self.stop_patience < 1, f"stop_patience must be >= 1, got {self.stop_patience}"),
            (self.precision not in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
        ] if bad]
        if problems:
            raise InvalidRecipeError("invalid TrainConfig: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Task(Protocol):
    def batch(self, step: int) -> Any:
        """The training batch for `step`; must depend on nothing but `step` (and fixed seeds)."""

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Scalar training loss of `batch`."""

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Named metrics, e.g. {"val_loss": ..., "val_acc": ...}; called in eval mode, no grad."""


SCHEDULES = ("cosine", "constant")
PRECISIONS = ("float32", "bfloat16")
# A resumed run may change these (extend the run, re-aim the decay, compile or not); any other change
# is refused.
RESUMABLE_CHANGES = ("max_steps", "decay_steps", "compile")


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then constant, or cosine decay to `min_lr_frac * lr` at
    `decay_steps` (default `max_steps`) and constant at that floor after it."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
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
    """AdamW; on a GPU the fused kernel (one launch for all parameters), on the CPU torch's default, so a
    CPU run reproduces the committed checkpoints bit for bit."""
    on_gpu = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                             fused=True if on_gpu else None)


def clip_gradients(model: torch.nn.Module, max_norm: float) -> None:
    """Clip the gradient's L2 norm to `max_norm`. A model holding several independent models (an
    `Ensemble`) clips each member's gradient on its own, through its `clip_grad_norm_` method."""
    if hasattr(model, "clip_grad_norm_"):
        model.clip_grad_norm_(max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


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
    continues from it; another process training into `run_dir` at the same time raises RunInUseError.
    `stop_after_steps` ends this call early at that step without marking the run finished (used to
    simulate an interruption in tests). SIGTERM or SIGINT saves the current step, then ends the call
    as the signal would have (SystemExit(143) or KeyboardInterrupt). Deterministic algorithms are on
    while it runs: without them two runs of the same command drift apart on a multi-core CPU.
    """
    if run_dir is not None:
        run_dir = _make_run_dir(run_dir)
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: an op with no deterministic kernel still runs
    try:
        with _run_lock(run_dir), StopRequests() as stop:
            result = _train(model, task, cfg, run_dir, resume, progress, stop_after_steps, stop)
            if stop.requested:  # checked on every way out, so no signal is swallowed
                stop.take_effect(f"{run_dir}: stopped at step {result.steps}, saved; the same command resumes it"
                                 if run_dir is not None else f"training stopped at step {result.steps} (no run folder)")
            return result
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _make_run_dir(run_dir: Path) -> Path:
    """`run_dir` as a Path, created if missing; a file of that name is refused."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run directory {run_dir} is a file, not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _run_lock(run_dir: Path | None) -> AbstractContextManager:
    """The run folder's lock (nothing to lock without a run folder)."""
    if run_dir is None:
        return nullcontext()
    return exclusive_lock(run_dir / "train.lock", f"run directory {run_dir}", RunInUseError)


class StopRequests:
    """While active (in the main thread), SIGTERM and SIGINT ask the training loop to stop after the
    current step instead of ending the process between two checkpoints. A second Ctrl-C (SIGINT)
    interrupts at once; a repeated SIGTERM changes nothing. A signal the process ignores (SIGINT in
    a background job of a script) stays ignored, and a handler set outside Python is left alone."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            with _signals_blocked(self.SIGNALS):  # a signal between two installs would leave one behind
                for number in self.SIGNALS:
                    handler = signal.getsignal(number)
                    if handler is not None and handler is not signal.SIG_IGN:
                        self._previous[number] = signal.signal(number, self._request)
        return self

    def __exit__(self, *exc) -> None:
        with _signals_blocked(self.SIGNALS):
            for number, handler in self._previous.items():
                signal.signal(number, handler)

    def _request(self, number: int, frame: Any) -> None:
        if number == signal.SIGINT and self.requested == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = self.requested or signal.Signals(number)

    def take_effect(self, message: str) -> None:
        """End the call as the requested signal would have: SIGINT raises KeyboardInterrupt, SIGTERM
        SystemExit(143) (which, in a notebook, ends the cell rather than the kernel)."""
        print(f"{message} (stopped by {self.requested.name})", file=sys.stderr, flush=True)
        if self.requested == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + self.requested)


@contextmanager
def _signals_blocked(numbers: tuple[int, ...]) -> Iterator[None]:
    """Hold `numbers` back while the block runs (delivered after it); nothing where the OS cannot."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, numbers)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _train(model: torch.nn.Module, task: Task, cfg: TrainConfig, run_dir: Path | None, resume: bool, progress: bool,
           stop_after_steps: int | None, stop: StopRequests) -> TrainResult:
    torch.manual_seed(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    state = {"step": 0, "history": [], "best": math.inf, "evals_since_best": 0, "hits": 0, "seconds": 0.0,
             "loss_sum": 0.0, "loss_count": 0, "finished": None}
    if run_dir is not None:
        for leftover in run_dir.glob(".*.tmp"):  # from a write interrupted by a crash
            leftover.unlink()
        if resume and ((run_dir / "last.pt").exists() or (run_dir / "previous.pt").exists()):
            state = _load_state(run_dir, model, optimizer, cfg)
            write_json_atomic(run_dir / "metrics.json", state["history"])  # the record of these weights
        if _is_finished(state, cfg):
            print(f"{run_dir} holds a finished run (step {state['step']}: {state['finished']}); nothing to train")
            return TrainResult(state["history"], state["step"], state["seconds"], f"already finished: {state['finished']}")
        write_json_atomic(run_dir / "train_config.json", cfg.to_json())

    device = next(model.parameters()).device
    model.train()
    step_loss = torch.compile(task.loss) if cfg.compile else task.loss
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bfloat16")
    if cfg.precision == "bfloat16" and not has_native_bfloat16(device):
        warnings.warn("bfloat16 autocast on a CPU without native bfloat16 (no AVX512-BF16 or AMX) is emulated: a "
                      "step of the main model ran 19x slower than float32 on such a CPU (figures/"
                      "bench_training_avx2.json); precision='float32' is faster here", stacklevel=3)
    # The running loss stays on the device (float64, summed in the same order as a resumed run would):
    # reading it every step would make the host wait for the device at every step.
    state["loss_sum"] = torch.tensor(state["loss_sum"], dtype=torch.float64, device=device)
    snapshot_every = cfg.snapshot_every or cfg.checkpoint_every
    step, history = state["step"], state["history"]
    stopped_because = "max_steps"
    start = time.perf_counter() - state["seconds"]
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not progress, desc="train", dynamic_ncols=True)
    while step < cfg.max_steps:
        if (stop_after_steps is not None and step >= stop_after_steps) or stop.requested:
            stopped_because = "interrupted"
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        with torch.enable_grad():  # also when a notebook has switched gradients off globally
            with autocast:
                loss = step_loss(model, _to_device(task.batch(step), device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        step += 1
        is_eval_step = step % cfg.eval_every == 0 or step == cfg.max_steps
        grad_norms = grad_norms_by_module(model) if is_eval_step else {}
        if cfg.grad_clip is not None:
            clip_gradients(model, cfg.grad_clip)
        optimizer.step()
        state["loss_sum"] += loss.detach().double()
        state["loss_count"] += 1

        if is_eval_step:
            row = {"step": step, "lr": learning_rate(cfg, step - 1),
                   "train_loss": state["loss_sum"].item() / state["loss_count"],
                   "seconds": time.perf_counter() - start, **_evaluate(model, task), **grad_norms}
            history.append(row)
            state["loss_sum"].zero_()
            state["loss_count"] = 0
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("train_loss", "val_loss", cfg.stop_metric)})
            stopped_because = _stop_rule(cfg, row, state)
        finished = stopped_because != "max_steps" or step == cfg.max_steps
        if run_dir is not None and (step % cfg.checkpoint_every == 0 or finished):
            state.update(step=step, history=history, seconds=time.perf_counter() - start,
                         finished=stopped_because if finished else None)
            _save_state(run_dir, model, optimizer, state, cfg, snapshot=step % snapshot_every == 0)
        bar.update(1)
        if stopped_because != "max_steps":
            break
    bar.close()
    if run_dir is not None and stopped_because == "interrupted" and state["step"] != step:
        state.update(step=step, history=history, seconds=time.perf_counter() - start)  # a pause keeps every step
        _save_state(run_dir, model, optimizer, state, cfg, snapshot=False)
    return TrainResult(history=history, steps=step, seconds=time.perf_counter() - start, stopped_because=stopped_because)


def _is_finished(state: dict, cfg: TrainConfig) -> bool:
    """A recorded finish stands, unless the run ended on its step budget and `cfg` extends it."""
    if state["finished"] is None:
        return False
    return not (state["finished"] == "max_steps" and cfg.max_steps > state["step"])


def has_native_bfloat16(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 matmuls natively: a GPU, or a CPU with AVX512-BF16 or AMX (as
    torch's CPU feature checks report them; where torch cannot tell, assumed so)."""
    if device.type != "cpu":
        return True
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None) or all(check is None for check in checks)


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
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


STATE_KEYS = ("step", "history", "best", "evals_since_best", "hits", "seconds", "loss_sum", "loss_count", "finished")


def _save_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                cfg: TrainConfig, snapshot: bool) -> None:
    """last.pt (the previous one kept as previous.pt), a weights-only snapshot if asked, then metrics.json."""
    step = state["step"]
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if snapshot:
        torch_save_atomic(run_dir / f"step_{step:06d}.pt", {"step": step, "state_dict": weights})
    if (run_dir / "last.pt").exists():
        move_file(run_dir / "last.pt", run_dir / "previous.pt")
    saved = {k: state[k] for k in STATE_KEYS} | {"loss_sum": float(state["loss_sum"])}
    torch_save_atomic(run_dir / "last.pt", {**saved, "state_dict": weights,
                                             "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                                             "train_config": cfg.to_json()})
    write_json_atomic(run_dir / "metrics.json", state["history"])


def _read_run_state(run_dir: Path) -> tuple[Path, dict]:
    """(path, contents) of the newest intact full checkpoint: last.pt, else previous.pt (with a note)."""
    problems = []
    for name in ("last.pt", "previous.pt"):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            ckpt = load_torch_dict(path, "run checkpoint")
        except (CheckpointFileError, ChecksumMismatchError) as error:
            problems.append(str(error))
            continue
        if problems:
            print(f"warning: {problems[0]}\n  resuming from {path} (step {ckpt['step']}) instead: the steps after it "
                  "are trained again")
        return path, ckpt
    raise CheckpointFileError(f"no intact checkpoint to resume {run_dir} from: " + " | ".join(problems)
                              + f". Start over with a new run directory (or delete {run_dir})")


def _load_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> dict:
    path, ckpt = _read_run_state(run_dir)
    if "train_config" in ckpt:
        saved_cfg = ckpt["train_config"]
    elif (run_dir / "train_config.json").exists():  # runs saved before last.pt held its config
        saved_cfg = json.loads((run_dir / "train_config.json").read_text())
    else:
        raise FileNotFoundError(f"{path} records no TrainConfig and {run_dir / 'train_config.json'} is missing")
    new_cfg = json.loads(json.dumps(cfg.to_json()))
    saved_cfg = {**json.loads(json.dumps(TrainConfig(max_steps=1).to_json())), **saved_cfg}  # fields added since
    changed = [f"{k}: run has {saved_cfg.get(k)!r}, asked for {new_cfg.get(k)!r}" for k in sorted(new_cfg)
               if k not in RESUMABLE_CHANGES and json.loads(json.dumps(saved_cfg.get(k))) != new_cfg[k]]
    if changed:
        raise RunMismatchError(f"{run_dir} holds a run with another TrainConfig ({'; '.join(changed)}); only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change on resume: use a new run directory")
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"])
    defaults = {"loss_sum": 0.0, "loss_count": 0, "finished": None}  # runs saved before these were recorded
    return {k: ckpt.get(k, defaults.get(k)) for k in STATE_KEYS}


def load_history(run_dir: Path) -> list[dict[str, float]]:
    """The metrics rows of a run (see `train`): from last.pt, which holds the history that belongs to
    its weights, or from metrics.json when there is no last.pt (an exported checkpoint folder)."""
    run_dir = Path(run_dir)
    if (run_dir / "last.pt").exists():
        return _read_run_state(run_dir)[1]["history"]
    return json.loads((run_dir / "metrics.json").read_text())
