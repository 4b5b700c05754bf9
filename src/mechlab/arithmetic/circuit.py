"""The main model's circuit: which components it is chosen from, the 3-digit a + 1-digit b
weakness, and the scorecard of the design document's six hypotheses.

Choice rule (`choose_circuit`), from the phase 3-5 measurements gathered by `component_measurements`
(thresholds fixed before the circuit was verified). A head or MLP is in the circuit when any of:

* ablation: mean-ablating it alone drops test exact match by >= CHOICE_DROP (0.10, the
  "critical" class of `mechlab.analysis.ablation`);
* patching: patching its clean output into the corrupted run restores >= CHOICE_RESTORE (0.20) of
  the normalized logit difference on a-, b- or wrap-pairs (heads: all positions, `z_all_pos`;
  MLPs: the best single position, `mlp_out`);
* attribution: its mean direct logit attribution to logit(correct) - logit(top wrong digit) over
  the answer digits has |DLA| >= CHOICE_DLA (0.30).

The 3 + 1 weakness (`best_threshold_rule`, `prediction_scores`). Features of every 3 + 1 prompt:
the attention mass from `=` of each head to each token role (`role_attention`). On a *fit* set
of prompts the single feature and threshold that best separate failures from successes are
chosen (largest |AUC - 0.5|, threshold maximising true-positive rate - false-positive rate);
the rule then predicts which *fresh* prompts fail, and the prediction is scored against what the
model does. Whether the feature is a cause is tested by knocking that attention out
(`attention_knockout_hooks`) and measuring the failure rate again.

The scorecard (`scorecard`): one verdict per hypothesis, held / partial / failed, by the rules
in each `*_verdict` function, with the measurement behind it and the figure that shows it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from mechlab.analysis.ablation import BACKUP_EXCESS, CRITICAL_DROP, Component
from mechlab.arithmetic.data import MAX_OPERAND, MODULUS, Example, bucket_of
from mechlab.arithmetic.roles import ROLES, role_ids
from mechlab.arithmetic.task import ArithmeticSplit, exact_match
from mechlab.arithmetic.tokenizer import EQUALS_POS

CHOICE_DROP = CRITICAL_DROP  # 0.10 exact-match drop under mean ablation
CHOICE_RESTORE = 0.20        # normalized logit difference restored by patching, on any pair kind
CHOICE_DLA = 0.30            # |mean direct logit attribution| to logit(correct) - logit(top wrong)

HELD, PARTIAL, FAILED = "held", "partial", "failed"
SPECIALIZATION_SHARE = 0.5   # one layer carries at least this share of the summed head ablation drops
POSITION_DROP = CRITICAL_DROP  # positional embedding mean-ablated: exact match drops at least this
BACKUP_HELD = CRITICAL_DROP  # a pair's excess drop this large: a real backup (BACKUP_EXCESS: a weak one)
SUDDEN_RISE = 0.25           # validation exact match rising this much between two evaluations
SYSTEMATIC_GAP = 0.10        # a digit layout this far below overall exact match: a systematic failure
CAUSAL_CHANGE = 0.05         # knocking the predicting feature out moves the failure rate this much, the predicted way


# --- choosing the circuit ---------------------------------------------------------------------------

def component_measurements(components: Sequence[Component], ablation: pd.DataFrame,
                           head_restore: dict[str, torch.Tensor], mlp_restore: dict[str, torch.Tensor],
                           dla: pd.Series) -> pd.DataFrame:
    """One row per component (index: name) with what the rule reads: `drop` (mean ablation, from an
    `ablation_sweep` frame), `restore:<kind>` per pair kind (heads: `z_all_pos` [n_layers, n_heads];
    MLPs: `mlp_out` [n_layers, pos], best position) and their max `restore`, and `dla` (mean DLA
    per component name, e.g. from `DLAResult.table().groupby("component")["value"].mean()`)."""
    drops = ablation[ablation["method"] == "mean"].set_index("component")["drop"]
    rows = []
    for c in components:
        row = {"component": c.name, "kind": c.kind, "layer": c.layer, "drop": float(drops[c.name])}
        for kind in head_restore:
            row[f"restore:{kind}"] = float(head_restore[kind][c.layer, c.head] if c.kind == "head"
                                           else mlp_restore[kind][c.layer].max())
        row["restore"] = max(row[f"restore:{kind}"] for kind in head_restore)
        row["dla"] = float(dla[c.name])
        rows.append(row)
    return pd.DataFrame(rows).set_index("component")


def choose_circuit(measurements: pd.DataFrame, drop: float = CHOICE_DROP, restore: float = CHOICE_RESTORE,
                   dla: float = CHOICE_DLA) -> pd.DataFrame:
    """`measurements` with `chosen_by` (the criteria each component meets: "ablation", "patching",
    "attribution", joined by "+"; "" if none) and `in_circuit`."""
    out = measurements.copy()
    met = pd.DataFrame({"ablation": out["drop"] >= drop, "patching": out["restore"] >= restore,
                        "attribution": out["dla"].abs() >= dla})
    out["chosen_by"] = ["+".join(k for k in met.columns if r[k]) for _, r in met.iterrows()]
    out["in_circuit"] = met.any(axis=1)
    return out


def node_roles(measurements: pd.DataFrame, role_table: pd.DataFrame) -> dict[str, str]:
    """A measured role per component, citing its numbers: heads by their attention label
    (`roles.head_role_table`) and their largest attention mass from the answer-predicting
    positions; MLPs by their direct effect on the answer (mean DLA) and their patching restore."""
    mass_cols = [c for c in role_table.columns if c.startswith("mass:")]
    table = role_table.set_index("head")
    roles = {}
    for name, m in measurements.iterrows():
        if m["kind"] == "head":
            top = table.loc[name, mass_cols].astype(float).idxmax()
            roles[name] = f"{table.loc[name, 'label']}: {top.removeprefix('mass:')} {table.loc[name, top]:.2f}"
        else:
            roles[name] = f"DLA {m['dla']:.2f}, restore {m['restore']:.2f}"
    return roles


# --- the 3 + 1 digit weakness ---------------------------------------------------------------------

def layout_pairs(a_digits: int, b_digits: int) -> list[tuple[int, int]]:
    """Every pair (a, b) of operands up to MAX_OPERAND with these digit counts (0 counts as one digit)."""
    def numbers(d):
        return range(0 if d == 1 else 10 ** (d - 1), min(10 ** d, MAX_OPERAND + 1))
    return [(a, b) for a in numbers(a_digits) for b in numbers(b_digits)]


def layout_rows(a_digits: int, b_digits: int, m: int = MODULUS) -> list[dict]:
    """Data rows of every pair (a, b) with these operand digit counts (0 counts as one digit)."""
    return [Example(a, b, m, bucket_of(a, b, m)).to_json() for a, b in layout_pairs(a_digits, b_digits)]


def split_seen(rows: Sequence[dict], seen: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(rows whose (a, b, m) occurs in `seen`, the others): prompts already run vs fresh ones."""
    keys = {(r["a"], r["b"], r["m"]) for r in seen}
    return ([r for r in rows if (r["a"], r["b"], r["m"]) in keys], [r for r in rows if (r["a"], r["b"], r["m"]) not in keys])


