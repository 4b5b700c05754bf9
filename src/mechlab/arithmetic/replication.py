"""Does a finding of the main model hold in other training seeds? Each key finding of the README
measured on any model of the main architecture and its training record, one rule per finding, and
the seed-by-seed table (issue 14).

`seed_findings(model, history, data_dir)` measures, with the notebooks' own library calls:

* `layer0` (notebooks 02 and 04): per layer-0 head, the attention mass from the answer-predicting
  positions on a's and on b's digits (`roles.head_role_table`) and the drop of test exact match
  when the head is mean-ablated (`analysis.ablation.ablation_sweep`, scored by
  `task.evaluate_split`, validation prompts as the reference), with its impact class;
* `readers`: the layer-0 head that reads a most (largest mass on a) and the one that reads b most,
  with their masses and drops. Roles, not head numbers: a head's index means nothing across seeds;
* `writers` (notebook 05): the mean direct logit attribution to logit(correct) - logit(top wrong
  digit) of every component, averaged over (bucket, answer digit) cells (`answer_writers`);
* `layout` (notebook 07): test exact match overall and per operand digit layout
  (`task.breakdown` of `evaluate_split`), the weakest layout and its gap;
* `training` (notebook 01): the plateau and its exit (`plateau_exit`, from `study.largest_rise`) and
  the first evaluation at >= 99% validation exact match (`core.runs.first_reaching`).

`FINDINGS` names the README's findings; `holds(name, reference, other)` applies the finding's rule
(stated in its function's docstring) to seed `other`, where `reference` is the seed the README
describes (seed 0): a rule about "the same layout" or "the same MLP" reads what the reference
found, never a hard-coded name. `replication_table` lays the findings of several seeds side by
side; `replication_from_checkpoints` builds it from exported runs (`model.pt` + `metrics.json`).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from mechlab.analysis.ablation import CRITICAL_DROP, Component, ablation_sweep, reference_activations
from mechlab.analysis.attention import attention_patterns
from mechlab.analysis.attribution import direct_logit_attribution, head_rows, mean_by_bucket
from mechlab.arithmetic.circuit import SUDDEN_RISE, SYSTEMATIC_GAP
from mechlab.arithmetic.roles import LABEL_THRESHOLDS, head_role_table
from mechlab.arithmetic.study import largest_rise
from mechlab.arithmetic.task import ArithmeticSplit, breakdown, evaluate_split, main_model_config
from mechlab.arithmetic.tokenizer import ANSWER_START, DIGIT_IDS, EQUALS_POS, MAX_ANSWER_DIGITS, MODEL_INPUT_LEN
from mechlab.core.model import load_checkpoint
from mechlab.core.runs import first_reaching

READER_RATIO = 2.0  # an operand reader puts at least this many times more attention on its operand than on the other
READER_MIN_MASS = LABEL_THRESHOLDS["both"]  # ... and at least this much (0.25) on its operand
WRITER_SHARE = 0.5  # the answer's writer carries at least this share of the MLPs' and heads' total DLA
PLATEAU_CEILING = 0.5  # plateau evaluations: validation exact match below this ...
PLATEAU_MIN_EVALS = 2  # ... at least this many of them before the exit
PLATEAU_WINDOW = 5  # the plateau's level: validation exact match over the last this many evaluations before the exit
TARGET = 0.99  # the project's exact-match target


# --- measuring one model -------------------------------------------------------------------------------

def layer0_table(model, test: ArithmeticSplit, reference: ArithmeticSplit, n_prompts: int,
                 heads: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per layer-0 head (index: head name): `mass:a`, `mass:b` (attention from the
    answer-predicting positions of the first `n_prompts` test rows, `head_role_table`), `label`,
    `drop` (test exact match lost under mean ablation, values from `reference`'s prompts) and
    `impact` (`ablation.impact_class`). Only `heads` (default all) are ablated; the others' drop is NaN."""
    tokens = test.tokens[:n_prompts, :MODEL_INPUT_LEN]
    roles = head_role_table(attention_patterns(model, tokens)[:, :1], tokens).set_index("head")  # layer 0 only
    score = partial(evaluate_split, split=test, prefix="ablated")
    ablated = [Component("head", 0, h) for h in (range(model.cfg.n_heads) if heads is None else heads)]
    sweep = ablation_sweep(model, score, ablated, ("mean",), reference_activations(model, reference.tokens[:, :MODEL_INPUT_LEN]),
                           metric="ablated_exact").set_index("component")
    names = [f"L0H{h}" for h in range(model.cfg.n_heads)]
    return roles.loc[names, ["mass:a", "mass:b", "label"]].join(sweep.loc[[c.name for c in ablated], ["drop", "impact"]])


