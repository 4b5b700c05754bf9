"""Clean/corrupted pairs of arithmetic problems for activation patching, and the normalized
metrics that score them (0 = corrupted run, 1 = clean run).

Pairs (`make_pairs`) change one thing at a time and keep the token layout identical (same
operand digit counts, same answer length), so positions line up between clean and corrupted:

* kind "a":    a changed, b the same, same number of wraps ((a + b) // m unchanged)
* kind "b":    b changed, a the same, same number of wraps
* kind "wrap": a changed so that the sum crosses the modulus: one of the two sums is < m (no
               wrap), the other in [m, 2m) (one wrap)
* kind "m":    the modulus changed (to another of `moduli` with as many digits), a and b the same:
               does the model read the modulus it is given? (the multi-modulus extension)

and the first answer digit always differs, so the first-digit logit difference is informative.

Runs are teacher-forced on the clean answer: the clean input is clean prompt + clean answer,
the corrupted input is corrupted prompt + clean answer (`PatchingPairs.clean_tokens`,
`corrupted_tokens`). Metrics (`LogitDiffMetric`, `ExactMatchMetric`) are normalized so that
0 = corrupted run, 1 = clean run:

* logit diff: logit(clean first digit) - logit(corrupted first digit) at `=`, mean over pairs;
* exact match: fraction of pairs whose whole clean answer (digits and <eos>) is the argmax at
  every answer position given the clean prefix, i.e. what greedy decoding would generate
  (`arithmetic.teacher_forced_exact`, the repo's one exact-match definition).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mechlab.analysis.patching import PatchingMetric
from mechlab.arithmetic.data import MAX_OPERAND, MODULUS, Example, bucket_of
from mechlab.arithmetic.task import ArithmeticSplit, teacher_forced_exact
from mechlab.arithmetic.tokenizer import EQUALS_POS, MODEL_INPUT_LEN, N_ANSWER_TOKENS

ANSWER_POSITIONS = list(range(EQUALS_POS, EQUALS_POS + N_ANSWER_TOKENS))  # positions predicting answer tokens
PAIR_KINDS = ("a", "b", "wrap")  # the main study's kinds (one modulus)
MODULUS_KIND = "m"  # needs prompts with several moduli (make_pairs(..., moduli=...))


# --- clean / corrupted pairs -------------------------------------------------------------------

def _digits(x: int) -> int:
    return len(str(x))


def _same_digit_range(x: int) -> range:
    d = _digits(x)
    return range(0 if d == 1 else 10 ** (d - 1), 10**d)


def _corrupt(row: dict, kind: str, rng: random.Random, moduli: Sequence[int]) -> dict | None:
    a, b, m = row["a"], row["b"], row["m"]
    answer = str((a + b) % m)
    if kind == MODULUS_KIND:
        others = [n for n in moduli if n != m and _digits(n) == _digits(m)]
        ok = [n for n in others if len(str((a + b) % n)) == len(answer) and str((a + b) % n)[0] != answer[0]]
        if not ok:
            return None
        new_m = rng.choice(ok)
        return Example(a, b, new_m, bucket_of(a, b, new_m)).to_json()
    if kind == "a":
        cands = [(x, b) for x in _same_digit_range(a) if x != a and (x + b) // m == (a + b) // m]
    elif kind == "b":
        cands = [(a, y) for y in _same_digit_range(b) if y != b and (a + y) // m == (a + b) // m]
    elif kind == "wrap":
        if (a + b) // m not in (0, 1):
            return None
        want = 1 - (a + b) // m
        cands = [(x, b) for x in _same_digit_range(a) if (x + b) // m == want]
    else:
        raise ValueError(f"unknown pair kind {kind!r}; expected one of {PAIR_KINDS + (MODULUS_KIND,)}")
    cands = [(x, y) for x, y in cands if x <= MAX_OPERAND and y <= MAX_OPERAND]
    ok = []
    for x, y in cands:
        ans = str((x + y) % m)
        if len(ans) == len(answer) and ans[0] != answer[0]:
            ok.append((x, y))
    if not ok:
        return None
    x, y = rng.choice(ok)
    return Example(x, y, m, bucket_of(x, y, m)).to_json()


@dataclass
class PatchingPairs:
    """Clean rows (from a data split) and their corrupted partners, aligned row by row."""

    kind: str
    clean: ArithmeticSplit
    corrupted: ArithmeticSplit

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def clean_tokens(self) -> torch.Tensor:
        """[n, MODEL_INPUT_LEN]: clean prompt + clean answer (teacher forcing)."""
        return self.clean.tokens[:, :MODEL_INPUT_LEN]

    @property
    def corrupted_tokens(self) -> torch.Tensor:
        """[n, MODEL_INPUT_LEN]: corrupted prompt + the *clean* answer, so the metrics score the clean answer."""
        return torch.cat([self.corrupted.prompts, self.clean.answers], dim=1)[:, :MODEL_INPUT_LEN]

    @property
    def clean_answers(self) -> torch.Tensor:
        return self.clean.answers

    @property
    def clean_first_digit(self) -> torch.Tensor:
        return self.clean.answers[:, 0]

    @property
    def corrupted_first_digit(self) -> torch.Tensor:
        return self.corrupted.answers[:, 0]

    def subset(self, n: int) -> "PatchingPairs":
        return PatchingPairs(self.kind, ArithmeticSplit(self.clean.rows[:n], self.clean.tokens[:n]),
                             ArithmeticSplit(self.corrupted.rows[:n], self.corrupted.tokens[:n]))


# Operand digit counts per pair kind for position-aligned sweeps: with one layout every pair has
# the same token at every position, so a per-position result means the same thing for all pairs.
# ("wrap" needs a + b < 113 on one side, hence two-digit operands.)
DEFAULT_LAYOUTS = {"a": (3, 3), "b": (3, 3), "wrap": (2, 2)}


def make_pairs(rows: Sequence[dict], kind: str, n: int, seed: int = 0,
               digits: tuple[int, int] | None = None, moduli: Sequence[int] = (MODULUS,)) -> PatchingPairs:
    """Up to `n` clean/corrupted pairs of `kind` (see the module docstring), clean rows drawn in
    a seeded random order from `rows` (e.g. the test split). Rows with no valid partner are skipped.
    `digits=(da, db)` keeps only clean rows whose operands have da and db digits (one layout);
    only rows whose modulus is one of `moduli` are used, and kind "m" draws its new modulus from them."""
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    clean, corrupted = [], []
    for i in order:
        if len(clean) >= n:
            break
        row = rows[i]
        if row.get("m", MODULUS) not in moduli:
            continue
        if digits is not None and (_digits(row["a"]), _digits(row["b"])) != tuple(digits):
            continue
        partner = _corrupt(row, kind, rng, moduli)
        if partner is not None:
            clean.append(row)
            corrupted.append(partner)
    if not clean:
        raise ValueError(f"no valid {kind!r} pairs among {len(rows)} rows")
    return PatchingPairs(kind, ArithmeticSplit.from_rows(clean), ArithmeticSplit.from_rows(corrupted))


# --- normalized metrics ----------------------------------------------------------------------------

class LogitDiffMetric(PatchingMetric):
    """logit(clean first digit) - logit(corrupted first digit) at `=`, mean over pairs."""

    def __init__(self, clean_digit: torch.Tensor, corrupted_digit: torch.Tensor):
        self.positions = [EQUALS_POS]
        self.clean_digit, self.corrupted_digit = clean_digit, corrupted_digit

    def raw(self, logits_at_positions):
        lp = logits_at_positions[..., 0, :]  # [..., batch, V]
        idx = torch.arange(lp.shape[-2])
        diff = lp[..., idx, self.clean_digit] - lp[..., idx, self.corrupted_digit]
        return diff.mean(-1)


class ExactMatchMetric(PatchingMetric):
    """Fraction of pairs whose whole clean answer is generated (teacher-forced exact match)."""

    def __init__(self, answers: torch.Tensor):
        self.positions = list(ANSWER_POSITIONS)
        self.answers = answers

    def raw(self, logits_at_positions):
        return teacher_forced_exact(logits_at_positions, self.answers).float().mean(-1)


def first_digit_metric(pairs: PatchingPairs) -> LogitDiffMetric:
    """logit(clean first answer digit) - logit(corrupted first answer digit) at `=`, mean over the
    pairs (raw until calibrated)."""
    return LogitDiffMetric(pairs.clean_first_digit, pairs.corrupted_first_digit)


@torch.no_grad()
def make_metrics(model, pairs: PatchingPairs) -> dict[str, PatchingMetric]:
    """Both metrics, calibrated on this model's clean and corrupted runs of `pairs`."""
    clean_logits = model(pairs.clean_tokens.to(model.cfg.device)).cpu()
    corrupted_logits = model(pairs.corrupted_tokens.to(model.cfg.device)).cpu()
    metrics: dict[str, PatchingMetric] = {
        "logit_diff": first_digit_metric(pairs),
        "exact": ExactMatchMetric(pairs.clean_answers),
    }
    out = {}
    for name, metric in metrics.items():
        try:
            out[name] = metric.calibrate(clean_logits, corrupted_logits)
        except ValueError:
            pass  # e.g. exact match when the model gets neither run right
    return out


# --- is there a separate "modulo" head? ---------------------------------------------------------

MODULO_MIN_EFFECT = 0.1  # a wrap-specific head restores more than this of the clean metric on wrap pairs
MODULO_MIN_EXCESS = 0.1  # ... and more than this above what it restores on "a" pairs


def modulo_head_candidate(wrap_effect: torch.Tensor, a_effect: torch.Tensor, min_effect: float = MODULO_MIN_EFFECT,
                          min_excess: float = MODULO_MIN_EXCESS) -> tuple[int, bool]:
    """The head whose patch matters most *more* for wrap pairs than for "a" pairs, and whether it
    is a candidate wrap-specific ("modulo") head: it restores > `min_effect` on wrap pairs and
    > `min_excess` more than on "a" pairs. `wrap_effect`, `a_effect`: [n_layers, n_heads]
    normalized patching results (`z_all_pos` sweep). Returns (flat head index l * n_heads + h, is_candidate)."""
    wrap, excess = wrap_effect.flatten(), (wrap_effect - a_effect).flatten()
    i = int(excess.argmax())
    return i, bool(excess[i] > min_excess and wrap[i] > min_effect)