def row_correct(model, split: ArithmeticSplit, hooks: Sequence = ()) -> torch.Tensor:
    """[n] bool: exact match per row (`task.exact_match`, equal to greedy decoding's) under `hooks`."""
    with model.hooks(fwd_hooks=list(hooks)) if hooks else contextlib.nullcontext():
        return exact_match(model, split)


@torch.no_grad()
def role_attention(model, tokens: torch.Tensor, dest: int = EQUALS_POS, batch_size: int = 512) -> torch.Tensor:
    """[n, n_layers, n_heads, len(ROLES)]: each head's attention from position `dest` to the
    positions of each token role (`roles.ROLES`), on model inputs `tokens` [n, pos]."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    out = []
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk.to(model.cfg.device), names_filter=lambda n: n in names)
        pattern = torch.stack([cache[n][:, :, dest] for n in names], dim=1).cpu()  # [b, layer, head, src]
        onehot = torch.nn.functional.one_hot(role_ids(chunk), len(ROLES)).to(pattern.dtype)  # [b, src, role]
        out.append(torch.einsum("blhs,bsr->blhr", pattern, onehot))
    return torch.cat(out)


def attention_features(mass: torch.Tensor, head_names: Sequence[str]) -> pd.DataFrame:
    """`role_attention` as a table: one column "L1H6->pad" per (head, role) that varies across rows."""
    n, n_layers, n_heads, n_roles = mass.shape
    table = pd.DataFrame(mass.reshape(n, -1).numpy(), columns=[f"{h}->{r}" for h in head_names for r in ROLES])
    return table.loc[:, table.std() > 1e-6]


def auc(values: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `values` for the boolean labels `positive` (ties count half)."""
    values, positive = np.asarray(values, dtype=float), np.asarray(positive, dtype=bool)
    ranks = pd.Series(values).rank().to_numpy()
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative rows")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def feature_aucs(features: pd.DataFrame, failed: np.ndarray) -> pd.Series:
    """AUC of failure on each feature, oriented (max(AUC, 1 - AUC): 0.5 = no information), best first."""
    failed = np.asarray(failed, dtype=bool)
    raw = pd.Series({f: auc(features[f].to_numpy(), failed) for f in features.columns})
    return np.maximum(raw, 1 - raw).sort_values(ascending=False)


