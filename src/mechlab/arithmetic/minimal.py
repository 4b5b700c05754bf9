"""The minimal-model grid (sweeps `main_minimal` and `main_widths`, issue 14): how small a
main-architecture model can be and still learn `a + b mod 113`, and the design document's claims
about it judged on the points trained so far.

    sweeps = Path("checkpoints/sweeps")
    table = pd.concat([minimal_table(load_results(sweeps / f"{name}.json"), sweeps / name, Path("data"))
                       for name in ("main_minimal", "main_widths")])
    smallest_reaching(table, 0.99)   # the point with the fewest parameters at >= 99% test exact match
    design_claims(table)             # each claim: held, failed or untested, and on which points
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mechlab.arithmetic.replication import layout_weakness
from mechlab.arithmetic.task import ArithmeticSplit, evaluate_split, main_model_config
from mechlab.core.model import load_checkpoint

TARGETS = (0.95, 0.99)  # the design document asks for 95%; the main model is held to 99%
CLAIM_TARGET = 0.95  # "the minimum configuration for 95% accuracy"
CLAIMED_CEILING = 0.82  # "with 2 layers or 4 heads, maximum achievable accuracy is 82%"


def point_record(export_dir: Path, test: ArithmeticSplit) -> dict:
    """One exported point's test exact match, weakest operand digit layout and best validation exact
    match during training (from the export's metrics.json)."""
    model = load_checkpoint(export_dir / "model.pt").eval()
    weakness = layout_weakness(evaluate_split(model, test, "test"))
    history = json.loads((export_dir / "metrics.json").read_text())
    return {"test exact": weakness["overall"], "weakest layout": weakness["weakest"],
            "weakest layout exact": weakness["weakest_exact"], "best val exact": max(r["val_exact"] for r in history)}


def minimal_table(results: list[dict], exports_dir: Path, data_dir: Path, limit: int | None = None) -> pd.DataFrame:
    """One row per finished sweep point (`core.sweep.load_results` rows): layers, heads per layer, total
    heads, residual width (d_model: the main model's where the sweep does not vary it), parameters,
    steps, minutes and why it stopped, then `point_record` of its export in `exports_dir / <point id>`
    (NaN where the point was not exported). Sorted by parameter count."""
    test = ArithmeticSplit.load(Path(data_dir), "test", limit)
    main_width = main_model_config().d_model
    rows = []
    for result in results:
        export = Path(exports_dir) / result["id"]
        measured = point_record(export, test) if (export / "model.pt").exists() else {}
        rows.append({"point": result["id"], "layers": result["n_layers"], "heads per layer": result["n_heads"],
                     "total heads": result["n_layers"] * result["n_heads"],
                     "d_model": result.get("d_model", main_width), "parameters": result["parameters"],
                     "steps": result["steps"], "minutes": result["seconds"] / 60,
                     "stopped because": result["stopped_because"], **measured})
    columns = ["point", "layers", "heads per layer", "total heads", "d_model", "parameters", "steps", "minutes",
               "stopped because", "test exact", "weakest layout", "weakest layout exact", "best val exact"]
    return pd.DataFrame(rows, columns=columns).sort_values("parameters").set_index("point")


def smallest_reaching(table: pd.DataFrame, target: float) -> pd.Series | None:
    """The row of `minimal_table` with the fewest parameters whose test exact match is >= `target`
    (None if no point reaches it)."""
    reached = table[table["test exact"] >= target]
    return None if reached.empty else reached.sort_values("parameters").iloc[0]


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
    - "with 4 heads, at most 82%" (4 total heads or fewer): likewise.
    """
    measured = table.dropna(subset=["test exact"])
    too_small = measured[(measured["layers"] < 3) | (measured["total heads"] < 6)]
    two_layers = measured[measured["layers"] == 2]
    four_heads = measured[measured["total heads"] <= 4]
    claims = {
        "at least 3 layers and 6 total heads are needed for 95%": _verdict(too_small, too_small["test exact"] >= CLAIM_TARGET),
        "2 layers reach at most 82%": _verdict(two_layers, two_layers["test exact"] > CLAIMED_CEILING),
        "4 heads or fewer reach at most 82%": _verdict(four_heads, four_heads["test exact"] > CLAIMED_CEILING),
    }
    return pd.DataFrame(claims).T.rename_axis("claim (design document)")
