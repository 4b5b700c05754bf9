"""The minimal-model grid (sweeps `main_minimal`, `main_minimal_1layer_fp32` and `main_widths`, issue 14): how small a
main-architecture model can be and still learn `a + b mod 113`, and the design document's claims
about it judged on the points trained so far.

    table = grid_table(("main_minimal", "main_widths"), Path("checkpoints/sweeps"), Path("data"))
    smallest_reaching(table, 0.99)   # the point with the fewest parameters at >= 99% test exact match
    design_claims(table)             # each claim: held, failed or untested, and on which points
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from mechlab.arithmetic.replication import layout_weakness
from mechlab.arithmetic.study import TRAIN_CONFIG
from mechlab.arithmetic.task import ArithmeticSplit, evaluate_split, main_model_config
from mechlab.core.model import ModelConfig, load_checkpoint
from mechlab.core.train import load_history

TARGETS = (0.95, 0.99)  # the design document asks for 95%; the main model is held to 99%
CLAIM_TARGET = TARGETS[0]  # "the minimum configuration for 95% accuracy"
CLAIMED_CEILING = 0.82  # "with 2 layers or 4 heads, maximum achievable accuracy is 82%"
MODEL_FIELDS = ("n_layers", "n_heads", "d_model")  # the model fields these sweeps vary
COLUMNS = ["point", "layers", "heads per layer", "total heads", "d_model", "seed", "parameters", "steps", "minutes",
           "stopped because", "test exact", "weakest layout", "weakest layout exact", "best val exact"]


def point_config(result: dict) -> ModelConfig:
    """The model config of a sweep results row: the main architecture at the row's seed, with the
    row's layers, heads per layer and (where the sweep varies it) width."""
    changes = {name: result[name] for name in MODEL_FIELDS if name in result}
    return dataclasses.replace(main_model_config(seed=result["seed"]), **changes)


def point_record(export_dir: Path, test: ArithmeticSplit, expected: ModelConfig) -> dict:
    """One exported point's test exact match, weakest operand digit layout and best validation exact
    match during training. The checkpoint must hold the `expected` config (a model exported under
    another point's name is refused: CheckpointMismatchError)."""
    model = load_checkpoint(Path(export_dir) / "model.pt", expected=expected).eval()
    weakness = layout_weakness(evaluate_split(model, test, "test"))
    history = load_history(export_dir)
    return {"test exact": weakness["overall"], "weakest layout": weakness["weakest"],
            "weakest layout exact": weakness["weakest_exact"], "best val exact": max(r["val_exact"] for r in history)}


def minimal_table(results: list[dict], exports_dir: Path, data_dir: Path, limit: int | None = None) -> pd.DataFrame:
    """One row per finished sweep point (`core.sweep.load_results` rows): layers, heads per layer, total
    heads, residual width (d_model: the main model's where the sweep does not vary it), seed, parameters,
    steps, minutes and why it stopped, then `point_record` of its export in `exports_dir / <point id>`
    (NaN where the point was not exported). Sorted by parameter count."""
    test = ArithmeticSplit.load(Path(data_dir), "test", limit)
    rows = []
    for result in results:
        export, config = Path(exports_dir) / result["id"], point_config(result)
        measured = point_record(export, test, config) if (export / "model.pt").exists() else {}
        rows.append({"point": result["id"], "layers": config.n_layers, "heads per layer": config.n_heads,
                     "total heads": config.n_layers * config.n_heads, "d_model": config.d_model,
                     "seed": result["seed"], "parameters": result["parameters"], "steps": result["steps"],
                     "minutes": result["seconds"] / 60, "stopped because": result["stopped_because"], **measured})
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("parameters").set_index("point")


def grid_table(names: tuple[str, ...], sweeps_dir: Path, data_dir: Path, limit: int | None = None) -> pd.DataFrame:
    """`minimal_table` of every sweep in `names` whose results table `sweeps_dir/<name>.json` exists
    (its exports in `sweeps_dir/<name>/`), in one frame sorted by parameter count, with each point's
    sweep and the precision its steps ran in (the sweep's recipe over the main recipe's)."""
    tables = []
    for name in names:
        path = Path(sweeps_dir) / f"{name}.json"
        if path.exists():
            results = json.loads(path.read_text())
            precision = results["sweep"]["recipe"].get("precision", TRAIN_CONFIG.precision)
            tables.append(minimal_table(results["rows"], Path(sweeps_dir) / name, data_dir, limit)
                          .assign(sweep=name, precision=precision))
    if not tables:
        return minimal_table([], sweeps_dir, data_dir, limit).assign(sweep=None, precision=None)
    return pd.concat(tables).sort_values("parameters")


def smallest_reaching(table: pd.DataFrame, target: float) -> pd.Series | None:
    """The row of `minimal_table` with the fewest parameters whose test exact match is >= `target`
    (the lowest seed's where seeds of one shape tie; None if no point reaches it)."""
    reached = table[table["test exact"] >= target]
    return None if reached.empty else reached.sort_values(["parameters", "seed"]).iloc[0]


def _verdict(points: pd.DataFrame, fails: pd.Series) -> dict:
    if points.empty:
        return {"verdict": "untested", "evidence": "no such point trained yet"}
    evidence = ", ".join(f"{p}: {v:.4f}" for p, v in points["test exact"].items())
    return {"verdict": "failed" if fails.any() else "held", "evidence": evidence}


def design_claims(table: pd.DataFrame) -> pd.DataFrame:
    """The design document's claims, each judged on the points of `minimal_table` it is about:

    - "at least 3 layers and 6 total heads" for 95%: fails if a point with fewer layers or fewer total
      heads reaches CLAIM_TARGET test exact match;
    - "with 2 layers, at most 82%": fails if a 2-layer point's test exact match exceeds CLAIMED_CEILING;
    - "with 4 heads, at most 82%": likewise, read both ways the sentence allows (4 heads or fewer in
      all, and 4 heads or fewer per layer).
    """
    measured = table.dropna(subset=["test exact"])
    too_small = measured[(measured["layers"] < 3) | (measured["total heads"] < 6)]
    two_layers = measured[measured["layers"] == 2]
    four_in_all = measured[measured["total heads"] <= 4]
    four_per_layer = measured[measured["heads per layer"] <= 4]
    claims = {
        "at least 3 layers and 6 total heads are needed for 95%": _verdict(too_small, too_small["test exact"] >= CLAIM_TARGET),
        "2 layers reach at most 82%": _verdict(two_layers, two_layers["test exact"] > CLAIMED_CEILING),
        "4 heads or fewer in all reach at most 82%": _verdict(four_in_all, four_in_all["test exact"] > CLAIMED_CEILING),
        "4 heads or fewer per layer reach at most 82%": _verdict(four_per_layer,
                                                                four_per_layer["test exact"] > CLAIMED_CEILING),
    }
    return pd.DataFrame(claims).T.rename_axis("claim (design document)")
