"""Training N models of one shape at once (`mechlab.core.ensemble`) against training them one after
another (not a test: numbers depend on the machine).

    python -m mechlab.bench.ensemble [--sizes 1 4 16] [--steps 5] [--warmup 1] [--threads 2] [--compile]
                                     [--data data] [--out figures/bench_ensemble.json]

Every figure is timed through the one training loop (`core.train.train`): a plain model on its own
task (what N separate runs would do N times over), and ensembles of N members on an `EnsembleTask`
(each member its own data seed), batches of 128 per member, for two shapes: the main model (4 layers,
d_model 128, 25 positions; main-task batches from `data/`) and the 3-layer modular model (d_model 64, 4
positions; batches of its task, whose study trains on 512). A step's time is the time between the loop
asking for two consecutive batches, the median over `--steps` steps after `--warmup` untimed ones (no
evaluation or checkpoint falls in between). On the CPU, and on CUDA when there is a GPU (else the JSON
says it was not measured). `--compile` times `TrainConfig(compile=True)` (give it `--warmup 2`).
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mechlab.arithmetic.task import ArithmeticSplit, ArithmeticTask, main_model_config
from mechlab.bench.training import _sync, machine_info
from mechlab.core.ensemble import Ensemble, EnsembleTask
from mechlab.core.io import write_json_atomic
from mechlab.core.model import build
from mechlab.core.train import TrainConfig, train


@dataclass(frozen=True)
class Shape:
    """A model shape to time: its config, the task of the member with data seed s, the batch per member."""

    name: str
    config: Any
    make_task: Callable[[int], Any]
    batch_size: int


def shapes(data_dir: Path) -> list[Shape]:
    """The main model and the 3-layer modular model, each on batches of its own task, 128 per member."""
    from mechlab.modular.studies import MODULAR_STUDIES
    from mechlab.modular.task import ModularTask

    train_split, val = ArithmeticSplit.load(data_dir, "train"), ArithmeticSplit.load(data_dir, "val", limit=1)
    three = MODULAR_STUDIES["three_layer"]
    split = three.split()
    return [Shape("main", main_model_config(), lambda s: ArithmeticTask(train_split, val, batch_size=128, seed=s), 128),
            Shape("three_layer", three.model_config, lambda s: ModularTask(split, three.fmt, 128, seed=s), 128)]


class _Clock:
    """`task`, noting when the training loop asks for each step's batch (the device synchronised first)."""

    def __init__(self, task: Any, device: torch.device):
        self.task, self.device, self.times = task, device, {}

    def batch(self, step: int) -> Any:
        _sync(self.device)
        self.times[step] = time.perf_counter()
        return self.task.batch(step)

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return self.task.loss(model, batch)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return self.task.evaluate(model)


def seconds_per_step(model: torch.nn.Module, task: Any, steps: int, warmup: int, compile: bool = False) -> float:
    """Median wall seconds of training steps `warmup` .. `warmup + steps - 1` of `model` on `task` in the
    loop (the median: on a shared machine a step now and then takes several times as long)."""
    device = next(model.parameters()).device
    clock = _Clock(task, device)
    last = warmup + steps  # the loop asks for this batch, then stops: the timed steps end there
    cfg = TrainConfig(max_steps=last + 2, eval_every=10**9, compile=compile)  # no evaluation falls in the run
    train(model, clock, cfg, progress=False, stop_after_steps=last + 1)
    return statistics.median(clock.times[step + 1] - clock.times[step] for step in range(warmup, last))


def throughput(shape: Shape, sizes: Sequence[int], steps: int, warmup: int, device: torch.device,
               compile: bool = False) -> dict[str, Any]:
    """One model alone, then ensembles of each size in `sizes`: seconds per step, examples/s in total
    and per model, and the speed-up over training the members one after another (N x the alone step)."""
    alone = seconds_per_step(build(shape.config, device), shape.make_task(0), steps, warmup, compile)
    rows = []
    for n in sizes:
        ensemble = Ensemble.from_config(shape.config, range(n), device)
        task = EnsembleTask([shape.make_task(s) for s in range(n)])
        seconds = seconds_per_step(ensemble, task, steps, warmup, compile)
        rows.append({"n": n, "seconds_per_step": seconds, "examples_per_s": n * shape.batch_size / seconds,
                     "examples_per_s_per_model": shape.batch_size / seconds,
                     "speedup_vs_one_after_another": n * alone / seconds})
    return {"batch_size_per_model": shape.batch_size, "config": {k: v for k, v in shape.config.to_json().items() if k != "vocab"},
            "alone": {"seconds_per_step": alone, "examples_per_s": shape.batch_size / alone},
            "ensembles": rows}


def table(results: dict[str, Any]) -> str:
    """A text table: one line per shape and ensemble size."""
    lines = [f"{'shape':12} {'N':>3} {'s/step':>8} {'ex/s total':>11} {'ex/s/model':>11} {'vs 1 by 1':>9}"]
    for name, result in results.items():
        alone = result["alone"]
        lines.append(f"{name:12} {'1*':>3} {alone['seconds_per_step']:8.3f} {alone['examples_per_s']:11.0f} "
                     f"{alone['examples_per_s']:11.0f} {'':>9}")
        for row in result["ensembles"]:
            lines.append(f"{name:12} {row['n']:3d} {row['seconds_per_step']:8.3f} {row['examples_per_s']:11.0f} "
                         f"{row['examples_per_s_per_model']:11.0f} {row['speedup_vs_one_after_another']:8.2f}x")
    return "\n".join(lines + ["(1*: one plain model, not an ensemble: the one-after-another baseline)"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first allocates the "
                        "optimizer state; with --compile it compiles)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training loss (TrainConfig.compile)")
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("figures/bench_ensemble.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"machine": machine_info(), "steps": args.steps, "warmup": args.warmup,
                              "compile": args.compile}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        result[device.type] = {shape.name: throughput(shape, args.sizes, args.steps, args.warmup, device, args.compile)
                               for shape in shapes(args.data)}
        print(f"{device}:\n{table(result[device.type])}")
    if "cuda" not in result:
        result["cuda"] = "unmeasured: no GPU"
    result["loadavg_at_end"] = machine_info()["loadavg_at_start"]
    write_json_atomic(args.out, result)
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['torch_threads']} torch threads; load average at start "
          f"{' '.join(m['loadavg_at_start'])}, at end {' '.join(result['loadavg_at_end'])}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
