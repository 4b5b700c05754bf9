"""Emergence during training (issue 15, seed extension 2): the main study's measurements over a
checkpoint series of one main-recipe run, and when each piece appears.

Study "emergence" is the main recipe at seed 1 with compiled bfloat16 steps: the same run as point
seed=1 of sweep main_seeds (`mechlab.arithmetic.sweeps`), so

    python -m mechlab emergence export --run-dir runs/sweeps/main_seeds/seed=1   # that sweep's run
    make train-emergence                                                          # or train it afresh

Its export holds, besides model.pt and metrics.json, `emergence.json` (the measurements below at
every 500-step snapshot of the run, `measure_run`) and `series.pt` (N_SERIES of the snapshots in
float16), so notebook 14 re-measures snapshots from the committed files and draws them.

Measurements of one model (`snapshot_measures`), each one of the phase notebooks' own calls:

    test_exact      exact match on the first n_eval test rows (`task.evaluate_split`)
    a_mass, b_mass  attention mass of layer 0's a-reader on a and of its b-reader on b, from the
                    answer-predicting positions (the heads with the most mass on a and on b, notebook
                    02's `head_role_table`, as `replication.operand_readers` chooses them)
    a_drop, b_drop  test exact match lost when that head is mean-ablated (notebook 04)
    role_heads      heads (all layers) whose `head_role_table` label names a role, that is neither
                    "mixed" nor "resting"
    mlp_share       the last MLP's share of the answer's direct logit attribution (notebook 05)
    residue_acc     held-out accuracy of a linear probe for (a+b) mod 113 (113 classes) at '=' after
                    the last layer, fitted on the residue grid (notebook 08's `residue_readout`)

`onsets` says, per measurement, when it went half way to its extreme (`analysis.induction.jump_step`,
the induction-head study's rule) and in which 500-step interval it moved most; `timing_against_jump`
places each onset before, at or after the run's accuracy jump (its largest rise of validation exact
match, which may or may not end a plateau: `accuracy_jump`), and `attention_after_jump_verdict` judges
the design document's claim on the operand readers.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from mechlab.analysis.attention import attention_patterns
from mechlab.analysis.induction import jump_step
from mechlab.arithmetic.features import activations_at_equals, residue_grid_rows, residue_readout
from mechlab.arithmetic.replication import answer_writers, component_dla, layer0_table, operand_readers, plateau_exit
from mechlab.arithmetic.roles import head_role_table
from mechlab.arithmetic.study import FAST_STEPS, MAIN, evaluate_checkpoint, largest_rise
from mechlab.arithmetic.task import ArithmeticSplit, evaluate_split
from mechlab.arithmetic.tokenizer import MODEL_INPUT_LEN
from mechlab.core.io import write_json_atomic
from mechlab.core.runs import load_snapshot, snapshot_paths
from mechlab.core.studies import register_study

SEED = 1  # main_seeds' first point
N_SERIES = 12  # float16 snapshots committed (1.6 MB each)
UNLABELLED = ("mixed", "resting")  # head labels that name no role
MEASURES = ("test_exact", "a_mass", "b_mass", "a_drop", "b_drop", "role_heads", "mlp_share", "residue_acc")
# Smallest move from the first snapshot's value to the extreme that counts as a change (`jump_step`):
# below it a measurement is taken to have stayed where it was.
MIN_CHANGE = {"test_exact": 0.1, "a_mass": 0.1, "b_mass": 0.1, "a_drop": 0.1, "b_drop": 0.1, "role_heads": 2,
              "mlp_share": 0.1, "residue_acc": 0.1, "a_share_lost": 0.1, "b_share_lost": 0.1}
# A reader's drop cannot exceed the model's exact match, so it grows with accuracy whatever the reader
# does; its share of the accuracy it removes (drop / test_exact) says when the model comes to depend on it.
RELATIVE = {"a_share_lost": "a_drop", "b_share_lost": "b_drop"}


@dataclasses.dataclass
class ProbeData:
    """What `snapshot_measures` scores every model on: test rows, mean-ablation reference rows and
    the residue grid the probe is fitted on."""

    test: ArithmeticSplit
    reference: ArithmeticSplit
    grid_rows: list[dict]
    n_prompts: int

    @classmethod
    def load(cls, data_dir: Path, n_eval: int = 2000, n_reference: int = 1000, grid_stride: int = 3,
             n_prompts: int = 1000) -> "ProbeData":
        """The first `n_eval` test rows (the first `n_prompts` of them for attention and DLA), the
        first `n_reference` validation rows, and every `grid_stride`-th row of the 113 x 113 residue
        grid (stride 3: 4,257 prompts, every residue of a + b about 38 times)."""
        return cls(ArithmeticSplit.load(Path(data_dir), "test", n_eval),
                   ArithmeticSplit.load(Path(data_dir), "val", n_reference), residue_grid_rows()[::grid_stride], n_prompts)


def residue_accuracy(model, grid_rows: list[dict]) -> float:
    """Held-out accuracy of the 113-class probe for (a+b) mod m at '=' after the last layer."""
    hook = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    table = residue_readout(activations_at_equals(model, grid_rows, [hook]), grid_rows, {}, ["last"],
                            features=["(a+b) mod m"])
    return float(table.loc[table.target == "class", "held-out"].iloc[0])


@torch.no_grad()
def snapshot_measures(model, data: ProbeData) -> dict[str, float]:
    """The MEASURES of one model (module docstring). The readers are chosen as in notebook 13's
    replication table (`replication.operand_readers`), and only they are ablated."""
    model.eval()
    tokens = data.test.tokens[:data.n_prompts, :MODEL_INPUT_LEN]
    roles = head_role_table(attention_patterns(model, tokens), tokens)
    layer0 = roles[roles.layer == 0]
    reader_heads = sorted({int(layer0.loc[layer0[f"mass:{op}"].idxmax(), "index"]) for op in ("a", "b")})
    readers = operand_readers(layer0_table(model, data.test, data.reference, data.n_prompts, heads=reader_heads))
    return {"test_exact": evaluate_split(model, data.test, "test")["test_exact"],
            "a_mass": readers["a"]["on_operand"], "b_mass": readers["b"]["on_operand"],
            "a_drop": readers["a"]["drop"], "b_drop": readers["b"]["drop"],
            "role_heads": int((~roles["label"].isin(UNLABELLED)).sum()),
            "mlp_share": answer_writers(component_dla(model, data.test, data.n_prompts))["share"],
            "residue_acc": residue_accuracy(model, data.grid_rows)}


def measure_series(models: Iterable[tuple[int, torch.nn.Module]], data: ProbeData,
                   total: int | None = None) -> pd.DataFrame:
    """One row per (step, model): the step and its MEASURES, with a progress bar."""
    return pd.DataFrame([{"step": step} | snapshot_measures(model, data)
                         for step, model in tqdm(models, total=total, desc="snapshots")])


def measure_run(run_dir: Path, model_config, data_dir: Path, out: Path | None = None, **load) -> pd.DataFrame:
    """`measure_series` over every snapshot of the run in `run_dir` (models of `model_config`),
    scored on `ProbeData.load(data_dir, **load)`; written to `out` (JSON) if given."""
    paths = snapshot_paths(run_dir)
    if not paths:
        raise FileNotFoundError(f"{run_dir} holds no step_*.pt snapshots: train with snapshots first")
    table = measure_series((load_snapshot(p, model_config) for p in paths), ProbeData.load(data_dir, **load), len(paths))
    if out is not None:
        write_json_atomic(out, table.to_dict(orient="records"))
    return table


def load_measures(path: Path) -> pd.DataFrame:
    """An emergence.json written by `measure_run`, with the RELATIVE columns added (`with_shares_lost`)."""
    return with_shares_lost(pd.DataFrame(json.loads(Path(path).read_text())))


def with_shares_lost(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with each RELATIVE column: a reader's drop as a share of test exact match (0 where that is 0)."""
    exact = table["test_exact"].where(table["test_exact"] > 0)
    return table.assign(**{name: (table[drop] / exact).fillna(0.0) for name, drop in RELATIVE.items()})


