"""The one command line: train, export and evaluate any registered study.

    python -m mechlab <study> train    [--quick] [--run-dir runs/<study>] [--threads N]   # resumes if interrupted
                                       [--set FIELD=VALUE ...]   # change recipe fields (TrainConfig)
    python -m mechlab <study> export   [--quick] [--run-dir runs/<study>] [--out <export dir>]
    python -m mechlab <study> evaluate [--out <export dir>] [--limit N] [--save]
    python -m mechlab main sweep [--variant NAME ...] [--out checkpoints/main]   # notebook 01's recipe variants
    python -m mechlab sweep NAME [--quick] [--workers N] [--address ray://HOST:10001] [--where FIELD=VALUE ...]
    python -m mechlab data [DIR]   # regenerate the main task's data sets and check them against the manifest

Studies: main (the arithmetic model, notebooks 01-05), multitask, multimodulus, lstm, encdec (issue 15's
extensions, mechlab.arithmetic.extension_studies; multimodulus writes its data to data/multimodulus), grokking_mlp, grokking_mlp_seed,
grokking_transformer, three_layer, three_layer_wd01 (notebooks 10-12),
toylm_zero_layer, toylm_attn_only_1l, toylm_attn_only_2l, toylm_attn_only_2l_ctx256, toylm_attn_only_2l_lr1e2,
toylm_attn_only_2l_ctx256_lr1e2 (notebooks 20-21), shakespeare_char_seed0,
shakespeare_char_seed1, shakespeare_char_seed2, shakespeare_char_gpu (GPU only) (notebook 22; they all read
Tiny Shakespeare from $MECHLAB_SHAKESPEARE or ../shared/data/tinyshakespeare.txt, see mechlab.toylm.data). `export` writes everything
committed under the study's export dir (for the grokking runs also series.pt / progress.json).
`evaluate` prints its results; with --save it also writes them into the export dir (the main
study's final_eval.json). `sweep NAME` trains every point of a registered sweep (mechlab.core.sweep:
main_seeds, main_minimal, main_widths, grokking_mlp_width) that has not finished, into runs/sweeps/NAME/, and
writes its results table to checkpoints/sweeps/NAME.json (a --quick sweep: runs/sweeps/NAME/quick/results.json).
Mistakes a user can make (a missing or damaged file, edited data, a run
of another recipe, an invalid recipe) end with one line naming what is wrong, not a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

import mechlab.arithmetic.emergence  # noqa: F401  (registers emergence)
import mechlab.arithmetic.extension_studies  # noqa: F401  (registers multitask, multimodulus, lstm, encdec)
import mechlab.arithmetic.study as main_study
import mechlab.arithmetic.sweeps  # noqa: F401  (registers the main study's sweeps)
import mechlab.modular.studies  # noqa: F401  (registers the modular studies)
import mechlab.modular.sweeps  # noqa: F401  (registers the modular studies' sweeps)
import mechlab.shakespeare.studies  # noqa: F401  (registers the Shakespeare GPT studies)
import mechlab.toylm.studies  # noqa: F401  (registers the toy language models)
from mechlab.arithmetic import data
from mechlab.arithmetic.tokenizer import TokenizerError
from mechlab.core.io import CheckpointFileError, ChecksumMismatchError, write_json_atomic
from mechlab.core.model import CheckpointMismatchError
from mechlab.core.studies import STUDIES, get_study
from mechlab.core.sweep import SWEEPS, SweepError, get_sweep, run_sweep
from mechlab.core.train import InvalidRecipeError, RunMismatchError, TrainConfig

# Errors that mean "the input is wrong", not "the code is wrong": reported in one line.
USER_ERRORS = (data.DataError, TokenizerError, CheckpointFileError, ChecksumMismatchError, CheckpointMismatchError,
               InvalidRecipeError, RunMismatchError, SweepError, FileNotFoundError, NotADirectoryError,
               IsADirectoryError)

COMMANDS = ("train", "export", "evaluate", "sweep")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count of steps, examples or threads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def recipe_change(text: str) -> tuple[str, object]:
    """argparse type: FIELD=VALUE for a TrainConfig field, VALUE parsed as JSON (2e-3, true, null,
    [0.9, 0.95]) or else kept as text (bfloat16)."""
    field, sep, value = text.partition("=")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if not sep or field not in fields:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE with FIELD one of {', '.join(sorted(fields))}, "
                                         f"got {text!r}")
    parsed = json_or_text(value)
    return field, tuple(parsed) if isinstance(parsed, list) else parsed


def json_or_text(value: str) -> object:
    """A command-line value: parsed as JSON (2e-3, 3, true, null, [0.9, 0.95]), or else the text itself (bfloat16)."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mechlab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=sorted(STUDIES))
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--quick", action="store_true", help="a few steps on a small slice of the data (tests)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--run-dir", type=Path, help="training run folder (default runs/<study>)")
    p.add_argument("--out", type=Path, help="export folder (default: the study's committed checkpoint folder)")
    p.add_argument("--limit", type=positive_int, help="evaluate: only the first N examples of each data set (main)")
    p.add_argument("--data-dir", type=Path, help="main, multitask, lstm, encdec: the data folder (default data); multimodulus: its own (default data/multimodulus)")
    p.add_argument("--save", action="store_true", help="evaluate: also write the results into the export folder")
    main = p.add_argument_group("main study, train")
    main.add_argument("--max-steps", type=int, help="override the recipe's horizon (cosine schedule) from now on")
    main.add_argument("--decay-steps", type=int, help="re-aim the cosine decay's end (constant floor after it)")
    main.add_argument("--min-lr-frac", type=float, help="override the cosine's floor (fraction of the peak lr)")
    main.add_argument("--stop-after-steps", type=positive_int, help="pause the run at this step")
    p.add_argument("--set", nargs="+", metavar="FIELD=VALUE", default=[], type=recipe_change,
                   help="train: change recipe fields, e.g. --set lr=2e-3 precision=bfloat16 compile=true")
    main.add_argument("--batch-size", type=positive_int, help="examples per step (default 128)")
    main.add_argument("--length-balance", type=float, help="draw rare digit layouts more often (0-1)")
    main.add_argument("--rebalance-from", type=int, help="... from this step on")
    main.add_argument("--variant", nargs="*", default=list(main_study.RECIPE_VARIANTS),
                      choices=sorted(main_study.RECIPE_VARIANTS), help="sweep: which variants")
    return p


def sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mechlab sweep", description="Run a registered sweep "
                                "(mechlab.core.sweep): finished points are skipped, interrupted ones resumed.")
    p.add_argument("name", choices=sorted(SWEEPS))
    p.add_argument("--quick", action="store_true", help="each point a quick run (results: runs/sweeps/NAME/quick/)")
    p.add_argument("--workers", type=positive_int, default=1, help="local processes (default 1: this one)")
    p.add_argument("--address", help="run the points as Ray tasks on this cluster (e.g. ray://HOST:10001, or auto)")
    p.add_argument("--where", nargs="+", action="extend", metavar="FIELD=VALUE", type=grid_value,
                   help="only the points with these grid values or seeds, as the point ids write them "
                   "(n_layers=3 n_layers=4 seed=0); one field's values are alternatives, "
                   "different fields must all match")
    return p


def grid_value(text: str) -> tuple[str, str]:
    """argparse type: FIELD=VALUE selecting sweep points (a grid field or seed), VALUE as a point id writes it."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE (a grid field or seed), got {text!r}")
    return name, value


def sweep_main(argv: list[str]) -> None:
    """`python -m mechlab sweep NAME ...`"""
    args = sweep_parser().parse_args(argv)
    sweep = dataclasses.replace(get_sweep(args.name), quick=args.quick)
    where: dict[str, list] = {}
    for name, value in args.where or []:  # n_layers=3 n_layers=4 -> {"n_layers": [3, 4]}
        where.setdefault(name, []).append(value)
    run_sweep(sweep, args.address, args.workers, where or None)
    print(f"wrote {sweep.table_path}")


def given(args: argparse.Namespace, *names: str) -> dict:
    """The options among `names` that were given on the command line."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def headline(metrics: dict) -> dict:
    """`metrics` without its breakdowns (keys with a "/", e.g. test_exact/bucket_edge), nested dicts too."""
    return {k: headline(v) if isinstance(v, dict) else v for k, v in metrics.items() if "/" not in k}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["data"]:
        data.main(argv[1:])
        return
    if argv[:1] == ["sweep"]:
        sweep_main(argv[1:])
        return
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    study = get_study(args.study)
    out = args.out or study.export_dir
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    if args.command == "train":
        result = study.train(args.run_dir, args.quick, progress=sys.stderr.isatty(),
                             stop_after_steps=args.stop_after_steps,
                             recipe_changes=given(args, "max_steps", "decay_steps", "min_lr_frac") | dict(args.set),
                             **given(args, "data_dir", "length_balance", "rebalance_from", "batch_size"))
        print(f"stopped after {result.steps} steps ({result.seconds / 60:.1f} min): {result.stopped_because}")
    elif args.command == "export":
        print(f"exported {study.export(args.run_dir, out, args.quick)}")
    elif args.command == "evaluate":
        results = study.evaluate(out, args.limit, **given(args, "data_dir"))
        if args.save and study.eval_file:
            write_json_atomic(out / study.eval_file, results)
            print(f"wrote {out / study.eval_file}")
        print(json.dumps(headline(results), indent=1))
    else:
        if study is not main_study.MAIN:
            raise SystemExit(f"sweep: only the main study has recipe variants, not {study.name!r}")
        for name in args.variant:
            result = main_study.train_variant(name, args.data_dir or Path("data"),
                                              (args.run_dir or study.run_dir).parent / "sweep", args.quick)
            print(f"{name}: {result.steps} steps ({result.seconds / 60:.1f} min), "
                  f"wrote {main_study.write_sweep_record(name, result, out)}")


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as error:
        raise SystemExit(f"error: {error}") from None
