"""Emergence during training (issue 15, seed extension 2): the main study's measurements over a
checkpoint series of one main-recipe run, and when each piece appears.

Study "emergence" is the main recipe at seed 1 with compiled bfloat16 steps: the same run as point
seed=1 of sweep main_seeds (`mechlab.arithmetic.sweeps`), so

    python -m mechlab emergence export --run-dir runs/sweeps/main_seeds/seed=1   # that sweep's run
    make train-emergence                                                          # or train it afresh

Its export holds, besides model.pt and metrics.json, `emergence.json` (the measurements below at
every 500-step snapshot of the run, `series_measures`) and `series.pt` (N_SERIES of the snapshots in
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

`onsets` says, per measurement, when it covered half (ONSET_FRACTION) of its net change over the
run and in which evaluation interval it changed most; `timing_against_exit` places each onset
before, during or after the plateau exit (`replication.plateau_exit`).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from mechlab.analysis.ablation import Component, ablation_sweep, reference_activations
from mechlab.analysis.attention import attention_patterns
from mechlab.arithmetic.features import activations_at_equals, residue_grid_rows, residue_readout
from mechlab.arithmetic.replication import answer_writers, component_dla, plateau_exit
from mechlab.arithmetic.roles import head_role_table
from mechlab.arithmetic.study import MAIN, evaluate_checkpoint
from mechlab.arithmetic.sweeps import FAST_STEPS
from mechlab.arithmetic.task import ArithmeticSplit, evaluate_split
from mechlab.arithmetic.tokenizer import MODEL_INPUT_LEN
from mechlab.core.io import load_torch_dict, write_json_atomic
from mechlab.core.model import build
from mechlab.core.runs import snapshot_paths
from mechlab.core.studies import register_study

SEED = 1  # main_seeds' first point
N_SERIES = 12  # float16 snapshots committed (1.6 MB each)
ONSET_FRACTION = 0.5  # a measurement's onset: the first step at which it has made this share of its net change
UNLABELLED = ("mixed", "resting")  # head labels that name no role
MEASURES = ("test_exact", "a_mass", "b_mass", "a_drop", "b_drop", "role_heads", "mlp_share", "residue_acc")

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


def reader_drops(model, heads: Sequence[int], data: ProbeData) -> tuple[float, dict[int, float]]:
    """(test exact match, {layer-0 head: test exact match lost when it is mean-ablated})."""
    score = partial(evaluate_split, split=data.test, prefix="ablated")
    reference = reference_activations(model, data.reference.tokens[:, :MODEL_INPUT_LEN])
    sweep = ablation_sweep(model, score, [Component("head", 0, h) for h in heads], ("mean",), reference,
                           metric="ablated_exact").set_index("component")
    return float(sweep.loc["none", "score"]), {h: float(sweep.loc[f"L0H{h}", "drop"]) for h in heads}


@torch.no_grad()
def snapshot_measures(model, data: ProbeData) -> dict[str, float]:
    """The MEASURES of one model (module docstring). The readers are found as in
    `replication.operand_readers` (the layer-0 head with the most mass on a, and on b), but only
    those two heads are ablated."""
    model.eval()
    tokens = data.test.tokens[:data.n_prompts, :MODEL_INPUT_LEN]
    roles = head_role_table(attention_patterns(model, tokens), tokens)
    layer0 = roles[roles.layer == 0].set_index("index")
    reader = {operand: int(layer0[f"mass:{operand}"].idxmax()) for operand in ("a", "b")}
    exact, drops = reader_drops(model, sorted(set(reader.values())), data)
    return {"test_exact": exact,
            "a_mass": float(layer0.loc[reader["a"], "mass:a"]), "b_mass": float(layer0.loc[reader["b"], "mass:b"]),
            "a_drop": drops[reader["a"]], "b_drop": drops[reader["b"]],
            "role_heads": int((~roles["label"].isin(UNLABELLED)).sum()),
            "mlp_share": answer_writers(component_dla(model, data.test, data.n_prompts))["share"],
            "residue_acc": residue_accuracy(model, data.grid_rows)}


def snapshot_model(path: Path, model_config) -> tuple[int, torch.nn.Module]:
    """(step, model of `model_config`) from a run's weights-only snapshot step_NNNNNN.pt."""
    snap = load_torch_dict(path, "snapshot")
    model = build(model_config, "cpu")
    model.load_state_dict(snap["state_dict"])
    return snap["step"], model


def measure_series(models: Iterable[tuple[int, torch.nn.Module]], data: ProbeData,
                   total: int | None = None) -> pd.DataFrame:
    """One row per (step, model): the step and its MEASURES, with a progress bar."""
    return pd.DataFrame([{"step": step} | snapshot_measures(model, data)
                         for step, model in tqdm(models, total=total, desc="snapshots")])


