"""Benchmark: the explorer's full update of the page for one prompt (generated answer with its token
probabilities, the attention heatmap of all 32 heads, the logit lens), as `Explorer.update` computes it
plus the JSON encoding of its two figures (what Gradio sends to the page).

    python -m mechlab.bench.explore [--prompts 20] [--repeats 3] [--threads 1]
                                    [--checkpoint checkpoints/main/model.pt] [--out figures/bench_explore.json]

Prompts are the first --prompts rows of the test split. Each is timed --repeats times (the fastest
kept: the machine may be shared), once plainly and once with head L0H0 mean-ablated (the live
intervention), and split into the model's work (`run_prompt`: greedy decoding, attention, logit lens),
the figures, and their encoding. The report gives the median over prompts of each, against the goal
(GOAL_MS on 2 CPU cores), with the machine and its load average before and after.

One torch thread, as the app runs (`apps.explore.TORCH_THREADS`): its forward passes are of one
prompt through a small model, which a second thread does not speed up, and on a shared 2-core machine
two threads wait on each other (on this machine under load: ~5 s per update instead of ~0.1 s).
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import plotly.io as pio
import torch

from mechlab.apps.explore import DEFAULT_CHECKPOINT, TORCH_THREADS, Explorer, attention_figure, lens_figure
from mechlab.arithmetic.data import read_jsonl
from mechlab.bench.patching import best_time
from mechlab.bench.training import machine_info
from mechlab.core.io import write_json_atomic

GOAL_MS = 300.0  # a prompt's full update, on 2 CPU cores
INTERVENTION = {"components": ["L0H0"], "method": "mean"}


def time_update(explorer: Explorer, name: str, prompt: str, repeats: int, **intervention) -> dict:
    """Best-of-`repeats` milliseconds of one full update of `prompt`: total, and its parts (model, figures,
    encoding). A prompt the model cannot read raises `InputError`."""
    em = explorer.model(name)

    def model_part():
        clean, intervened, _ = explorer.run(name, prompt, **intervention)
        return intervened or clean

    model_s, run = best_time(model_part, repeats)
    figures_s, figs = best_time(lambda: (attention_figure(em, run, "all"), lens_figure(em, run)), repeats)
    encode_s, _ = best_time(lambda: [pio.to_json(f) for f in figs], repeats)

    def full():
        _, attention, lens = explorer.update(name, prompt, **intervention)
        return [pio.to_json(attention), pio.to_json(lens)]

    total_s, _ = best_time(full, repeats)
    return {"prompt": prompt, "total_ms": 1e3 * total_s, "model_ms": 1e3 * model_s, "figures_ms": 1e3 * figures_s,
            "encode_ms": 1e3 * encode_s}


def summarize(rows: list[dict]) -> dict:
    """Median over prompts of each timing, and the slowest total."""
    keys = ("total_ms", "model_ms", "figures_ms", "encode_ms")
    return {f"median_{k}": statistics.median(r[k] for r in rows) for k in keys} | {
        "max_total_ms": max(r["total_ms"] for r in rows), "prompts": len(rows)}


def run_benchmark(checkpoint: Path = DEFAULT_CHECKPOINT, data_dir: Path = Path("data"), n_prompts: int = 20,
                  repeats: int = 3, verbose: bool = True) -> dict:
    load_before = os.getloadavg()
    explorer = Explorer({"main": Path(checkpoint)}, data_dir=data_dir)
    prompts = [row["prompt"] for row in read_jsonl(Path(data_dir) / "test.jsonl")[:n_prompts]]
    explorer.update("main", prompts[0], **INTERVENTION)  # load the model and the mean-ablation reference once
    report = {"goal_ms": GOAL_MS, "checkpoint": str(checkpoint), "repeats": repeats, "machine": machine_info()}
    for label, intervention in (("plain", {}), ("L0H0 mean-ablated", INTERVENTION)):
        rows = [time_update(explorer, "main", p, repeats, **intervention) for p in prompts]
        report[label] = {"summary": summarize(rows), "rows": rows}
        if verbose:
            s = report[label]["summary"]
            print(f"{label:>18}: median {s['median_total_ms']:.1f} ms (model {s['median_model_ms']:.1f}, figures "
                  f"{s['median_figures_ms']:.1f}, encoding {s['median_encode_ms']:.1f}), slowest {s['max_total_ms']:.1f} ms "
                  f"over {s['prompts']} prompts; goal {GOAL_MS:.0f} ms", flush=True)
    report["loadavg_before"], report["loadavg_after"] = list(load_before), list(os.getloadavg())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=TORCH_THREADS, help="torch threads (default: the app's)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("figures/bench_explore.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    report = run_benchmark(args.checkpoint, args.data_dir, args.prompts, args.repeats)
    print(f"load average before {report['loadavg_before']}, after {report['loadavg_after']} "
          f"({report['machine']['logical_cpus']} logical CPUs, {report['machine']['torch_threads']} torch threads)")
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