def operand_readers(layer0: pd.DataFrame) -> dict:
    """The head reading a most and the head reading b most (`layer0_table` rows), by role: for
    each operand, its head's name, mass on it, mass on the other operand and ablation drop."""
    out = {}
    for operand, other in (("a", "b"), ("b", "a")):
        head = layer0[f"mass:{operand}"].idxmax()
        out[operand] = {"head": head, "on_operand": float(layer0.loc[head, f"mass:{operand}"]),
                        "on_other": float(layer0.loc[head, f"mass:{other}"]), "drop": float(layer0.loc[head, "drop"])}
    return out


def answer_writers(diff: pd.DataFrame) -> dict:
    """From a `mean_by_bucket(dla, rows, "diff")` table (notebook 05's numbers): `per_component`,
    each component's mean DLA over the (bucket, answer digit) cells; `mlps`, the MLPs' sum;
    `heads`, all heads' summed DLA per cell averaged over the cells; `top`, the component with the
    largest mean DLA; `last_mlp`, the last layer's MLP; `share`, its part of mlps + heads."""
    per = diff.groupby("component")["value"].mean()
    mlp_names = sorted((c for c in per.index if c.startswith("MLP")), key=lambda c: int(c.removeprefix("MLP")))
    if not mlp_names:
        raise ValueError("no MLP in the DLA table: the model is attention-only")
    heads_total = float(head_rows(diff).groupby(["bucket", "answer_pos"])["value"].sum().mean())
    mlps_total = float(per[mlp_names].sum())
    last = mlp_names[-1]
    total = mlps_total + heads_total
    return {"per_component": per.to_dict(), "mlps": mlps_total, "heads": heads_total, "top": str(per.idxmax()),
            "last_mlp": last, "last_mlp_dla": float(per[last]), "share": float(per[last]) / total if total else float("nan")}


def component_dla(model, test: ArithmeticSplit, n_prompts: int) -> pd.DataFrame:
    """Notebook 05's DLA table on the first `n_prompts` test rows: mean DLA to logit(correct) -
    logit(top wrong digit) per (bucket, answer digit, component), teacher-forced."""
    split = ArithmeticSplit(test.rows[:n_prompts], test.tokens[:n_prompts])
    digits = split.tokens[:, ANSWER_START:ANSWER_START + MAX_ANSWER_DIGITS]  # [n, 3]
    dla = direct_logit_attribution(model, split.tokens[:, :MODEL_INPUT_LEN], range(EQUALS_POS, EQUALS_POS + MAX_ANSWER_DIGITS),
                                   digits, candidate_ids=DIGIT_IDS, valid=torch.isin(digits, DIGIT_IDS))
    return mean_by_bucket(dla, split.rows, "diff")


def layout_weakness(metrics: dict[str, float], prefix: str = "test") -> dict:
    """From `evaluate_split` metrics: `overall` exact match, `by_layout` (operand digit layout ->
    exact match, `task.breakdown`), the `weakest` layout, its exact match and `gap` to overall."""
    layouts = breakdown(metrics, prefix, by="digits")
    weakest = min(layouts, key=layouts.get)
    overall = metrics[f"{prefix}_exact"]
    return {"overall": overall, "by_layout": layouts, "weakest": weakest, "weakest_exact": layouts[weakest],
            "gap": overall - layouts[weakest]}


