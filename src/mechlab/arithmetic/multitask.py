"""Which components of the multi-task model serve which operation (issue 15, extension 1).

The study `multitask` (`mechlab.arithmetic.extension_studies`) trains the main architecture on
`a + b`, `a - b` and `a * b mod 113`. Two measurements answer "which heads and neurons are shared,
which are task-specific, and does each task have its own residue account":

* `per_task_ablation`: each component mean-ablated (`analysis.ablation.ablation_sweep`, the reference
  values from prompts of every operator), its exact-match drop per operator; `component_sharing`
  calls a component **shared** when its drop is critical (>= CRITICAL_DROP, notebook 04's class) for
  two or more operators, **specific** to the one operator it is critical for, and **unused** otherwise.
* `neuron_selectivity`: each MLP neuron's mean absolute activation at `=` per operator and the
  operator it prefers, with how strongly (its largest mean over the next largest): a description of
  where neurons fire, not a causal test (the component ablations are that).
* `answer_probes`: per operator, linear probes at `=` for the answer's residue (113 classes and
  each circle k) at every residual point, each scored on held-out prompts of its own operator and,
  unchanged, on the other operators' prompts (`probe_transfer`). A probe that reads another
  operator's answer as well as its own means one shared residue code; one that fails there, a code of
  its own per task.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import pandas as pd
import torch

from mechlab.analysis.ablation import CRITICAL_DROP, Component, ablation_sweep, group_drops
from mechlab.analysis.probes import residual_points
from mechlab.arithmetic.data import MODULUS
from mechlab.arithmetic.extensions import MULTITASK_OPERATORS, MULTITASK_TOKENIZER
from mechlab.arithmetic.features import Feature, activations_at_equals, residue_readout
from mechlab.arithmetic.task import BREAKDOWNS, ArithmeticSplit, evaluate_split, operator_of

ANSWER = Feature("answer", "residue", "answer", MODULUS)  # (a op b) mod 113, whichever the operator
SELECTIVE = 2.0  # a neuron is selective for an operator when its mean |activation| there is at least this times any other's


def op_group(op: str) -> str:
    """The `evaluate_split` group of operator `op` ("op_+", from the "op" breakdown's tag)."""
    return f"{BREAKDOWNS['op'][0]}{op}"


def per_task_ablation(model, split: ArithmeticSplit, components: Sequence[Component], reference: dict[str, torch.Tensor],
                      operators: str = MULTITASK_OPERATORS) -> pd.DataFrame:
    """`ablation_sweep` (mean ablation) of `components` on `split` (multi-task rows), with the score and
    drop per operator ("score/op_+", "drop/op_+", ...); the row "none" is the unablated model."""
    score = partial(evaluate_split, split=split, prefix="ablated", by=("op",))
    return ablation_sweep(model, score, components, ("mean",), reference, metric="ablated_exact",
                          groups=[op_group(op) for op in operators])


def component_sharing(table: pd.DataFrame, operators: str = MULTITASK_OPERATORS,
                      critical: float = CRITICAL_DROP) -> pd.DataFrame:
    """One row per ablated head and MLP of a `per_task_ablation` table: its drop per operator
    (`ablation.group_drops`, columns named by operator), `kind`, `layer`, `serves` (the operators whose
    drop is >= `critical`, in `operators` order) and `sharing` ("shared", "specific to <op>" or "unused")."""
    groups = [op_group(op) for op in operators]
    drops = pd.concat([group_drops(table, groups, kind) for kind in ("head", "mlp")]).set_axis(list(operators), axis=1)
    serves = drops.apply(lambda r: "".join(op for op in operators if r[op] >= critical), axis=1)
    sharing = serves.map(lambda s: "shared" if len(s) >= 2 else f"specific to {s}" if s else "unused")
    where = table.set_index("component").loc[drops.index, ["kind", "layer"]]
    return drops.join(where).assign(serves=serves, sharing=sharing)


def share_of_heads(sharing: pd.DataFrame, layers: Sequence[int], label: str) -> float:
    """The share of the heads in `layers` (rows of `component_sharing`) whose `sharing` starts with
    `label` ("shared", "specific", "unused"); NaN when those layers hold no head."""
    heads = sharing[(sharing["kind"] == "head") & sharing["layer"].isin(list(layers))]
    return float(heads["sharing"].str.startswith(label).mean()) if len(heads) else float("nan")


def answer_values(rows: list[dict]) -> torch.Tensor:
    """[n, 1] the answer of each row, (a op b) mod m, as an integer."""
    return torch.tensor([[int(row["answer"])] for row in rows])


@torch.no_grad()
def answer_probes(model, rows: list[dict], operators: str = MULTITASK_OPERATORS, seed: int = 0) -> pd.DataFrame:
    """Per operator of `rows` (multi-task data rows), `features.residue_readout` of the ANSWER at `=` at
    every residual point, fitted on that operator's rows and scored on each other operator's: one row
    per (fitted on, point, target) with `metric`, `own` (held-out score on its operator) and
    "on <op>" per other operator."""
    points = residual_points(model.cfg.n_layers)
    by_op = {op: [r for r in rows if operator_of(r) == op] for op in operators}
    acts = {op: activations_at_equals(model, part, list(points.values()), MULTITASK_TOKENIZER) for op, part in by_op.items()}
    tables = []
    for op, part in by_op.items():
        others = {f"on {other}": (acts[other], by_op[other]) for other in operators if other != op}
        table = residue_readout(acts[op], part, others, list(points), [ANSWER], seed=seed, values=answer_values)
        tables.append(table.rename(columns={"held-out": "own"}).drop(columns="feature").assign(fitted_on=op))
    return pd.concat(tables, ignore_index=True)


@torch.no_grad()
def neuron_selectivity(model, rows: list[dict], operators: str = MULTITASK_OPERATORS,
                       selective: float = SELECTIVE) -> pd.DataFrame:
    """One row per MLP neuron (index "L<layer>N<neuron>"): its mean |activation| at `=` on each
    operator's rows, the operator with the largest (`prefers`, "" for a neuron silent everywhere),
    `ratio` (largest / next largest) and `selective_for` (the preferred operator when ratio >=
    `selective`, else "")."""
    hooks = [f"blocks.{layer}.mlp.hook_post" for layer in range(model.cfg.n_layers)]
    means = {}
    for op in operators:
        part = [r for r in rows if operator_of(r) == op]
        acts = activations_at_equals(model, part, hooks, MULTITASK_TOKENIZER)  # [n_layers, n, d_mlp]
        means[op] = acts.abs().mean(1).flatten()  # [n_layers * d_mlp]
    table = pd.DataFrame({op: m.numpy() for op, m in means.items()},
                         index=[f"L{layer}N{n}" for layer in range(model.cfg.n_layers) for n in range(model.cfg.d_mlp)])
    ranked = np.sort(table.to_numpy(), axis=1)  # [neurons, operators], ascending
    ratio = pd.Series(ranked[:, -1] / np.maximum(ranked[:, -2], 1e-12), index=table.index)
    prefers = table.idxmax(axis=1).where(ranked[:, -1] > 0, "")
    return table.assign(prefers=prefers, ratio=ratio, selective_for=prefers.where(ratio >= selective, ""))