def series_measures(run_dir: Path, model_config, data_dir: Path, out: Path | None = None, **load) -> pd.DataFrame:
    """`measure_series` over every snapshot of the run in `run_dir` (models of `model_config`),
    scored on `ProbeData.load(data_dir, **load)`; written to `out` (JSON) if given."""
    paths = snapshot_paths(run_dir)
    if not paths:
        raise FileNotFoundError(f"{run_dir} holds no step_*.pt snapshots: train with snapshots first")
    table = measure_series((snapshot_model(p, model_config) for p in paths), ProbeData.load(data_dir, **load), len(paths))
    if out is not None:
        write_json_atomic(out, table.to_dict(orient="records"))
    return table


# --- when does each piece appear? ---------------------------------------------------------------

def onset_step(steps: Sequence[int], values: Sequence[float], fraction: float = ONSET_FRACTION) -> int | None:
    """The first step at which `values` has made `fraction` of its net change (last - first), or
    None when there is no net change."""
    start, change = values[0], values[-1] - values[0]
    if change == 0:
        return None
    return next(s for s, v in zip(steps, values) if (v - start) / change >= fraction)


def steepest_interval(steps: Sequence[int], values: Sequence[float]) -> tuple[int, int, float]:
    """(from_step, to_step, share): the consecutive pair of snapshots whose change, in the direction
    of the net change, is largest, and that change as a share of the net change."""
    change = values[-1] - values[0]
    sign = 1.0 if change >= 0 else -1.0
    deltas = [sign * (b - a) for a, b in zip(values, values[1:])]
    i = max(range(len(deltas)), key=deltas.__getitem__)
    return steps[i], steps[i + 1], deltas[i] / abs(change) if change else float("nan")


def onsets(table: pd.DataFrame, measures: Sequence[str] = MEASURES) -> pd.DataFrame:
    """Per measurement: its first and last value, onset step (`onset_step`) and steepest interval
    with its share of the net change; sorted by onset."""
    rows = []
    for name in measures:
        steps, values = table["step"].tolist(), table[name].astype(float).tolist()
        start, end, share = steepest_interval(steps, values)
        rows.append({"measure": name, "first": values[0], "last": values[-1], "onset": onset_step(steps, values),
                     "steepest_from": start, "steepest_to": end, "steepest_share": share})
    return pd.DataFrame(rows).sort_values("onset", na_position="last").reset_index(drop=True)


def timing_against_exit(order: pd.DataFrame, history: Sequence[dict]) -> tuple[pd.DataFrame, dict | None]:
    """`order` (from `onsets`) with a `when` column: "before", "at" or "after" the plateau exit of
    `history` (`plateau_exit`: the evaluation interval from_step..to_step; "at" when the onset is
    to_step), and the exit itself (None, and every `when` "no plateau", when the run had none)."""
    exit_ = plateau_exit(history)

    def when(step: int | None) -> str:
        if exit_ is None or step is None:
            return "no plateau" if exit_ is None else "no change"
        return "before" if step <= exit_["from_step"] else "at" if step <= exit_["to_step"] else "after"

    return order.assign(when=order["onset"].map(when)), exit_


def attention_after_jump_verdict(timed: pd.DataFrame, attention: Sequence[str] = ("a_mass", "b_mass")) -> tuple[str, str]:
    """The seed's "attention patterns become interpretable only after the jump": held when every
    `attention` measurement's onset is at or after the plateau exit, failed when any is before it."""
    rows = timed.set_index("measure").loc[list(attention)]
    before = rows[rows["when"] == "before"]
    evidence = ", ".join(f"{m} onset step {int(r.onset)} ({r.when} the exit)" for m, r in rows.iterrows())
    if (rows["when"] == "no plateau").any():
        return "untested", "the run has no plateau to exit"
    return ("failed" if len(before) else "held"), evidence


def load_measures(path: Path) -> pd.DataFrame:
    """An emergence.json written by `series_measures`."""
    return pd.DataFrame(json.loads(Path(path).read_text()))


# --- the study -----------------------------------------------------------------------------------

MODEL_CONFIG = dataclasses.replace(MAIN.model_config, seed=SEED)
QUICK_DATA = {"n_eval": 64, "n_reference": 64, "grid_stride": 25, "n_prompts": 64}  # a quick export's measurements


def export_measures(run_dir: Path, out_dir: Path, quick: bool) -> None:
    """The export's emergence.json: `series_measures` of every snapshot (on QUICK_DATA when quick)."""
    series_measures(run_dir, MODEL_CONFIG, Path("data"), Path(out_dir) / "emergence.json", **(QUICK_DATA if quick else {}))


EMERGENCE = register_study(dataclasses.replace(
    MAIN, name="emergence", model_config=MODEL_CONFIG,
    train_config=dataclasses.replace(MAIN.train_config, seed=SEED, **FAST_STEPS),
    evaluate=lambda checkpoint_dir, limit=None, data_dir=Path("data"): evaluate_checkpoint(
        Path(checkpoint_dir) / "model.pt", Path(data_dir), limit=limit, expected=MODEL_CONFIG),
    export_dir=Path("checkpoints/emergence"), n_series=N_SERIES, after_export=export_measures,
    record=lambda: {"name": "emergence", "note": "the main recipe at seed 1 in compiled bfloat16 (sweep "
                    "main_seeds' point seed=1), with its snapshot series and their measurements"}))
