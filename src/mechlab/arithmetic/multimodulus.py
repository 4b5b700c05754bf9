"""Does a model read the modulus written in its prompt? (the multi-modulus extension, notebook 18)

The main model saw only "mod 113", so its modulus digits carry no information and a "mod 97"
prompt is a modulus it never had a reason to read. The multi-modulus model (study `multimodulus`)
saw seven moduli. Both are measured on modulus pairs (`make_pairs(rows, MODULUS_KIND, ...,
moduli=...)`: a and b the same, the modulus changed to another with as many digits, the first
answer digit different), so everything but the modulus's digits lines up position by position:

* `modulus_effect`: how far changing the written modulus moves the first answer digit, and which
  answer the model writes for the changed prompt (its own, or the unchanged prompt's);
* `modulus_patching`: activation patching from the clean run into the changed one, normalized
  (0 = changed run, 1 = clean run): the residual stream by layer and position (where the modulus
  enters and travels to `=`) and each head's output (which heads carry it);
* `answered_modulus`, `held_out_answer_shares`: for each answer, the modulus it is right for (the
  written one, or which other), and the shares of each on a held-out modulus's prompts;
* `exact_by_modulus`, `is_general`: exact match per written modulus, and whether the held-out moduli
  score like the training ones (a general "mod the number written" algorithm).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformer_lens import HookedTransformer

from mechlab.analysis.patching import patch_sweeps, run_cache
from mechlab.arithmetic.pairs import LogitDiffMetric, PatchingPairs, first_digit_metric
from mechlab.arithmetic.task import ArithmeticSplit, breakdown, evaluate_split, predicted_answers
from mechlab.arithmetic.tokenizer import EQUALS_POS
from mechlab.core.model import head_labels

PATCHING_SWEEPS = ("resid_pre", "z_all_pos")
# Below this first-digit logit difference between the clean and changed runs, normalising a patched
# run divides by almost nothing: `modulus_patching` refuses rather than return noise.
MIN_PATCHABLE_EFFECT = 0.5
MIN_RESTORED = 0.05  # `patching_summary` lists the positions that restore at least this much
OTHER = "other"  # `answered_modulus` for an answer that no candidate modulus gives
GENERAL_MARGIN = 0.10  # `is_general`: how far below the weakest training modulus a held-out one may score


def modulus_positions(m: int) -> list[int]:
    """Token positions of the digits of modulus `m`; prompts end "... mod 113 =" at `EQUALS_POS`."""
    n_digits = len(str(m))
    return list(range(EQUALS_POS - 1 - n_digits, EQUALS_POS - 1))


@torch.no_grad()
def logit_diff(model: torch.nn.Module, tokens: torch.Tensor, metric: LogitDiffMetric) -> float:
    """`metric`'s raw value on tokens [n, MODEL_INPUT_LEN]."""
    logits = model(tokens.to(next(model.parameters()).device)).cpu()  # [n, pos, d_vocab]
    return metric.raw(logits[:, metric.positions]).item()


@torch.no_grad()
def modulus_effect(model: torch.nn.Module, pairs: PatchingPairs) -> dict[str, float]:
    """How much the written modulus matters, on modulus pairs:

    * `logit_diff_clean`, `logit_diff_changed`: the first-digit logit difference on the clean
      prompts and on the prompts with the modulus changed (both scored on the clean answer);
    * `effect`: their difference (0: the modulus's digits change nothing at `=`);
    * `follows_written`: fraction of changed prompts answered with their own answer, a + b mod
      the written modulus;
    * `keeps_clean`: fraction answered with the clean prompt's answer, as if the modulus were unread.
    """
    metric = first_digit_metric(pairs)
    clean, changed = logit_diff(model, pairs.clean_tokens, metric), logit_diff(model, pairs.corrupted_tokens, metric)
    answers = predicted_answers(model, pairs.corrupted)
    n = len(pairs)
    return {"logit_diff_clean": clean, "logit_diff_changed": changed, "effect": clean - changed,
            "follows_written": sum(a == r["answer"] for a, r in zip(answers, pairs.corrupted.rows)) / n,
            "keeps_clean": sum(a == r["answer"] for a, r in zip(answers, pairs.clean.rows)) / n}


