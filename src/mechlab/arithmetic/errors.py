"""What kind of wrong answer: an error taxonomy for `a + b mod m =` prompts, and the prompt
variants that probe it (the same operands with another modulus).

`classify_answer` puts a generated answer in exactly one category, by the precedence in
`PRECEDENCE` (first match wins):

    correct                 the answer is (a + b) mod m
    other modulus           it is (a + b) mod k for another modulus k of `OTHER_MODULI`
                            (e.g. answering mod 113, the training modulus, when asked mod 127)
    wrap count              it is congruent to a + b mod m but not reduced: a + b minus the wrong
                            multiple of m (e.g. a + b itself)
    one digit wrong         same number of digits as the true answer, exactly one differs
    digit dropped or added  one digit more or fewer than the true answer, the rest in order
    operand copied          it is a or b
    other                   none of these (also anything that is not a number)

The digit categories need an answer made of digits only. The categories overlap (an answer can be
both a mod-113 answer and one digit off), hence the precedence; `shuffled_answers` gives the
control: how often each category occurs when answers are paired with the wrong prompts.
"""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from mechlab.arithmetic.data import Example, bucket_of
from mechlab.arithmetic.task import ArithmeticSplit, predicted_answers
from mechlab.arithmetic.tokenizer import EQUALS_POS, MODEL_INPUT_LEN

OTHER_MODULI = (97, 113, 127)  # the training modulus and the moduli of the OOD sets
CATEGORIES = ("correct", "other modulus", "wrap count", "one digit wrong", "digit dropped or added",
              "operand copied", "other")
PRECEDENCE = " > ".join(CATEGORIES)


def _is_number(text: str) -> bool:
    """Digits only, without a leading zero (the form every true answer has)."""
    return text.isascii() and text.isdigit() and (text == "0" or text[0] != "0")


def _one_digit_apart(x: str, y: str) -> bool:
    return len(x) == len(y) and sum(c != d for c, d in zip(x, y)) == 1


def _one_insertion_apart(x: str, y: str) -> bool:
    """Deleting one character of the longer string gives the shorter one."""
    short, long = sorted((x, y), key=len)
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def classify_answer(a: int, b: int, m: int, predicted: str, moduli: Sequence[int] = OTHER_MODULI) -> str:
    """The category of `predicted` as the answer to `a + b mod m =` (see the module docstring)."""
    truth = str((a + b) % m)
    if predicted == truth:
        return "correct"
    if any(predicted == str((a + b) % k) for k in moduli if k != m):
        return "other modulus"
    if not predicted.isascii() or not predicted.isdigit():
        return "other"
    if _is_number(predicted) and (a + b - int(predicted)) % m == 0:
        return "wrap count"
    if _one_digit_apart(predicted, truth):
        return "one digit wrong"
    if _one_insertion_apart(predicted, truth):
        return "digit dropped or added"
    if predicted in (str(a), str(b)):
        return "operand copied"
    return "other"


def classify_answers(rows: Sequence[dict], answers: Sequence[str], moduli: Sequence[int] = OTHER_MODULI) -> list[str]:
    """`classify_answer` for each data row (keys a, b, m) and its generated answer."""
    if len(rows) != len(answers):
        raise ValueError(f"{len(rows)} rows but {len(answers)} answers")
    return [classify_answer(r["a"], r["b"], r["m"], p, moduli) for r, p in zip(rows, answers)]


def taxonomy_table(sets: Mapping[str, tuple[Sequence[dict], Sequence[str]]]) -> pd.DataFrame:
    """Counts per category (columns, in `CATEGORIES` order) for each named (rows, answers) set (rows)."""
    counts = {name: pd.Series(classify_answers(rows, answers)).value_counts() for name, (rows, answers) in sets.items()}
    return pd.DataFrame(counts).T.reindex(columns=list(CATEGORIES)).fillna(0).astype(int)


def shuffled_answers(answers: Sequence[str], seed: int = 0) -> list[str]:
    """The same answers in a seeded random order: paired with the original rows, a control for how
    often each category occurs by chance given the model's answers (not its prompts)."""
    shuffled = list(answers)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def model_answers(model: torch.nn.Module, rows: Sequence[dict]) -> list[str]:
    """The greedily generated answer to each data row's prompt (`task.predicted_answers`)."""
    return predicted_answers(model, ArithmeticSplit.from_rows(list(rows)))


def with_modulus(rows: Sequence[dict], m: int) -> list[dict]:
    """The same operands asked mod `m`: data rows with prompt, answer and bucket recomputed."""
    return [Example(r["a"], r["b"], m, bucket_of(r["a"], r["b"], m)).to_json() for r in rows]


def same_answer_share(x: Sequence[str], y: Sequence[str]) -> float:
    """Fraction of positions where two answer lists agree (e.g. a model's answers to the same
    operands under two moduli)."""
    if len(x) != len(y) or not x:
        raise ValueError(f"need two non-empty answer lists of one length, got {len(x)} and {len(y)}")
    return sum(p == q for p, q in zip(x, y)) / len(x)


def one_digit_moduli(m: int) -> list[tuple[int, int, int]]:
    """Every modulus with the digit count of `m` that differs from it in exactly one digit, as
    (place, digit, modulus): place 10**k of the changed digit, its new value, the modulus
    (no leading zero). E.g. 113 -> (1, 7, 117), (10, 2, 123), (100, 7, 713), ..."""
    text = str(m)
    out = []
    for k, old in enumerate(text):
        place = 10 ** (len(text) - 1 - k)
        for digit in range(10):
            if str(digit) == old or (k == 0 and digit == 0 and len(text) > 1):
                continue
            out.append((place, digit, int(text[:k] + str(digit) + text[k + 1:])))
    return out


def shifted_operand_positions(shift: int, modulus_digits: int = 3) -> torch.Tensor:
    """[MODEL_INPUT_LEN] int64 position index for `compare.position_remap_hook`: every prompt
    position before the modulus digits of a prompt whose modulus has `modulus_digits` digits
    (the padding, both operands, "+" and "mod") moves by `shift`; <bos>, the modulus, "=" and the
    answer keep theirs. shift=1 on a "mod 113" prompt puts a and b where a "mod 97" prompt has them."""
    first_modulus_pos = EQUALS_POS - 1 - modulus_digits
    index = torch.arange(MODEL_INPUT_LEN)
    index[1:first_modulus_pos] += shift
    return index