# --- when does each piece appear? ---------------------------------------------------------------

def onsets(table: pd.DataFrame, measures: Sequence[str] = MEASURES) -> pd.DataFrame:
    """Per measurement: its first and last value; `onset`, the step at which it has gone half way
    (JUMP_FRACTION) from its first value to its extreme in the direction it ended up moving
    (`analysis.induction.jump_step`; missing when that move is below MIN_CHANGE); and its steepest
    interval: the consecutive pair of snapshots with the largest move in that direction
    (`study.largest_rise`), with that move's share of the whole way. Sorted by onset."""
    rows = []
    for name in measures:
        records = table[["step", name]].to_dict("records")
        first, last = records[0][name], records[-1][name]
        falling = last < first
        onset = jump_step(records, name, decreasing=falling, min_change=MIN_CHANGE.get(name, 0.0))
        signed = [{"step": r["step"], "v": -r[name] if falling else r[name]} for r in records]
        before, after = largest_rise(signed, "v")
        way = max(r["v"] for r in signed) - signed[0]["v"]
        rows.append({"measure": name, "first": first, "last": last, "onset": onset,
                     "steepest_from": before["step"], "steepest_to": after["step"],
                     "steepest_share": (after["v"] - before["v"]) / way if way else float("nan")})
    out = pd.DataFrame(rows).astype({"onset": "Int64"})
    return out.sort_values("onset", na_position="last", kind="stable").reset_index(drop=True)