def plateau_exit(history: Sequence[dict], metric: str = "val_exact") -> dict | None:
    """The plateau a run left abruptly, or None when it has none.

    The exit is the largest rise of `metric` between two evaluations (`study.largest_rise`). It
    ends a plateau when the rise is >= SUDDEN_RISE (0.25, the scorecard's sudden rise), at least
    PLATEAU_MIN_EVALS (2) evaluations up to the exit are below PLATEAU_CEILING (0.5), and the rise
    exceeds the spread (max - min) of `metric` over the last PLATEAU_WINDOW (5) evaluations up to
    the exit (a steady climb has no plateau). Returns from_step, to_step, before, after, rise,
    level_low, level_high (the window's min and max) and evals_below."""
    history = list(history)
    before, after = largest_rise(history, metric)
    upto = history[:history.index(before) + 1]
    window = [row[metric] for row in upto[-PLATEAU_WINDOW:]]
    rise = after[metric] - before[metric]
    below = sum(row[metric] < PLATEAU_CEILING for row in upto)
    if rise < SUDDEN_RISE or below < PLATEAU_MIN_EVALS or rise <= max(window) - min(window):
        return None
    return {"from_step": before["step"], "to_step": after["step"], "before": before[metric], "after": after[metric],
            "rise": rise, "level_low": min(window), "level_high": max(window), "evals_below": below}


def training_findings(history: Sequence[dict], metric: str = "val_exact") -> dict:
    """The plateau (`plateau_exit`, None if none), the largest rise (from/to step and values, as
    `study.largest_rise`) and `step_to_target`: the first step with `metric` >= TARGET (None if never)."""
    before, after = largest_rise(list(history), metric)
    hit = first_reaching(list(history), metric, TARGET)
    return {"plateau": plateau_exit(history, metric),
            "largest_rise": {"from_step": before["step"], "to_step": after["step"], "before": before[metric],
                             "after": after[metric]},
            "step_to_target": hit["step"] if hit else None, "final": history[-1][metric], "steps": history[-1]["step"]}


def findings_from_splits(model, history: Sequence[dict], test: ArithmeticSplit, reference: ArithmeticSplit,
                         n_prompts: int = 1000) -> dict:
    """Every measurement the findings rest on (see the module docstring): layer0 (a DataFrame),
    readers, writers, layout, training. `test` is scored whole (ablation and layouts), its first
    `n_prompts` rows feed attention and DLA; `reference` gives the mean-ablation values."""
    model.eval()
    with torch.no_grad():
        layer0 = layer0_table(model, test, reference, n_prompts)
        return {"layer0": layer0, "readers": operand_readers(layer0),
                "writers": answer_writers(component_dla(model, test, n_prompts)),
                "layout": layout_weakness(evaluate_split(model, test, "test")),
                "training": training_findings(history)}


def seed_findings(model, history: Sequence[dict], data_dir: Path, n: int = 2000, n_eval: int | None = None,
                  n_reference: int = 2000) -> dict:
    """`findings_from_splits` on the data sets in `data_dir`: the first `n_eval` test rows (None:
    all 10,000; the 3 + 1 layout is about 2% of them) scored, the first `n` of them for attention
    and DLA (notebook 05 uses 2,000, notebook 02 1,000), the first `n_reference` validation rows as
    the mean-ablation reference (notebook 04: 2,000). Most of the time goes to scoring the test
    split once per layer-0 head, ablated."""
    test = ArithmeticSplit.load(Path(data_dir), "test", n_eval)
    reference = ArithmeticSplit.load(Path(data_dir), "val", n_reference)
    return findings_from_splits(model, history, test, reference, min(n, len(test)))


# --- the rules ---------------------------------------------------------------------------------------

def reads_operands(reference: dict, other: dict) -> bool:
    """A layer-0 head reads a and another reads b: the head with the most attention on a's digits
    puts >= READER_MIN_MASS (0.25) on them and >= READER_RATIO (2) times its mass on b's, the head
    with the most on b's likewise, and they are two heads (which index they have does not matter)."""
    readers = other["readers"]
    return readers["a"]["head"] != readers["b"]["head"] and all(
        r["on_operand"] >= READER_MIN_MASS and r["on_operand"] >= READER_RATIO * r["on_other"] for r in readers.values())