def best_threshold_rule(features: pd.DataFrame, failed: np.ndarray) -> dict:
    """The feature that best separates `failed` rows (largest oriented AUC, `feature_aucs`) and its
    threshold (largest true-positive rate - false-positive rate): {"feature", "direction" (">=":
    values at or above the threshold predict failure, "<=": values at or below it), "threshold",
    "auc" (oriented)}."""
    failed = np.asarray(failed, dtype=bool)
    feature = feature_aucs(features, failed).index[0]
    high = auc(features[feature].to_numpy(), failed) >= 0.5
    values = features[feature].to_numpy() * (1 if high else -1)
    best, threshold = -np.inf, None
    for t in np.unique(values):
        predicted = values >= t
        j = predicted[failed].mean() - predicted[~failed].mean()
        if j > best:
            best, threshold = j, t
    return {"feature": feature, "direction": ">=" if high else "<=",
            "threshold": float(threshold if high else -threshold), "auc": rule_auc({"feature": feature, "direction": ">=" if high else "<="}, features, failed)}


def rule_auc(rule: dict, features: pd.DataFrame, failed: np.ndarray) -> float:
    """AUC of failure on the rule's feature in the rule's direction (below 0.5: it points the wrong way here)."""
    value = auc(features[rule["feature"]].to_numpy(), failed)
    return value if rule["direction"] == ">=" else 1 - value


def apply_rule(rule: dict, features: pd.DataFrame) -> np.ndarray:
    """[n] bool: the rows `rule` (from `best_threshold_rule`) predicts to fail."""
    values = features[rule["feature"]].to_numpy()
    return values >= rule["threshold"] if rule["direction"] == ">=" else values <= rule["threshold"]


def prediction_scores(predicted: np.ndarray, failed: np.ndarray) -> dict:
    """How predictions of failure hold: n, predicted (count), precision (share of predicted
    failures that fail: the hit rate), recall (share of failures predicted), base_rate (share
    that fail), lift = precision / base_rate, agreement (share of rows predicted right)."""
    predicted, failed = np.asarray(predicted, dtype=bool), np.asarray(failed, dtype=bool)
    precision = failed[predicted].mean() if predicted.any() else float("nan")
    base = failed.mean()
    return {"n": len(failed), "predicted": int(predicted.sum()), "precision": float(precision),
            "recall": float(predicted[failed].mean()) if failed.any() else float("nan"), "base_rate": float(base),
            "lift": float(precision / base) if base else float("nan"), "agreement": float((predicted == failed).mean())}


