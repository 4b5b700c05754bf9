"""Benchmark: `transformer_lens.patching` vs `mechlab.analysis.patching.batched_patch` on the head x position
sweep (`get_act_patch_attn_head_out_by_pos`: n_layers x pos x n_heads patches) of the main
architecture (4 layers, 8 heads, d_model 128; 4 x 25 x 8 = 800 patched indices).

    python -m mechlab.bench.patching [--prompts 1 8 64] [--metric logit_diff exact] [--threads 1]
                                     [--checkpoint PATH] [--out figures/bench_patching.json]
                                     [--figure bench_patching]
    python -m mechlab.bench.patching --plot-only [--out figures/bench_patching.json]  # figure from saved JSON

For each prompt count it times both on the same inputs (best of --repeats), checks the largest
absolute difference between their results, prints a table and writes it as JSON with the
machine description (CPU model, torch threads, torch version). Random initialisation is the
default (timing does not depend on the weights); --checkpoint uses trained weights instead.

Metrics: `logit_diff` reads only the first answer position; `exact` reads all four answer
positions, so fewer computations can be skipped. Both are left in raw units (logits / fraction),
not normalized, so `max_abs_diff` is an absolute error in those units; normalization divides by
a constant and changes no timing.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mechlab.analysis.patching import batched_patch, run_cache, tl_patch
from mechlab.arithmetic.data import MODULUS, Example, bucket_of, read_jsonl
from mechlab.arithmetic.pairs import ExactMatchMetric, first_digit_metric, make_pairs
from mechlab.arithmetic.task import main_model_config
from mechlab.bench.training import machine_info
from mechlab.core.io import write_json_atomic
from mechlab.core.model import build_model, load_checkpoint


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ab = torch.randint(0, 1000, (n, 2), generator=g).tolist()
    return [Example(a, b, MODULUS, bucket_of(a, b)).to_json() for a, b in ab]


def _metric(name: str, pairs, model):
    metric = first_digit_metric(pairs) if name == "logit_diff" else ExactMatchMetric(pairs.clean_answers)
    # Identity calibration: results (and the reported max abs diff) are in the metric's raw units
    # (logits for logit_diff), so the diff is not inflated by a tiny clean - corrupted gap of
    # random weights. Timing does not depend on the calibration.
    metric.clean_value, metric.corrupted_value = 1.0, 0.0
    return metric


def best_time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    """(fastest of `repeats` calls of `fn` in seconds, the last call's result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def time_against_tl(model, corrupted_tokens: torch.Tensor, clean_cache, metric, sweep: str = "z_by_pos",
                    repeats: int = 1) -> dict:
    """One sweep by `transformer_lens.patching` and by `batched_patch` on the same inputs: number
    of patches, best seconds of each (the batched time includes the corrupted run it caches),
    speed-up and the largest absolute difference between their results."""
    t_tl, ref = best_time(lambda: tl_patch(model, corrupted_tokens, clean_cache, metric, sweep), repeats)
    t_b, got = best_time(lambda: batched_patch(model, corrupted_tokens, clean_cache, metric, sweep), repeats)
    return {"patches": ref.numel(), "tl_seconds": t_tl, "batched_seconds": t_b, "speedup": t_tl / t_b,
            "max_abs_diff": (ref - got).abs().max().item()}


def run_benchmark(prompt_counts=(1, 8, 64), metrics=("logit_diff",), repeats: int = 1, checkpoint: Path | None = None,
                  data_dir: Path = Path("data"), sweep: str = "z_by_pos", verbose: bool = True) -> dict:
    model = load_checkpoint(checkpoint, device="cpu") if checkpoint else build_model(main_model_config(), device="cpu")
    model.eval()
    test = data_dir / "test.jsonl"
    rows = read_jsonl(test)[:5000] if test.exists() else synthetic_rows(5000)
    all_pairs = make_pairs(rows, "a", max(prompt_counts), seed=0)
    results = []
    for name in metrics:
        for n in prompt_counts:
            pairs = all_pairs.subset(n)
            metric = _metric(name, pairs, model)
            _, clean_cache = run_cache(model, pairs.clean_tokens)
            row = {"metric": name, "prompts": n} | time_against_tl(model, pairs.corrupted_tokens, clean_cache, metric,
                                                                   sweep, repeats)
            results.append(row)
            if verbose:
                print(f"{name:>10} {n:>4} prompts  TL {row['tl_seconds']:8.2f}s  batched {row['batched_seconds']:7.3f}s  "
                      f"x{row['speedup']:6.1f}  max|diff| {row['max_abs_diff']:.1e}", flush=True)
    return {"sweep": sweep, "model": "main architecture (4 layers, 8 heads, d_model 128)",
            "weights": str(checkpoint) if checkpoint else "random init", "repeats": repeats,
            "machine": machine_info(), "results": results}


def format_table(report: dict) -> str:
    lines = ["| metric | prompts | TransformerLens (s) | batched (s) | speed-up | max abs diff |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['metric']} | {r['prompts']} | {r['tl_seconds']:.2f} | {r['batched_seconds']:.3f} | "
                     f"{r['speedup']:.1f}x | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def figure(report: dict):
    """Grouped bars: seconds for TransformerLens and batched per prompt count (log scale), with
    the speed-up written above each pair."""
    import plotly.graph_objects as go

    fig = go.Figure()
    res = report["results"]
    xs = [f"{r['prompts']} prompt{'s' if r['prompts'] > 1 else ''}<br>{r['metric']}" for r in res]
    fig.add_bar(x=xs, y=[r["tl_seconds"] for r in res], name="transformer_lens.patching")
    fig.add_bar(x=xs, y=[r["batched_seconds"] for r in res], name="mechlab batched_patch",
                text=[f"{r['speedup']:.1f}x" for r in res], textposition="outside")
    m = report["machine"]
    fig.update_layout(barmode="group", yaxis_type="log", yaxis_title="seconds (log scale)",
                      title=f"Head x position activation patching, {report['model'].split(' (')[0]} "
                            f"({res[0]['patches']} patches)<br><sup>{m['cpu']}, {m['torch_threads']} torch thread(s), "
                            f"shared CPU (load average {' '.join(m['loadavg_at_start'])} at start)</sup>")
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--metric", nargs="+", default=["logit_diff"], choices=["logit_diff", "exact"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("figures/bench_patching.json"))
    parser.add_argument("--figure", default="bench_patching", help="figures/NAME.png (+ .svg); '' for none")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figure from --out")
    args = parser.parse_args()
    if args.plot_only:
        from mechlab.core.plotting import save_figure

        save_figure(figure(json.loads(args.out.read_text())), args.figure, require_browser=True)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_benchmark(tuple(args.prompts), tuple(args.metric), args.repeats, args.checkpoint, args.data_dir)
    print()
    print(f"machine: {report['machine']['cpu']}, {report['machine']['logical_cpus']} logical CPUs, "
          f"torch {report['machine']['torch']} with {report['machine']['torch_threads']} threads, "
          f"load average at start {' '.join(report['machine']['loadavg_at_start'])}")
    print(format_table(report))
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")
    if args.figure:
        from mechlab.core.plotting import save_figure

        save_figure(figure(report), args.figure, require_browser=True)
        print(f"wrote figures/{args.figure}.png and .svg")


if __name__ == "__main__":
    main()