def readers_critical(reference: dict, other: dict) -> bool:
    """Mean-ablating the a reader and the b reader (`operand_readers`) each drops test exact match
    by >= CRITICAL_DROP (0.10, the "critical" class of notebook 04)."""
    return all(r["drop"] >= CRITICAL_DROP for r in other["readers"].values())


def layer0_all_critical(reference: dict, other: dict) -> bool:
    """Every layer-0 head is critical: its mean-ablation drop is >= CRITICAL_DROP (0.10)."""
    return bool((other["layer0"]["impact"] == "critical").all())


def last_mlp_writes(reference: dict, other: dict) -> bool:
    """The last layer's MLP writes the answer: it is the component with the largest mean DLA
    (among heads, MLPs and embeddings) and carries >= WRITER_SHARE (0.5) of the MLPs' and heads'
    total DLA."""
    w = other["writers"]
    return w["top"] == w["last_mlp"] and w["share"] >= WRITER_SHARE


def same_weakest_layout(reference: dict, other: dict) -> bool:
    """The reference's weakest operand layout (3 + 1 on seed 0) is also this seed's weakest, and it
    is >= SYSTEMATIC_GAP (0.10, the scorecard's systematic failure) below overall exact match."""
    lay = other["layout"]
    return lay["weakest"] == reference["layout"]["weakest"] and lay["gap"] >= SYSTEMATIC_GAP


def has_plateau(reference: dict, other: dict) -> bool:
    """Validation exact match sits on a plateau and leaves it abruptly (`plateau_exit` finds one)."""
    return other["training"]["plateau"] is not None


def reaches_target(reference: dict, other: dict) -> bool:
    """Validation exact match reaches TARGET (99%) during training."""
    return other["training"]["step_to_target"] is not None


def _readers_value(f: dict) -> str:
    a, b = f["readers"]["a"], f["readers"]["b"]
    return (f"{a['head']} reads a ({a['on_operand']:.2f} vs b {a['on_other']:.2f}); "
            f"{b['head']} reads b ({b['on_operand']:.2f} vs a {b['on_other']:.2f})")


def _critical_value(f: dict) -> str:
    a, b = f["readers"]["a"], f["readers"]["b"]
    return f"drops {a['head']} {a['drop']:.2f}, {b['head']} {b['drop']:.2f}"


def _layer0_value(f: dict) -> str:
    t = f["layer0"]
    return f"{(t['impact'] == 'critical').sum()} of {len(t)} critical, drops {t['drop'].min():.2f}-{t['drop'].max():.2f}"


def _writer_value(f: dict) -> str:
    w = f["writers"]
    return (f"{w['last_mlp']} {w['last_mlp_dla']:.2f} of MLPs {w['mlps']:.2f} + heads {w['heads']:.2f} "
            f"(share {w['share']:.2f}; top {w['top']})")


def _layout_value(f: dict) -> str:
    lay = f["layout"]
    return f"weakest {lay['weakest']} {lay['weakest_exact']:.3f} vs {lay['overall']:.3f} overall"


def _plateau_value(f: dict) -> str:
    p = f["training"]["plateau"]
    if p is None:
        r = f["training"]["largest_rise"]
        return f"none (largest rise {r['before']:.3f} -> {r['after']:.3f} at {r['from_step']:,} -> {r['to_step']:,})"
    return (f"level {p['level_low']:.2f}-{p['level_high']:.2f}; exit {p['from_step']:,} -> {p['to_step']:,} "
            f"({p['before']:.3f} -> {p['after']:.3f})")


def _target_value(f: dict) -> str:
    t = f["training"]
    return f"step {t['step_to_target']:,}" if t["step_to_target"] is not None else f"never (final {t['final']:.3f})"


@dataclass(frozen=True)
class Finding:
    """A README finding: how its measured value reads, and the rule that says whether it holds."""

    rule: Callable[[dict, dict], bool]
    value: Callable[[dict], str]