@torch.no_grad()
def modulus_patching(model: HookedTransformer, pairs: PatchingPairs,
                     min_effect: float = MIN_PATCHABLE_EFFECT) -> dict[str, torch.Tensor]:
    """Normalized first-digit logit difference restored by patching clean activations into the run on
    the changed modulus (a HookedTransformer): "resid_pre" [n_layers, pos] and "z_all_pos"
    [n_layers, n_heads]. Raises ValueError when the modulus moves the logit difference by less than
    `min_effect` (there is nothing to restore)."""
    device = model.cfg.device
    clean_logits, clean_cache = run_cache(model, pairs.clean_tokens.to(device))
    changed_logits, changed_cache = run_cache(model, pairs.corrupted_tokens.to(device))
    metric = first_digit_metric(pairs).calibrate(clean_logits.cpu(), changed_logits.cpu())
    if abs(metric.clean_value - metric.corrupted_value) < min_effect:
        raise ValueError(f"the written modulus moves the first-digit logit difference by only "
                         f"{metric.clean_value - metric.corrupted_value:.3f} (< {min_effect}): nothing to patch")
    found = patch_sweeps(model, pairs.corrupted_tokens, clean_cache, {"logit_diff": metric}, PATCHING_SWEEPS, changed_cache)
    return {sweep: found["logit_diff", sweep].cpu() for sweep in PATCHING_SWEEPS}


def patching_summary(patched: dict[str, torch.Tensor], modulus: int = 113, top: int = 3,
                     min_restored: float = MIN_RESTORED) -> dict:
    """What `modulus_patching` found, in numbers:

    * `at_modulus_digits`: the most that patching layer 0's input at one digit of `modulus` restores;
    * `top_heads`: the `top` heads restoring most, as (label like "L0H7", restored);
    * `positions_by_layer`: for each layer, the positions whose residual stream restores at least
      `min_restored` (where the modulus information sits on its way to `=`).
    """
    resid, heads = patched["resid_pre"], patched["z_all_pos"]  # [n_layers, pos], [n_layers, n_heads]
    best = heads.flatten().topk(top)
    labels = head_labels(*heads.shape)
    return {"at_modulus_digits": resid[0, modulus_positions(modulus)].max().item(),
            "top_heads": [(labels[i], v) for v, i in zip(best.values.tolist(), best.indices.tolist())],
            "positions_by_layer": {layer: (row >= min_restored).nonzero().flatten().tolist()
                                   for layer, row in enumerate(resid)}}


def answered_modulus(rows: Sequence[dict], answers: Sequence[str], candidates: Sequence[int]) -> list[str]:
    """For each row, the modulus its answer is right for: the row's own ("m" key) if it is, else the
    first of `candidates` (order them by preference, e.g. nearest first) for which a + b mod it is
    the answer, else OTHER. Below every candidate a + b mod m is a + b for all of them, so such an
    answer counts as the row's own."""
    found = []
    for row, answer in zip(rows, answers, strict=True):
        total = row["a"] + row["b"]
        match = next((m for m in (row["m"], *candidates) if str(total % m) == answer), None)
        found.append(OTHER if match is None else str(match))
    return found


def held_out_answer_shares(rows: Sequence[dict], answers: Sequence[str], train_moduli: Sequence[int]) -> dict[str, float]:
    """On prompts written with one (held-out) modulus, the share of answers right for "the written one",
    for "mod <m>" (a training modulus, the nearest to the written one preferred when several give the
    answer) and for "none"; largest share first."""
    written = {row["m"] for row in rows}
    if len(written) != 1:
        raise ValueError(f"the rows must all be written with one modulus, got {sorted(written)}")
    held = written.pop()
    nearest = sorted(train_moduli, key=lambda m: abs(m - held))
    kinds = answered_modulus(rows, answers, nearest)
    labels = ["the written one" if k == str(held) else "none" if k == OTHER else f"mod {k}" for k in kinds]
    counts = {label: labels.count(label) / len(labels) for label in set(labels)}
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def exact_by_modulus(model: torch.nn.Module, splits: dict[str, ArithmeticSplit]) -> dict[int, float]:
    """Exact match per written modulus over the named `splits` (the one evaluation path, broken down
    by modulus), sorted by modulus."""
    found = {}
    for name, split in splits.items():
        metrics = evaluate_split(model, split, name, by=("modulus",))
        found |= {int(m): v for m, v in breakdown(metrics, name, by="modulus").items()}
    return dict(sorted(found.items()))


def is_general(exact_per_modulus: dict[int, float], held_out: Sequence[int], margin: float = GENERAL_MARGIN) -> bool:
    """Whether a model computes "mod the number written" beyond its training moduli: every held-out
    modulus's exact match (`exact_by_modulus`) is within `margin` of the weakest training modulus's."""
    missing = [m for m in held_out if m not in exact_per_modulus]
    seen = [v for m, v in exact_per_modulus.items() if m not in held_out]
    if not held_out or missing or not seen:
        raise ValueError(f"is_general needs exact match for held-out moduli {list(held_out)} (missing: {missing}) "
                         f"and for at least one training modulus (got moduli {sorted(exact_per_modulus)})")
    return min(exact_per_modulus[m] for m in held_out) >= min(seen) - margin
