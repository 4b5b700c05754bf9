"""The main study (`a + b mod 113 =` as characters): its training recipe, the recipe variants of
notebook 01, and the analysis notebooks' model loader. Registered as study "main":

    python -m mechlab main train  [--quick] [--run-dir runs/main]   # resumes if interrupted
    python -m mechlab main export [--run-dir runs/main] [--out checkpoints/main]
    python -m mechlab main evaluate [--out checkpoints/main] --save  # writes final_eval.json there
    python -m mechlab main sweep  [--variant NAME ...] [--out checkpoints/main]   # notebook 01's variants

`make train` runs train, export and evaluate; `make all` uses the committed `checkpoints/main/`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mechlab.arithmetic.task import ArithmeticSplit, ArithmeticTask, evaluate_split, main_model_config
from mechlab.core.io import load_torch_dict, write_json_atomic
from mechlab.core.model import build_model, load_checkpoint
from mechlab.core.runs import first_reaching
from mechlab.core.studies import Study, register_study
from mechlab.core.train import TrainConfig, TrainResult, train

BATCH_SIZE = 128
# Training-time sampling weight per bucket. The scarce, easy buckets carry the first learning signal
# (early probes: with uniform sampling only ~0.6% of pairs have a + b < 113 and exact match stayed
# at ~1% for 8 epochs; with the scarce buckets included the model left its plateau after ~2 epochs),
# so they are drawn more often.
BUCKET_WEIGHTS = {"no_wrap": 2.0, "single_wrap": 1.5, "edge": 1.0, "large_wrap": 1.0}
# Linear warm-up, then cosine decay from 1e-3 to its floor (1e-5) at step 28,000. The validation exact
# match climbs mostly in the last third, while the learning rate is low (notebook 01). The patience
# of early stopping (16 evaluations = 8,000 steps) outlasts the noisy high-learning-rate phase.
TRAIN_CONFIG = TrainConfig(
    max_steps=28_000, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), warmup_steps=500, schedule="cosine",
    min_lr_frac=0.01, grad_clip=1.0, eval_every=500, checkpoint_every=500,
    early_stopping_patience=16, stop_metric="val_exact", stop_value=0.995, stop_patience=2, seed=0,
)
# The same steps compiled and in bfloat16 autocast: the training benchmark's fastest CPU step (2.7x eager
# float32 at batch 256, figures/bench_training.json). The runs trained after the committed main model use it.
FAST_STEPS = {"precision": "bfloat16", "compile": True}
# The first recipe: the same cosine over 12,000 steps to a floor of 5e-5 (95.3% validation exact
# match, notebook 01). The sweep below was run against it.
FIRST_RECIPE = dataclasses.replace(TRAIN_CONFIG, max_steps=12_000, min_lr_frac=0.05)
# What else was tried, for notebook 01's recipe table. Each variant changes one thing in the first
# recipe (same data, seed and learning-rate schedule) and trains for SWEEP_STEPS steps, so its
# record can be laid beside that run's first SWEEP_STEPS steps. name -> (description, changes);
# "bucket_weights" changes the sampling, every other key a TrainConfig field.
SWEEP_STEPS = 2_000
RECIPE_VARIANTS: dict[str, tuple[str, dict]] = {
    "uniform_sampling": ("uniform sampling (no bucket weights)", {"bucket_weights": None}),
    "seed_lr": ("lr 3e-4 (the seed's)", {"lr": 3e-4}),  # the original spec's lr (description as committed)
}
QUICK_SPLIT_LIMIT = 512  # quick mode trains and validates on the first rows only
TRAIN_EVAL_SIZE = 2000  # training rows the task evaluates on (train_exact) at each evaluation
EVAL_SETS = ("test", "ood_4digit", "ood_mod97", "ood_mod127", "ood_edge", "ood_adversarial")


def make_task(data_dir: Path, quick: bool = False, bucket_weights: dict[str, float] | None = BUCKET_WEIGHTS,
              length_balance: float = 0.0, rebalance_from: int = 0, seed: int = TRAIN_CONFIG.seed,
              batch_size: int = BATCH_SIZE) -> ArithmeticTask:
    """The main task; `length_balance` and `rebalance_from` draw rare digit layouts more often from
    that step on (see ArithmeticTask; the recipe does not, notebook 01 shows that trial); `seed` draws
    the batches (the recipe's seed unless a sweep varies it)."""
    limit = QUICK_SPLIT_LIMIT if quick else None
    train_split = ArithmeticSplit.load(data_dir, "train", limit)
    val_split = ArithmeticSplit.load(data_dir, "val", limit)
    return ArithmeticTask(train_split, val_split, batch_size, seed=seed, bucket_weights=bucket_weights,
                          train_eval_size=limit or TRAIN_EVAL_SIZE, length_balance=length_balance, rebalance_from=rebalance_from)


def train_main(data_dir: Path, run_dir: Path, quick: bool = False, progress: bool = True,
               max_steps: int | None = None, decay_steps: int | None = None, min_lr_frac: float | None = None,
               stop_after_steps: int | None = None, length_balance: float = 0.0, rebalance_from: int = 0) -> TrainResult:
    """Train (or resume training) the main model into `run_dir`.

    `max_steps` and `decay_steps` override the recipe's length and the end of its cosine decay from
    the resumed step on, `min_lr_frac` its floor; `stop_after_steps` pauses the run at that step;
    `length_balance` and `rebalance_from` go to `make_task`.
    """
    overrides = {"max_steps": max_steps, "decay_steps": decay_steps, "min_lr_frac": min_lr_frac}
    return MAIN.train(run_dir, quick, progress, stop_after_steps, {k: v for k, v in overrides.items() if v is not None},
                      data_dir=data_dir, length_balance=length_balance, rebalance_from=rebalance_from)


def train_variant(name: str, data_dir: Path, run_root: Path, quick: bool = False, progress: bool = True) -> TrainResult:
    """Train recipe variant `name` (see RECIPE_VARIANTS) for SWEEP_STEPS steps into `run_root/name`
    (resumable like any run)."""
    if name not in RECIPE_VARIANTS:
        raise ValueError(f"unknown recipe variant {name!r}; choose from {sorted(RECIPE_VARIANTS)}")
    changes = dict(RECIPE_VARIANTS[name][1])
    bucket_weights = changes.pop("bucket_weights", BUCKET_WEIGHTS)
    cfg = dataclasses.replace(MAIN.recipe(quick=True) if quick else FIRST_RECIPE, **changes)
    model = build_model(main_model_config(seed=cfg.seed))
    steps = cfg.max_steps if quick else SWEEP_STEPS
    return train(model, make_task(data_dir, quick, bucket_weights), cfg, Path(run_root) / name, progress=progress,
                 stop_after_steps=steps)


def continuation_part(history: list[dict], parent: list[dict], metric: str = "val_exact") -> list[dict]:
    """The rows of a run continued from `parent`'s run, from the last step where the two records
    still agree (a continuation repeats its parent's rows up to where it branched off)."""
    parent_at = {row["step"]: row[metric] for row in parent}
    start = max((row["step"] for row in history if parent_at.get(row["step"]) == row[metric]), default=0)
    return [row for row in history if row["step"] >= start]


def largest_rise(history: list[dict], metric: str = "val_exact") -> tuple[dict, dict]:
    """The two consecutive metrics rows between which `metric` rose most (where a run left its plateau)."""
    pairs = list(zip(history, history[1:]))
    if not pairs:
        raise ValueError("a training record needs at least two evaluations to have a rise")
    return max(pairs, key=lambda pair: pair[1][metric] - pair[0][metric])


def step_rate(history: list[dict], first_step: int, last_step: int) -> float:
    """Training steps per second between two evaluated steps of a record (wall `seconds` as the loop
    records them), e.g. over the part of a resumed run after its restart."""
    rows = {row["step"]: row["seconds"] for row in history}
    return (last_step - first_step) / (rows[last_step] - rows[first_step])


def recipe_table(records: dict[str, list[dict]], at_step: int, targets: tuple[float, ...] = (0.5, 0.99),
                 batch_sizes: dict[str, int] | None = None) -> list[dict]:
    """One row per recipe (name -> metrics history): training speed, validation exact match at
    `at_step`, the best reached, and the step and training minutes at which each target was first
    reached (None if never). With `batch_sizes` (name -> examples per step), also the millions of
    training examples seen by then, so recipes with other batch sizes compare."""
    table = []
    for name, history in records.items():
        at = [row for row in history if row["step"] <= at_step]
        row = {"recipe": name, "steps run": history[-1]["step"],
               "steps per second": round(history[-1]["step"] / history[-1]["seconds"], 2),
               f"val exact at step {at_step:,}": at[-1]["val_exact"] if at else None,
               "best val exact": max(r["val_exact"] for r in history)}
        for target in targets:
            hit = first_reaching(history, "val_exact", target)
            row[f"step to {target:.0%}"] = hit["step"] if hit else None
            row[f"minutes to {target:.0%}"] = round(hit["seconds"] / 60, 1) if hit else None
            if batch_sizes is not None:
                row[f"examples to {target:.0%} (M)"] = hit["step"] * batch_sizes[name] / 1e6 if hit else None
        table.append(row)
    return table


def load_analysis_model(checkpoint, allow_random: bool = False, device: str = "cpu"):
    """The main model for the analysis notebooks (02-05).

    `checkpoint` is an exported checkpoint (checkpoints/main/model.pt, config checked) or a
    training snapshot (runs/main/step_NNNNNN.pt / last.pt: a dict with "state_dict"). If it does
    not exist and `allow_random` (quick mode), a randomly initialised main model is returned
    instead, with a printed warning, so the notebooks still run end to end.
    Returns (model, description).
    """
    path = Path(checkpoint)
    if not path.exists():
        if not allow_random:
            raise FileNotFoundError(f"no checkpoint at {path}: train and export the main model "
                                    "(`make train`), or pass a runs/main/step_*.pt snapshot")
        print(f"WARNING: no checkpoint at {path}; using a randomly initialised main model (quick mode only)")
        model, what = build_model(main_model_config(), device=device), "random init (no checkpoint)"
    else:
        ckpt = load_torch_dict(path, "model checkpoint or snapshot")
        if "config" in ckpt:
            model = load_checkpoint(path, expected=main_model_config(), device=device)
        else:
            model = build_model(main_model_config(), device=device)
            model.load_state_dict(ckpt["state_dict"])
        what = f"{path} (step {ckpt.get('step', '?')})"
    model.eval()
    return model, what


def evaluate_checkpoint(checkpoint: Path, data_dir: Path, sets: tuple[str, ...] = EVAL_SETS,
                        limit: int | None = None, expected=None) -> dict[str, dict[str, float]]:
    """Greedy exact match (and loss) of a saved model on each named data set. `expected`: the model's
    config (default the main model's; the LSTM and encoder-decoder studies pass theirs)."""
    model = load_checkpoint(checkpoint, expected=expected or main_model_config())
    return {name: evaluate_split(model, ArithmeticSplit.load(data_dir, name, limit), name) for name in sets}


def write_recipe_record(name: str, description: str, history: list[dict], command: str, out_dir: Path,
                        batch_size: int = BATCH_SIZE) -> Path:
    """A record of a recipe that was tried, for the recipe tables of notebooks 01 and 13:
    out_dir/sweep/<name>.json (committed beside the model) with its metrics history and the command
    that reproduces it."""
    record = Path(out_dir) / "sweep" / f"{name}.json"
    write_json_atomic(record, {"description": description, "history": history, "command": command,
                               "batch_size": batch_size})
    return record


MAIN_RECORD = "main recipe (committed model)"  # the committed run's name among `recipe_records`


def recipe_records(metrics: Path, sweep_dir: Path, seed_runs: Path | None = None) -> dict[str, dict]:
    """Every recorded run of a main-model recipe, by name, for the recipe tables of notebooks 01 and 13:
    the committed run (`MAIN_RECORD`, its metrics.json `metrics`), each record `write_recipe_record` left
    in `sweep_dir` (named by its description), and with `seed_runs` (checkpoints/sweeps/main_seeds) the
    main recipe at each other seed, one folder `seed=N` with a metrics.json each. Every value holds
    "history", "batch_size", "command" and "other_seed" (True for the seed runs)."""
    records = {MAIN_RECORD: {"history": json.loads(Path(metrics).read_text()), "batch_size": BATCH_SIZE,
                             "command": "python -m mechlab main train", "other_seed": False}}
    for path in sorted(Path(sweep_dir).glob("*.json")):
        record = json.loads(path.read_text())
        records[record["description"]] = {"history": record["history"], "command": record["command"],
                                          "batch_size": record.get("batch_size", BATCH_SIZE), "other_seed": False}
    for path in sorted(Path(seed_runs).glob("seed=*")) if seed_runs is not None else []:
        records[f"main recipe, {path.name} (compiled bfloat16)"] = {
            "history": json.loads((path / "metrics.json").read_text()), "batch_size": BATCH_SIZE,
            "command": "python -m mechlab sweep main_seeds", "other_seed": True}
    return records


def write_sweep_record(name: str, result: TrainResult, out_dir: Path) -> Path:
    """Notebook 01's record of recipe variant `name` (see `write_recipe_record`)."""
    return write_recipe_record(name, RECIPE_VARIANTS[name][0], result.history,
                               f"python -m mechlab main sweep --variant {name}", out_dir)


MAIN = register_study(Study(
    "main", main_model_config(), TRAIN_CONFIG,
    make_task=lambda quick, data_dir=Path("data"), **options: make_task(Path(data_dir), quick, **options),
    evaluate=lambda checkpoint_dir, limit=None, data_dir=Path("data"): evaluate_checkpoint(
        Path(checkpoint_dir) / "model.pt", Path(data_dir), limit=limit),
    export_dir=Path("checkpoints/main"), eval_file="final_eval.json"))