def attention_knockout_hooks(layer: int, head: int, sources: torch.Tensor, dest_from: int = EQUALS_POS) -> list[tuple]:
    """A forward hook that removes head (layer, head)'s attention from every position >= `dest_from`
    to the source positions marked in `sources` [pos] (bool; the same layout in every row) and
    renormalises the rest of its attention."""
    def hook(pattern, hook):  # [batch, head, dest, src]
        pattern = pattern.clone()
        n = pattern.shape[-1]
        keep = (~sources[:n]).to(pattern.dtype).to(pattern.device)
        rows = pattern[:, head, dest_from:] * keep
        pattern[:, head, dest_from:] = rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)
        return pattern
    return [(f"blocks.{layer}.attn.hook_pattern", hook)]


def role_positions(tokens: torch.Tensor, role: str) -> torch.Tensor:
    """[pos] bool: the prompt positions (up to `=`) holding `role`, the same in every row of
    `tokens` (the rows' prompts must share one layout, e.g. all 3 + 1 digit prompts)."""
    prompt = role_ids(tokens)[:, :EQUALS_POS + 1]
    if not (prompt == prompt[0]).all():
        raise ValueError("the rows' prompts do not share one token layout; knock-outs by position need one")
    mask = torch.zeros(tokens.shape[1], dtype=torch.bool)
    mask[:EQUALS_POS + 1] = prompt[0] == ROLES.index(role)
    return mask


# --- the scorecard -----------------------------------------------------------------------------------

def specialization_verdict(head_drops: pd.DataFrame, attention_specialized: bool) -> tuple[str, str]:
    """Layer-wise specialization. Causal: one layer carries >= SPECIALIZATION_SHARE of the summed
    mean-ablation drops of all heads (`head_drops`: columns layer, drop). Attention: the dominant
    head-role label differs between early and late layers (`roles.layer_specialization`).
    held: both; partial: one; failed: neither."""
    per_layer = head_drops.groupby("layer")["drop"].sum().clip(lower=0)
    share = per_layer.max() / per_layer.sum()
    causal = share >= SPECIALIZATION_SHARE
    verdict = HELD if causal and attention_specialized else PARTIAL if causal or attention_specialized else FAILED
    return verdict, (f"layer {int(per_layer.idxmax())} carries {share:.2f} of the summed head ablation drops "
                     f"(rule >= {SPECIALIZATION_SHARE}); attention labels specialize by layer: {'yes' if attention_specialized else 'no'}")


def add_modulo_verdict(patching_candidate: str | None, wrap_specific: Sequence[str]) -> tuple[str, str]:
    """Separate addition and modulo heads. Patching: a head restores much more on wrap pairs than on
    a-pairs (`pairs.modulo_head_candidate`; its name or None). Ablation: heads whose ablation hurts
    a wrapping bucket but spares no_wrap (`ablation.group_specific`). held: both; partial: one;
    failed: neither."""
    n = sum([patching_candidate is not None, len(wrap_specific) > 0])
    verdict = (FAILED, PARTIAL, HELD)[n]
    return verdict, (f"wrap-specific head by patching: {patching_candidate or 'none'}; "
                     f"wrap-specific heads by ablation: {', '.join(wrap_specific) or 'none'}")


def positional_verdict(full: float, without_positions: float) -> tuple[str, str]:
    """Positional encoding use: exact match drops >= POSITION_DROP when the positional embedding is
    replaced by its mean over positions. held or failed."""
    verdict = HELD if full - without_positions >= POSITION_DROP else FAILED
    return verdict, f"exact match {full:.3f} -> {without_positions:.3f} with positions mean-ablated"


def backup_verdict(pairs: pd.DataFrame) -> tuple[str, str]:
    """Backup circuits: the largest excess of a pairwise ablation (pair drop - single drops,
    `ablation.pairwise_ablation`). held: >= BACKUP_HELD; partial: > BACKUP_EXCESS; failed otherwise."""
    if pairs.empty:
        return FAILED, "no pairs ablated"
    top = pairs.sort_values("excess", ascending=False).iloc[0]
    verdict = HELD if top["excess"] >= BACKUP_HELD else PARTIAL if top["excess"] > BACKUP_EXCESS else FAILED
    return verdict, (f"largest excess {top['excess']:.3f} ({top['a']}+{top['b']}: pair {top['drop_pair']:.3f} vs "
                     f"{top['drop_a']:.3f} + {top['drop_b']:.3f})")


