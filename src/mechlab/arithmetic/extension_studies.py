"""Issue 15's extension studies of the arithmetic task, registered like "main" (`mechlab.arithmetic.study`):

    multitask     a + b, a - b and a * b mod 113 in the main architecture (vocabulary + "-" "*")
    multimodulus  a + b mod m for the primes 89..131 but 97 and 127; 97 and 127 only in held-out test sets
    lstm          a 2-layer LSTM on the main data (`mechlab.arithmetic.seq_models`)
    encdec        a 2 + 2-layer encoder-decoder transformer on the main data

    python -m mechlab NAME train [--quick] [--data-dir DIR]   # resumes runs/NAME if interrupted
    python -m mechlab NAME export                             # -> checkpoints/NAME
    python -m mechlab NAME evaluate --save                    # -> checkpoints/NAME/final_eval.json

Every study trains with the main recipe (`TRAIN_CONFIG`, batch `BATCH_SIZE`), so its budget is the
main model's: at most `BUDGET_EXAMPLES` = 28,000 steps x 128 = 3,584,000 examples (its stop rules may
end it sooner, as they may the main run). The two in the main architecture run its steps compiled and
in bfloat16 (`study.FAST_STEPS`, as the replication seeds do), which changes the minutes, not the
budget. The budget is recorded in each export's study.json. The models hold 802,323 (main
architecture), 814,931 (LSTM) and 802,835 (encoder-decoder) parameters.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from mechlab.arithmetic.extensions import (
    HELD_OUT_MODULI,
    MULTITASK_TOKENIZER,
    TRAIN_MODULI,
    ensure_multimodulus_data,
    multitask_rows,
)
from mechlab.arithmetic.seq_models import EncDecConfig, LSTMConfig
from mechlab.arithmetic.study import (
    BATCH_SIZE,
    BUCKET_WEIGHTS,
    FAST_STEPS,
    QUICK_SPLIT_LIMIT,
    TRAIN_CONFIG,
    TRAIN_EVAL_SIZE,
    evaluate_checkpoint,
    make_task,
)
from mechlab.arithmetic.task import ArithmeticSplit, ArithmeticTask, evaluate_split, load_rows, main_model_config
from mechlab.core.model import ModelConfig, build, count_parameters, load_checkpoint
from mechlab.core.studies import Study, register_study
from mechlab.core.train import TrainConfig

BUDGET_EXAMPLES = TRAIN_CONFIG.max_steps * BATCH_SIZE
FAST_RECIPE = dataclasses.replace(TRAIN_CONFIG, **FAST_STEPS)  # the main recipe, compiled bfloat16 steps
EXTENSION_QUICK_STEPS = 20  # a quick extension run (tests, quick notebooks): 20 steps, not core.studies.QUICK_STEPS
MULTIMODULUS_DATA = Path("data/multimodulus")

MULTITASK_BREAKDOWNS = ("bucket", "digits", "op")
MULTITASK_BUCKET_WEIGHTS = BUCKET_WEIGHTS | {"negative": 1.0}  # "negative": a - b < 0
MULTITASK_VAL_SIZE = 10_000  # the validation rows evaluated (the main study's 10,000: evaluations cost the same)
MULTITASK_EVAL_SETS = ("test", "ood_4digit")

MULTIMODULUS_BREAKDOWNS = ("bucket", "modulus")
MULTIMODULUS_EVAL_SETS = ("test",) + tuple(f"test_mod{m}" for m in HELD_OUT_MODULI)


def multitask_config(seed: int = 0) -> ModelConfig:
    """The main architecture with the multi-task vocabulary (the main one, then "-" and "*")."""
    vocab = tuple(MULTITASK_TOKENIZER.vocab)
    return ModelConfig(d_vocab=len(vocab), vocab=vocab, seed=seed)


def multitask_split(data_dir: Path, name: str, limit: int | None = None) -> ArithmeticSplit:
    """The main data set `name` (its first `limit` rows) under + - *, tokenized by the multi-task tokenizer."""
    rows = load_rows(data_dir, name)
    return ArithmeticSplit.from_rows(multitask_rows(rows[:limit] if limit else rows), MULTITASK_TOKENIZER)


def make_multitask_task(data_dir: Path = Path("data"), quick: bool = False, batch_size: int = BATCH_SIZE) -> ArithmeticTask:
    """Training on every main training pair under + - * (300,000 rows), validation on the first
    MULTITASK_VAL_SIZE rows of the validation pairs under + - *; quick: the first QUICK_SPLIT_LIMIT pairs."""
    limit = QUICK_SPLIT_LIMIT if quick else None
    train_split = multitask_split(data_dir, "train", limit)
    val = multitask_split(data_dir, "val", limit)
    n_val = limit or MULTITASK_VAL_SIZE
    val_split = ArithmeticSplit(val.rows[:n_val], val.tokens[:n_val])
    return ArithmeticTask(train_split, val_split, batch_size, seed=TRAIN_CONFIG.seed,
                          bucket_weights=MULTITASK_BUCKET_WEIGHTS, train_eval_size=limit or TRAIN_EVAL_SIZE,
                          breakdowns=MULTITASK_BREAKDOWNS)


def evaluate_multitask(checkpoint_dir: Path, limit: int | None = None, data_dir: Path = Path("data")) -> dict[str, dict]:
    """Exact match per bucket, digit layout and operator on the main test and ood_4digit pairs under + - *."""
    model = load_checkpoint(Path(checkpoint_dir) / "model.pt", expected=multitask_config())
    return {name: evaluate_split(model, multitask_split(Path(data_dir), name, limit), name, by=MULTITASK_BREAKDOWNS)
            for name in MULTITASK_EVAL_SETS}


def make_multimodulus_task(data_dir: Path = MULTIMODULUS_DATA, quick: bool = False,
                           batch_size: int = BATCH_SIZE) -> ArithmeticTask:
    """Training and validation over TRAIN_MODULI (data written to `data_dir` first if missing)."""
    ensure_multimodulus_data(data_dir)
    limit = QUICK_SPLIT_LIMIT if quick else None
    train_split, val_split = (ArithmeticSplit.load(data_dir, name, limit) for name in ("train", "val"))
    return ArithmeticTask(train_split, val_split, batch_size, seed=TRAIN_CONFIG.seed, bucket_weights=BUCKET_WEIGHTS,
                          train_eval_size=limit or TRAIN_EVAL_SIZE, breakdowns=MULTIMODULUS_BREAKDOWNS)


def evaluate_multimodulus(checkpoint_dir: Path, limit: int | None = None,
                          data_dir: Path = MULTIMODULUS_DATA) -> dict[str, dict]:
    """Exact match per bucket and modulus on the test set (training moduli) and each held-out modulus's set."""
    ensure_multimodulus_data(data_dir)
    model = load_checkpoint(Path(checkpoint_dir) / "model.pt", expected=main_model_config())
    return {name: evaluate_split(model, ArithmeticSplit.load(data_dir, name, limit), name, by=MULTIMODULUS_BREAKDOWNS)
            for name in MULTIMODULUS_EVAL_SETS}


