"""Wall time of the Shakespeare GPT against nanoGPT's on the same configuration (not a test: numbers
depend on the machine and on what else runs on it).

    python -m mechlab.bench.shakespeare [--study shakespeare_char_seed0] [--train] [--threads 1] [--steps 20]
                                        [--out figures/bench_shakespeare.json]

nanoGPT's own `train.py` on the CPU configuration (see `mechlab.shakespeare.studies`) reached validation
loss 1.8857 in 129 s on this project's 2-core machine, evaluations included. This benchmark reports, beside
those figures:
* the run: with --train a fresh training run of the study into a temporary folder (timed end to end,
  Python start-up and data loading excluded), else the committed record (checkpoints/<study>/study.json:
  the loop's own clock, evaluations and checkpoints included); its validation loss on the loop's
  evaluation windows and on the whole validation split (`full_val_loss`);
* where the time goes: seconds per training step, per evaluation and per checkpoint (with snapshot),
  from short runs of the one loop (`loop_costs`), in wall and in CPU seconds (the process's own CPU time,
  which other processes on the machine hardly change), and the run's time they account for;
* the machine, with the load average at the start and the end (other processes on a shared CPU slow
  every number down).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

import mechlab.shakespeare.studies  # noqa: F401  (registers the studies)
from mechlab.bench.training import machine_info
from mechlab.core.io import load_torch_dict, write_json_atomic
from mechlab.core.model import build, load_checkpoint
from mechlab.core.studies import get_study
from mechlab.core.train import train
from mechlab.shakespeare.studies import (
    NANOGPT_CPU_SECONDS,
    NANOGPT_CPU_TRAIN_LOSS,
    NANOGPT_CPU_VAL_LOSS,
    SHAKESPEARE_STUDIES,
    full_val_loss,
)
from mechlab.toylm.data import load_shakespeare


def _timed_run(name: str, steps: int, **changes) -> tuple[float, float]:
    """(wall, CPU) seconds of a `steps`-step run of study `name`'s recipe with `changes`, in a temporary run
    folder. CPU seconds (this process, all threads) hardly depend on what else runs on the machine."""
    study = get_study(name)
    cfg = dataclasses.replace(study.train_config, max_steps=steps, warmup_steps=0, decay_steps=None, **changes)
    task = study.make_task(False)
    with tempfile.TemporaryDirectory() as run_dir:
        start, cpu = time.perf_counter(), time.process_time()
        train(build(study.model_config, "cpu"), task, cfg, Path(run_dir), progress=False)
        return time.perf_counter() - start, time.process_time() - cpu


def loop_costs(name: str, steps: int = 20, clock: int = 0) -> dict[str, float]:
    """Seconds per step, per evaluation and per checkpoint (last.pt with the optimizer state, plus a
    weights-only snapshot) of the one loop on study `name`: three short runs, evaluating and
    checkpointing once, at every step, and checkpointing at every step. `clock`: 0 wall, 1 CPU seconds."""
    base = _timed_run(name, steps, eval_every=steps, checkpoint_every=steps, snapshot_every=steps)[clock]
    evals = _timed_run(name, steps, eval_every=1, checkpoint_every=steps, snapshot_every=steps)[clock]
    saves = _timed_run(name, steps, eval_every=steps, checkpoint_every=1, snapshot_every=1)[clock]
    per_eval, per_save = (evals - base) / (steps - 1), (saves - base) / (steps - 1)
    return {"steps": steps, "seconds_per_step": (base - per_eval - per_save) / steps, "seconds_per_eval": per_eval,
            "seconds_per_checkpoint": per_save}


def accounted(costs: dict[str, float], name: str) -> dict[str, float]:
    """The full recipe's time by part, from `loop_costs`: steps, evaluations, checkpoints."""
    cfg = get_study(name).train_config
    n_evals = cfg.max_steps // cfg.eval_every
    n_saves = cfg.max_steps // cfg.checkpoint_every
    parts = {"steps": cfg.max_steps * costs["seconds_per_step"], "evaluations": n_evals * costs["seconds_per_eval"],
             "checkpoints": n_saves * costs["seconds_per_checkpoint"]}
    return {**parts, "total": sum(parts.values()), "n_evals": n_evals, "n_checkpoints": n_saves}


