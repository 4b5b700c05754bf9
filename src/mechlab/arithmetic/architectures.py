"""The decoder-only transformer beside an LSTM and an encoder-decoder on the same data and budget
(issue 15, extension 4; the models: `mechlab.arithmetic.seq_models`, the studies `lstm`, `encdec`).

* `states_at_equals`: what each stage of any of the three models writes at `=`, by label: the
  transformer's residual stream points (`analysis.probes.residual_points`), the LSTM's embedding and
  layer outputs, the encoder-decoder's encoder and decoder layer outputs (their `states_at_equals`).
* `readout_by_stage`: the same residue probes as notebook 08 (`features.residue_readout`: a mod m,
  b mod m, (a+b) mod m as 113 classes and on each circle) fitted at every stage, so "what each
  represents where" is one table per model.
* `comparison_table`: exact match overall, per bucket and per operand digit layout, with
  parameters, training examples and minutes, one row per model.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from mechlab.analysis.probes import residual_points
from mechlab.arithmetic.features import READOUT_FEATURES, activations_at_equals, residue_readout
from mechlab.arithmetic.replication import layout_weakness
from mechlab.arithmetic.task import ArithmeticSplit, breakdown
from mechlab.arithmetic.tokenizer import MODEL_INPUT_LEN


@torch.no_grad()
def states_at_equals(model, rows: list[dict]) -> dict[str, torch.Tensor]:
    """label -> [n, d_model], the activation at `=` of each stage of `model` (module docstring) on
    each row's prompt."""
    if hasattr(model, "states_at_equals"):  # the LSTM and the encoder-decoder
        return model.states_at_equals(ArithmeticSplit.from_rows(rows).tokens[:, :MODEL_INPUT_LEN])
    points = residual_points(model.cfg.n_layers)
    return dict(zip(points, activations_at_equals(model, rows, list(points.values()))))


def readout_by_stage(model, rows: list[dict], features: Sequence[str] = READOUT_FEATURES, seed: int = 0) -> pd.DataFrame:
    """`residue_readout` of `features` at every stage of `model` (`states_at_equals`) on `rows`: one
    row per (feature, target, point) with the held-out score."""
    states = states_at_equals(model, rows)
    return residue_readout(torch.stack(list(states.values())), rows, {}, list(states), features, seed=seed)


def comparison_table(models: dict[str, dict]) -> pd.DataFrame:
    """One row per model from {name: {"metrics": `evaluate_split` metrics of the test set (prefix
    "test"), "parameters", "examples", "minutes"}}: those three, test exact match, each bucket's
    and each operand digit layout's exact match, and the weakest layout (`replication.layout_weakness`)."""
    rows = {}
    for name, record in models.items():
        metrics, layout = record["metrics"], layout_weakness(record["metrics"])
        rows[name] = {"parameters": record["parameters"], "examples": record["examples"], "minutes": record["minutes"],
                      "test exact": layout["overall"],
                      **{f"bucket {k}": v for k, v in breakdown(metrics, "test", by="bucket").items()},
                      **{f"layout {k}": v for k, v in layout["by_layout"].items()},
                      "weakest layout": layout["weakest"]}
    return pd.DataFrame.from_dict(rows, orient="index")