def accuracy_jump(history: Sequence[dict], metric: str = "val_exact") -> dict:
    """The run's accuracy jump: the evaluation interval where `metric` rose most (`study.largest_rise`):
    from_step, to_step, before, after, and `plateau_exit`, whether that rise ends a plateau by the
    replication table's rule (`replication.plateau_exit`)."""
    before, after = largest_rise(list(history), metric)
    return {"from_step": before["step"], "to_step": after["step"], "before": before[metric], "after": after[metric],
            "plateau_exit": plateau_exit(history, metric) is not None}


def timing_against_jump(order: pd.DataFrame, history: Sequence[dict]) -> tuple[pd.DataFrame, dict]:
    """`order` (from `onsets`) with a `when` column: "before", "at" or "after" the accuracy jump of
    `history` (`accuracy_jump`; "at" when the onset is the jump's to_step) or "no change" without an
    onset; and the jump."""
    jump = accuracy_jump(history)

    def when(step) -> str:
        if pd.isna(step):
            return "no change"
        return "before" if step <= jump["from_step"] else "at" if step <= jump["to_step"] else "after"

    return order.assign(when=[when(step) for step in order["onset"]]), jump


def attention_after_jump_verdict(timed: pd.DataFrame, attention: Sequence[str] = ("a_mass", "b_mass")) -> tuple[str, str]:
    """The design document's "attention patterns remain random until [late], then suddenly snap ...,
    coinciding with the accuracy jump", for the `attention` measurements of `timing_against_jump`:
    failed when any onset is before the jump, held when every onset is at it (its evaluation
    interval), partial when they come after it; untested when one has no onset. The evidence gives
    each onset and the share of its change made in its steepest interval (near 1: sudden)."""
    rows = timed.set_index("measure").loc[list(attention)]
    if (rows["when"] == "no change").any():
        return "untested", "; ".join(f"{m}: {r.when}" for m, r in rows.iterrows())
    evidence = "; ".join(f"{m} onset step {int(r.onset):,} ({r.when} the jump), {r.steepest_share:.0%} of its change in "
                         f"steps {int(r.steepest_from):,}-{int(r.steepest_to):,}" for m, r in rows.iterrows())
    if (rows["when"] == "before").any():
        return "failed", evidence
    return ("held" if (rows["when"] == "at").all() else "partial"), evidence


# --- the study -----------------------------------------------------------------------------------

MODEL_CONFIG = dataclasses.replace(MAIN.model_config, seed=SEED)
QUICK_DATA = {"n_eval": 64, "n_reference": 64, "grid_stride": 25, "n_prompts": 64}  # a quick export's measurements


def export_measures(run_dir: Path, out_dir: Path, quick: bool) -> None:
    """The export's emergence.json: `measure_run` on every snapshot (on QUICK_DATA when quick), with
    the data sets in data/ (exports run from the repository root, as `make` runs them)."""
    measure_run(run_dir, MODEL_CONFIG, Path("data"), Path(out_dir) / "emergence.json", **(QUICK_DATA if quick else {}))


EMERGENCE = register_study(dataclasses.replace(
    MAIN, name="emergence", model_config=MODEL_CONFIG,
    train_config=dataclasses.replace(MAIN.train_config, seed=SEED, **FAST_STEPS),
    evaluate=lambda checkpoint_dir, limit=None, data_dir=Path("data"): evaluate_checkpoint(
        Path(checkpoint_dir) / "model.pt", Path(data_dir), limit=limit, expected=MODEL_CONFIG),
    export_dir=Path("checkpoints/emergence"), n_series=N_SERIES, after_export=export_measures,
    record=lambda: {"name": "emergence", "note": "the main recipe at seed 1 in compiled bfloat16 (sweep "
                    "main_seeds' point seed=1), with its snapshot series and their measurements"}))
