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
  enters and travels to `=`) and each head's output (which heads carry it).
"""
from __future__ import annotations

import torch

from mechlab.analysis.patching import batched_patch, run_cache
from mechlab.arithmetic.pairs import LogitDiffMetric, PatchingPairs
from mechlab.arithmetic.task import answer_logits, predicted_answers
from mechlab.arithmetic.tokenizer import EQUALS_POS

PATCHING_SWEEPS = ("resid_pre", "z_all_pos")


def modulus_positions(m: int) -> list[int]:
    """Token positions of the digits of modulus `m`; prompts end "... mod 113 =" at `EQUALS_POS`."""
    n_digits = len(str(m))
    return list(range(EQUALS_POS - 1 - n_digits, EQUALS_POS - 1))


@torch.no_grad()
def first_digit_logit_diff(model, tokens: torch.Tensor, pairs: PatchingPairs) -> float:
    """logit(clean first digit) - logit(changed first digit) at `=`, mean over the pairs."""
    device = next(model.parameters()).device
    logits = answer_logits(model, tokens.to(device)).cpu()  # [n, answer positions, V]
    return LogitDiffMetric(pairs.clean_first_digit, pairs.corrupted_first_digit).raw(logits[:, :1]).item()


@torch.no_grad()
def modulus_effect(model, pairs: PatchingPairs) -> dict[str, float]:
    """How much the written modulus matters, on modulus pairs:

    * `logit_diff_clean`, `logit_diff_changed`: the first-digit logit difference on the clean
      prompts and on the prompts with the modulus changed (both scored on the clean answer);
    * `effect`: their difference (0: the modulus's digits change nothing at `=`);
    * `follows_written`: fraction of changed prompts answered with their own answer, a + b mod
      the written modulus;
    * `keeps_clean`: fraction answered with the clean prompt's answer, as if the modulus were unread.
    """
    clean = first_digit_logit_diff(model, pairs.clean_tokens, pairs)
    changed = first_digit_logit_diff(model, pairs.corrupted_tokens, pairs)
    answers = predicted_answers(model, pairs.corrupted)
    n = len(pairs)
    return {"logit_diff_clean": clean, "logit_diff_changed": changed, "effect": clean - changed,
            "follows_written": sum(a == r["answer"] for a, r in zip(answers, pairs.corrupted.rows)) / n,
            "keeps_clean": sum(a == r["answer"] for a, r in zip(answers, pairs.clean.rows)) / n}


@torch.no_grad()
def modulus_patching(model, pairs: PatchingPairs) -> dict[str, torch.Tensor]:
    """Normalized first-digit logit difference restored by patching clean activations into the run on
    the changed modulus: "resid_pre" [n_layers, pos] and "z_all_pos" [n_layers, n_heads].
    Raises ValueError when the modulus does not move the logit difference (nothing to restore)."""
    device = model.cfg.device
    metric = LogitDiffMetric(pairs.clean_first_digit, pairs.corrupted_first_digit).calibrate(
        model(pairs.clean_tokens.to(device)).cpu(), model(pairs.corrupted_tokens.to(device)).cpu())
    _, clean_cache = run_cache(model, pairs.clean_tokens.to(device))
    return {sweep: batched_patch(model, pairs.corrupted_tokens, clean_cache, metric, sweep).cpu()
            for sweep in PATCHING_SWEEPS}