FINDINGS: dict[str, Finding] = {
    "a layer-0 head reads a, another reads b": Finding(reads_operands, _readers_value),
    "ablating either operand reader is critical": Finding(readers_critical, _critical_value),
    "every layer-0 head is critical": Finding(layer0_all_critical, _layer0_value),
    "the last MLP writes most of the answer": Finding(last_mlp_writes, _writer_value),
    "the reference's weakest layout (3 + 1) is the weakest": Finding(same_weakest_layout, _layout_value),
    "a plateau, left abruptly": Finding(has_plateau, _plateau_value),
    "validation reaches 99%": Finding(reaches_target, _target_value),
}


def holds(finding_name: str, reference: dict, other: dict) -> bool:
    """Whether finding `finding_name` (a key of FINDINGS) holds in seed `other` (`seed_findings`),
    by its rule; `reference` is the seed the README describes."""
    if finding_name not in FINDINGS:
        raise KeyError(f"unknown finding {finding_name!r}; choose from {list(FINDINGS)}")
    return bool(FINDINGS[finding_name].rule(reference, other))


def replication_table(findings_by_seed: dict[int, dict], reference_seed: int | None = None) -> pd.DataFrame:
    """One row per finding (index), one column per seed ("seed N": the measured value and ✓ or ✗),
    `replicates` ("k of n": the seeds where it holds) and `in every seed` (bool). The reference
    seed (default: the smallest) is the one the README describes."""
    if not findings_by_seed:
        raise ValueError("no seeds to compare")
    seeds = sorted(findings_by_seed)
    reference = findings_by_seed[seeds[0] if reference_seed is None else reference_seed]
    rows = {}
    for name, finding in FINDINGS.items():
        verdicts = {s: holds(name, reference, findings_by_seed[s]) for s in seeds}
        row = {f"seed {s}": f"{finding.value(findings_by_seed[s])} {'✓' if verdicts[s] else '✗'}" for s in seeds}
        k = sum(verdicts.values())
        rows[name] = row | {"replicates": f"{k} of {len(seeds)}", "in every seed": k == len(seeds)}
    return pd.DataFrame.from_dict(rows, orient="index")


# --- from exported runs ------------------------------------------------------------------------------

def load_seed_run(run_dir: Path, seed: int, device: str = "cpu") -> tuple[torch.nn.Module, list[dict]]:
    """(model, training history) of an exported main-architecture run in `run_dir` (`model.pt`,
    `metrics.json`). The checkpoint's config must be `main_model_config(seed)`: ModelConfig.seed
    is part of the config, so a checkpoint saved with another seed is refused
    (CheckpointMismatchError), and so is one whose `train_config.json` (when present) names another
    training seed."""
    run_dir = Path(run_dir)
    model = load_checkpoint(run_dir / "model.pt", expected=main_model_config(seed), device=device)
    recipe = run_dir / "train_config.json"
    recipe_seed = json.loads(recipe.read_text()).get("seed", seed) if recipe.exists() else seed
    if recipe_seed != seed:
        raise ValueError(f"{recipe} names training seed {recipe_seed}, expected {seed}")
    return model, json.loads((run_dir / "metrics.json").read_text())


def replication_from_checkpoints(paths: dict[int, Path], data_dir: Path, reference_seed: int | None = None,
                                 **options) -> tuple[pd.DataFrame, dict[int, dict]]:
    """`replication_table` of the exported runs `paths` (seed -> run folder, `load_seed_run`),
    each measured by `seed_findings(model, history, data_dir, **options)`. Returns (table, the
    findings per seed). Two seeds with identical weights are refused: the table would compare a
    run with itself."""
    runs = {seed: load_seed_run(path, seed) for seed, path in sorted(paths.items())}
    seeds = list(runs)
    for i, seed in enumerate(seeds):
        twin = next((s for s in seeds[:i] if torch.equal(runs[s][0].W_E, runs[seed][0].W_E)), None)
        if twin is not None:
            raise ValueError(f"seeds {twin} and {seed} have identical weights ({paths[twin]}, {paths[seed]})")
    findings = {seed: seed_findings(model, history, data_dir, **options) for seed, (model, history) in runs.items()}
    return replication_table(findings, reference_seed), findings
