"""The decoder-only transformer beside an LSTM and an encoder-decoder on the same data and budget
(issue 15, extension 4; the models: `mechlab.arithmetic.seq_models`, the studies `lstm`, `encdec`).

* `states_at_equals`: what each stage of any of the three models writes at `=`, by label: the
  transformer's residual stream points (`analysis.probes.residual_points`), the LSTM's embedding and
  layer outputs, the encoder-decoder's encoder and decoder layer outputs (`layer_outputs`).
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

from mechlab.analysis.probes import cache_activations, residual_points
from mechlab.arithmetic.features import READOUT_FEATURES, residue_readout
from mechlab.arithmetic.task import ArithmeticSplit, breakdown
from mechlab.arithmetic.tokenizer import EQUALS_POS, MODEL_INPUT_LEN


@torch.no_grad()
def states_at_equals(model, split: ArithmeticSplit) -> dict[str, torch.Tensor]:
    """label -> [n, d_model], the activation at `=` of each stage of `model` (module docstring)."""
    tokens = split.tokens[:, :MODEL_INPUT_LEN]
    if hasattr(model, "layer_outputs"):  # the LSTM (every position) and the encoder-decoder (at `=` only)
        outputs = model.layer_outputs(tokens)
        return {label: out[:, EQUALS_POS] if out.shape[1] > 1 else out[:, 0] for label, out in outputs.items()}
    points = residual_points(model.cfg.n_layers)
    at_equals = torch.full((len(tokens), 1), EQUALS_POS)
    cache = cache_activations(model, tokens, list(points.values()), positions=at_equals)
    return {label: cache[hook][:, 0] for label, hook in points.items()}


def readout_by_stage(model, rows: list[dict], features: Sequence[str] = READOUT_FEATURES, seed: int = 0) -> pd.DataFrame:
    """`residue_readout` of `features` at every stage of `model` (`states_at_equals`) on `rows`: one
    row per (feature, target, point) with the held-out score."""
    states = states_at_equals(model, ArithmeticSplit.from_rows(rows))
    return residue_readout(torch.stack(list(states.values())), rows, {}, list(states), features, seed=seed)


def comparison_table(models: dict[str, dict]) -> pd.DataFrame:
    """One row per model from {name: {"metrics": `evaluate_split` metrics of the test set (prefix
    "test"), "parameters", "examples", "minutes"}}: those three, test exact match, each bucket's
    and each operand digit layout's exact match, and the weakest layout."""
    rows = {}
    for name, record in models.items():
        metrics = record["metrics"]
        layouts = breakdown(metrics, "test", by="digits")
        rows[name] = {"parameters": record["parameters"], "examples": record["examples"], "minutes": record["minutes"],
                      "test exact": metrics["test_exact"],
                      **{f"bucket {k}": v for k, v in breakdown(metrics, "test", by="bucket").items()},
                      **{f"layout {k}": v for k, v in layouts.items()},
                      "weakest layout": min(layouts, key=layouts.get)}
    return pd.DataFrame(rows).T
