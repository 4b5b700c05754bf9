"""Training-throughput benchmark of the main model (not a test: numbers depend on the machine).

    python -m mechlab.bench.training [--steps 30] [--batch-size 256] [--batch-sizes 128 256 512 1024]
                                     [--out figures/bench_training.json]

Prints the machine, the measured fp32 matmul peak, training throughput (examples/s, tokens/s
and achieved GFLOP/s estimated as 6 * parameters * tokens per second) for each way a step can run
(eager or compiled, float32 or bfloat16 autocast), the fastest way's throughput at each of
`--batch-sizes` (what a recipe search trades steps against), and, from the committed
training record (checkpoints/main/metrics.json), the wall time and steps to the accuracy target.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from mechlab.arithmetic.task import answer_loss, main_model_config
from mechlab.arithmetic.tokenizer import SEQ_LEN, VOCAB
from mechlab.core.io import write_json_atomic
from mechlab.core.model import build_model, count_parameters, default_device
from mechlab.core.runs import first_reaching
from mechlab.core.train import TrainConfig, has_native_bfloat16, make_optimizer


def machine_info() -> dict:
    """The machine a benchmark ran on: CPU model, whether it multiplies bfloat16 natively (AVX512-BF16
    or AMX: without it a bfloat16 step is emulated and slow), logical CPUs, torch threads and version,
    the load average when it started (other work on a shared CPU slows every number down), GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = []
    device = default_device()
    return {"cpu": cpu, "native_bfloat16": has_native_bfloat16(device), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_at_start": load, "device": str(device),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_gflops(device: torch.device, n: int = 1024, repeats: int = 20) -> float:
    """Achieved fp32 GFLOP/s of an n x n matmul: the machine's practical peak for this work."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


# The ways a training step can run (TrainConfig's `compile` and `precision`), timed side by side.
STEP_VARIANTS = {"eager float32": (False, "float32"), "compiled float32": (True, "float32"),
                 "compiled bfloat16": (True, "bfloat16")}
FASTEST = "compiled bfloat16"  # the variant timed at every batch size


def training_throughput(device: torch.device, steps: int, batch_size: int, compile: bool = False,
                        precision: str = "float32") -> dict[str, float]:
    """Time `steps` AdamW steps of the main model on random answer-shaped batches, run as the training
    loop runs them with TrainConfig(compile=..., precision=...) (compilation excluded from the time).
    A compiled step starts from an empty compile cache, as a new training run does."""
    if compile:
        torch._dynamo.reset()  # no graph compiled for another batch size or precision is reused
    model = build_model(main_model_config(), device=device)
    optimizer = make_optimizer(model, TrainConfig(max_steps=1))
    seq_len = SEQ_LEN
    tokens = torch.randint(0, len(VOCAB) - 3, (batch_size, seq_len), device=device)
    loss_of = torch.compile(answer_loss) if compile else answer_loss
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")

    def step() -> None:
        with autocast:
            loss = loss_of(model, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up (and, compiled, the compilation)
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    tokens_per_step = batch_size * (seq_len - 1)  # the model sees seq_len - 1 positions
    n_params = count_parameters(model)
    return {"seconds_per_step": seconds, "examples_per_s": batch_size / seconds,
            "tokens_per_s": tokens_per_step / seconds, "gflops": 6 * n_params * tokens_per_step / seconds / 1e9,
            "parameters": n_params, "batch_size": batch_size, "timed_steps": steps, "compile": compile,
            "precision": precision}


def examples_within(bench: dict, minutes: float) -> dict:
    """The most training examples one of the steps timed in `bench` (a bench_training.json) gets
    through in `minutes`, at its bare step rate (no evaluations, checkpoints or compilation): the
    step's way, batch size, examples per second and examples."""
    timed = [{**row, "way": way} for way, row in bench["training"].items()]
    timed += [{**row, "way": FASTEST} for row in bench.get("by_batch_size", [])]
    fastest = max(timed, key=lambda row: row["examples_per_s"])
    return {"way": fastest["way"], "batch_size": fastest["batch_size"], "examples_per_s": fastest["examples_per_s"],
            "examples": fastest["examples_per_s"] * minutes * 60}


def time_to_target(metrics_path: Path, metric: str = "val_exact", target: float = 0.99) -> dict:
    """Steps and wall seconds until `metric` first reached `target` in a training record."""
    if not metrics_path.exists():
        return {"reached": False, "note": f"no training record at {metrics_path}"}
    rows = json.loads(metrics_path.read_text())
    hit = first_reaching(rows, metric, target)
    if hit:
        return {"reached": True, "step": hit["step"], "minutes": hit["seconds"] / 60, metric: hit[metric]}
    best = max(rows, key=lambda r: r.get(metric, 0.0))
    return {"reached": False, "best": best.get(metric), "best_step": best["step"],
            "steps_run": rows[-1]["step"], "minutes_run": rows[-1]["seconds"] / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[128, 256, 512, 1024])
    parser.add_argument("--metrics", type=Path, default=Path("checkpoints/main/metrics.json"))
    parser.add_argument("--out", type=Path, default=Path("figures/bench_training.json"))
    args = parser.parse_args()
    device = default_device()
    result = {"machine": machine_info(), "matmul_peak_gflops": matmul_peak_gflops(device)}
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['torch_threads']} torch threads, {m['gpu'] or 'no GPU'} ({device}); "
          f"load average at start {' '.join(m['loadavg_at_start'])}")
    print(f"fp32 matmul peak: {result['matmul_peak_gflops']:.0f} GFLOP/s")
    result["training"] = {}
    for name, (compile, precision) in STEP_VARIANTS.items():
        t = training_throughput(device, args.steps, args.batch_size, compile, precision)
        t["fraction_of_peak"] = t["gflops"] / result["matmul_peak_gflops"]
        result["training"][name] = t
        print(f"training, {name}: {t['examples_per_s']:.0f} examples/s, {t['tokens_per_s']:.0f} tokens/s, "
              f"{t['gflops']:.1f} GFLOP/s ({100 * t['fraction_of_peak']:.0f}% of the fp32 peak), batch {t['batch_size']}")
    result["by_batch_size"] = []
    for batch_size in args.batch_sizes:
        t = training_throughput(device, args.steps, batch_size, *STEP_VARIANTS[FASTEST])
        t["fraction_of_peak"] = t["gflops"] / result["matmul_peak_gflops"]
        result["by_batch_size"].append(t)
        print(f"training, {FASTEST}, batch {batch_size}: {t['examples_per_s']:.0f} examples/s "
              f"({t['seconds_per_step']:.3f} s a step)")
    result["time_to_99"] = time_to_target(args.metrics)
    write_json_atomic(args.out, result)
    print(f"time to 99% val exact match: {json.dumps(result['time_to_99'])}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