def study_record(name: str, model_config: Any, note: str) -> Callable[[], dict]:
    """study.json's fields for study `name`: the note, model, parameter count and budget in examples."""
    return lambda: {"name": name, "note": note, "model": model_config.to_json(),
                    "parameters": count_parameters(build(model_config, "cpu")), "batch_size": BATCH_SIZE,
                    "budget_examples": BUDGET_EXAMPLES, "budget": f"{TRAIN_CONFIG.max_steps:,} steps x {BATCH_SIZE} "
                    "examples, the main recipe's; its stop rules may end the run sooner"}


def extension_study(name: str, model_config: Any, make: Callable[..., Any], evaluate: Callable[..., dict],
                    note: str, train_config: TrainConfig = TRAIN_CONFIG) -> Study:
    """Register study `name`: `model_config` trained by `train_config` on the task `make` builds,
    evaluated by `evaluate` into final_eval.json, exported to checkpoints/<name>/ with `note` in study.json."""
    return register_study(Study(name, model_config, train_config, make_task=make, evaluate=evaluate,
                                export_dir=Path("checkpoints") / name, quick_steps=EXTENSION_QUICK_STEPS,
                                eval_file="final_eval.json", record=study_record(name, model_config, note)))


def main_data_task(quick: bool, data_dir: Path = Path("data"), **options) -> ArithmeticTask:
    """The main study's task (main data, bucket weights, batch size)."""
    return make_task(Path(data_dir), quick, **options)


def main_data_evaluation(model_config: Any) -> Callable[..., dict]:
    """The main study's evaluation sets for a model of `model_config`."""
    return lambda checkpoint_dir, limit=None, data_dir=Path("data"): evaluate_checkpoint(
        Path(checkpoint_dir) / "model.pt", Path(data_dir), limit=limit, expected=model_config)


MULTITASK = extension_study(
    "multitask", multitask_config(),
    lambda quick, data_dir=Path("data"), **options: make_multitask_task(Path(data_dir), quick, **options),
    evaluate_multitask,
    "a + b, a - b and a * b mod 113 (the main pairs under each operator) in the main architecture",
    FAST_RECIPE)
MULTIMODULUS = extension_study(
    "multimodulus", main_model_config(),
    lambda quick, data_dir=MULTIMODULUS_DATA, **options: make_multimodulus_task(Path(data_dir), quick, **options),
    evaluate_multimodulus,
    f"a + b mod m for m in {list(TRAIN_MODULI)}; held out: {list(HELD_OUT_MODULI)} (test_mod<m> only)",
    FAST_RECIPE)
LSTM = extension_study("lstm", LSTMConfig(), main_data_task, main_data_evaluation(LSTMConfig()),
                       "a 2-layer LSTM on the main data and recipe")
ENCDEC = extension_study("encdec", EncDecConfig(), main_data_task, main_data_evaluation(EncDecConfig()),
                         "a 2 + 2-layer encoder-decoder transformer on the main data and recipe")