def sudden_learning_verdict(history: Sequence[dict]) -> tuple[str, str]:
    """Grokking-style sudden learning, from the training record (train_exact, val_exact per
    evaluation). held: the grokking detector of `mechlab.modular.grokking` fires (validation
    generalises long after training accuracy reached 99%); partial: validation exact match jumps
    by >= SUDDEN_RISE between two evaluations, without grokking; failed otherwise."""
    from mechlab.arithmetic.study import largest_rise
    from mechlab.modular.grokking import detect_grokking

    renamed = [{"step": r["step"], "train_acc": r["train_exact"], "test_acc": r["val_exact"]} for r in history]
    before, after = largest_rise(history)
    rise = after["val_exact"] - before["val_exact"]
    grokked = detect_grokking(renamed) is not None
    verdict = HELD if grokked else PARTIAL if rise >= SUDDEN_RISE else FAILED
    return verdict, (f"largest rise of validation exact match {before['val_exact']:.3f} -> {after['val_exact']:.3f} "
                     f"between steps {before['step']:,} and {after['step']:,}; train exact match there "
                     f"{before['train_exact']:.3f} -> {after['train_exact']:.3f}; grokking detector: {'fires' if grokked else 'silent'}")


def expected_knockout_sign(rule: dict) -> int:
    """The sign of the failure-rate change a knock-out of the rule's attention should cause if that
    attention explains the failures: -1 when high attention predicts failure (">="; removing it
    should spare prompts), +1 when low attention does ("<="; removing it should fail more)."""
    return -1 if rule["direction"] == ">=" else 1


def failure_mode_verdict(layout_accuracy: dict[str, float], overall: float, knockout_change: float,
                         expected_sign: int) -> tuple[str, str]:
    """Systematic failure modes. Systematic: some operand digit layout scores >= SYSTEMATIC_GAP below
    overall exact match. Explained: knocking out the feature that predicts its failures moves the
    failure rate by >= CAUSAL_CHANGE *in the direction the prediction implies* (`expected_sign`,
    from `expected_knockout_sign`; a change the other way shows the attention is needed, not that
    it causes the failures). held: both; partial: systematic but not explained; failed: no
    systematic layout."""
    worst = min(layout_accuracy, key=layout_accuracy.get)
    systematic = overall - layout_accuracy[worst] >= SYSTEMATIC_GAP
    explained = knockout_change * expected_sign >= CAUSAL_CHANGE
    verdict = FAILED if not systematic else HELD if explained else PARTIAL
    return verdict, (f"worst layout {worst}: exact match {layout_accuracy[worst]:.3f} vs {overall:.3f} overall; "
                     f"knocking out the predicting feature changes its failure rate by {knockout_change:+.3f} "
                     f"(an explanation needs {'-' if expected_sign < 0 else '+'}{CAUSAL_CHANGE} or more)")


HYPOTHESES = ("layer-wise specialization", "separate addition and modulo heads", "positional encoding use",
              "backup circuits", "grokking-style sudden learning", "systematic failure modes")


def scorecard(verdicts: dict[str, tuple[str, str]], figures: dict[str, str]) -> pd.DataFrame:
    """One row per hypothesis of HYPOTHESES: verdict, measurement, figure."""
    missing = set(HYPOTHESES) - set(verdicts)
    if missing:
        raise ValueError(f"no verdict for {sorted(missing)}")
    return pd.DataFrame([{"hypothesis": h, "verdict": verdicts[h][0], "measurement": verdicts[h][1],
                          "figure": figures.get(h, "")} for h in HYPOTHESES])



def rule_knockout_hooks(rule: dict, tokens: torch.Tensor) -> list[tuple]:
    """The knock-out of the attention a rule on a feature "L1H6->pad" reads: head L1H6's attention
    from the answer positions to the `pad` positions of `tokens` (`attention_knockout_hooks`)."""
    head, role = rule["feature"].split("->")
    layer, index = (int(x) for x in head.removeprefix("L").split("H"))
    return attention_knockout_hooks(layer, index, role_positions(tokens, role))
