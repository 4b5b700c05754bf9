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
* `answered_modulus`: for each answer, the modulus it is right for (the written one, or which other).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from mechlab.analysis.patching import patch_sweeps, run_cache
from mechlab.arithmetic.pairs import LogitDiffMetric, PatchingPairs
from mechlab.arithmetic.task import predicted_answers
from mechlab.arithmetic.tokenizer import EQUALS_POS

PATCHING_SWEEPS = ("resid_pre", "z_all_pos")
# Below this first-digit logit difference between the clean and changed runs, normalising a patched
# run divides by almost nothing: `modulus_patching` refuses rather than return noise.
MIN_PATCHABLE_EFFECT = 0.5
OTHER = "other"  # `answered_modulus` for an answer that no candidate modulus gives


def modulus_positions(m: int) -> list[int]:
    """Token positions of the digits of modulus `m`; prompts end "... mod 113 =" at `EQUALS_POS`."""
    n_digits = len(str(m))
    return list(range(EQUALS_POS - 1 - n_digits, EQUALS_POS - 1))


def first_digit_metric(pairs: PatchingPairs) -> LogitDiffMetric:
    """logit(clean first digit) - logit(changed first digit) at `=`, mean over the pairs (raw, uncalibrated)."""
    return LogitDiffMetric(pairs.clean_first_digit, pairs.corrupted_first_digit)


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
def modulus_patching(model, pairs: PatchingPairs, min_effect: float = MIN_PATCHABLE_EFFECT) -> dict[str, torch.Tensor]:
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


GENERAL_MARGIN = 0.10  # how far below the weakest training modulus a held-out one may score


def is_general(exact_by_modulus: dict[int, float], held_out: Sequence[int], margin: float = GENERAL_MARGIN) -> bool:
    """Whether a model computes "mod the number written" beyond its training moduli: every held-out
    modulus's exact match is within `margin` of the weakest training modulus's."""
    seen = [v for m, v in exact_by_modulus.items() if m not in held_out]
    return min(exact_by_modulus[m] for m in held_out) >= min(seen) - margin