def run_record(name: str, fresh: bool) -> dict:
    """Wall seconds, steps and final losses of study `name`: a fresh run if `fresh`, else the committed one."""
    study = get_study(name)
    val = load_shakespeare().val
    if fresh:
        with tempfile.TemporaryDirectory() as run_dir:
            start, cpu = time.perf_counter(), time.process_time()
            result = study.train(Path(run_dir), progress=False)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
            model = build(study.model_config, "cpu")
            model.load_state_dict(load_torch_dict(Path(run_dir) / "last.pt", "training checkpoint")["state_dict"])
        final, steps, source = result.history[-1], result.steps, "fresh run"
        extra = {"cpu_seconds": cpu_seconds}
    else:
        record = json.loads((study.export_dir / "study.json").read_text())
        model = load_checkpoint(study.export_dir / "model.pt", expected=study.model_config, device="cpu")
        final, steps, seconds, source = record["final"], record["steps"], record["seconds"], str(study.export_dir)
        extra = {}
    model.eval()
    return {"source": source, "steps": steps, "seconds": seconds, "val_loss": final["val_loss"],
            "train_loss_eval": final["train_loss_eval"],
            "full_val_loss": full_val_loss(model, val, study.model_config.n_ctx), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="shakespeare_char_seed0", choices=sorted(SHAKESPEARE_STUDIES))
    parser.add_argument("--train", action="store_true", help="time a fresh training run (else the committed record)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=20, help="steps of each short run that times the loop's parts")
    parser.add_argument("--out", type=Path, default=Path("figures/bench_shakespeare.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    costs, cpu_costs = loop_costs(args.study, args.steps), loop_costs(args.study, args.steps, clock=1)
    run = run_record(args.study, args.train)
    result = {"machine": machine, "study": args.study, "run": run, "loop_costs": costs, "loop_cpu_costs": cpu_costs,
              "accounted": accounted(costs, args.study), "accounted_cpu": accounted(cpu_costs, args.study),
              "nanogpt": {"val_loss": NANOGPT_CPU_VAL_LOSS, "train_loss": NANOGPT_CPU_TRAIN_LOSS,
                          "seconds": NANOGPT_CPU_SECONDS, "machine": "this project's 2-core machine"},
              "ratio_to_nanogpt": run["seconds"] / NANOGPT_CPU_SECONDS,
              "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3]}
    write_json_atomic(args.out, result)
    print(f"machine: {machine['cpu']}, {machine['torch_threads']} torch threads; load average "
          f"{' '.join(machine['loadavg_at_start'])} at start, {' '.join(result['loadavg_at_end'])} at end")
    print(f"{args.study} ({run['source']}): {run['steps']} steps in {run['seconds']:.0f} s, val loss {run['val_loss']:.4f} "
          f"(whole validation split {run['full_val_loss']:.4f}); nanoGPT: {NANOGPT_CPU_VAL_LOSS} in {NANOGPT_CPU_SECONDS:.0f} s "
          f"-> {result['ratio_to_nanogpt']:.2f}x its wall time")
    a = result["accounted"]
    print(f"per step {1000 * costs['seconds_per_step']:.0f} ms, per evaluation {costs['seconds_per_eval']:.2f} s, per "
          f"checkpoint {costs['seconds_per_checkpoint']:.2f} s: steps {a['steps']:.0f} s + {a['n_evals']} evaluations "
          f"{a['evaluations']:.0f} s + {a['n_checkpoints']} checkpoints {a['checkpoints']:.0f} s = {a['total']:.0f} s")
    c = result["accounted_cpu"]
    print(f"in CPU seconds (less sensitive to other load): steps {c['steps']:.0f} s + evaluations {c['evaluations']:.0f} s "
          f"+ checkpoints {c['checkpoints']:.0f} s = {c['total']:.0f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
