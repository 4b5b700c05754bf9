"""Candidate features of arithmetic prompts: what a probe or a neuron might represent.

For rows `a + b mod m =` (data rows as in data/*.jsonl), `feature_table` computes one column per
feature in `FEATURES`:

    operand digits    a2 a1 a0, b2 b1 b0: the hundreds, tens and units digit (0 above the number)
    operands          a, b
    residues          a mod m, b mod m, (a+b) mod m   (the answer is (a+b) mod m), and the residues of
                      the operands without their units digit, a-a0 mod m and b-b0 mod m
                      (= (100 a2 + 10 a1) mod m: what is known at a's tens digit)
    sum               a+b
    wrap              floor((a + b) / m): how many times the modulus is subtracted
    answer            ans d1, ans d2, ans d3: the answer's first, second and third digit in writing
                      order (the order the model writes them; NO_DIGIT = 10 past its end); ans len

Each feature has a kind (`Feature.kind`):

* "class":   a categorical value 0 .. n_classes-1 (probed as an n-way linear classifier);
* "scalar":  a number (probed by linear regression);
* "residue": a value mod `n_classes` = the modulus (probed both as an n-way class and as a point on
             the circle (cos, sin)(2 pi k x / m) for each frequency k).

`residue_grid_rows` builds one prompt per (a mod m, b mod m) cell, for 2-D Fourier spectra.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

from mechlab.arithmetic.data import MAX_OPERAND, MODULUS, Example, bucket_of


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # "class", "scalar" or "residue"
    family: str  # the group it is plotted with
    n_classes: int = 0  # classes ("class") or the modulus ("residue"); 0 for scalars


NO_DIGIT = 10  # the class of an answer digit past the end of a shorter answer
MAX_WRAPS = (2 * MAX_OPERAND) // MODULUS  # 17: a + b <= 1998 wraps at most 17 times mod 113
FEATURES: tuple[Feature, ...] = (
    *(Feature(f"{x}{k}", "class", "operand digits", 10) for x in "ab" for k in (2, 1, 0)),
    Feature("a", "scalar", "operands"),
    Feature("b", "scalar", "operands"),
    Feature("a mod m", "residue", "residues", MODULUS),
    Feature("b mod m", "residue", "residues", MODULUS),
    Feature("a-a0 mod m", "residue", "residues", MODULUS),
    Feature("b-b0 mod m", "residue", "residues", MODULUS),
    Feature("(a+b) mod m", "residue", "residues", MODULUS),
    Feature("a+b", "scalar", "sum"),
    Feature("wraps", "class", "wrap", MAX_WRAPS + 1),
    *(Feature(f"ans d{k}", "class", "answer", 11) for k in (1, 2, 3)),
    Feature("ans len", "class", "answer", 4),
)
FEATURE_BY_NAME = {f.name: f for f in FEATURES}
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(f.family for f in FEATURES))


def digit(x: int, place: int) -> int:
    """The digit of x at 10**place (0 above the number): digit(234, 2) == 2, digit(34, 2) == 0."""
    return (x // 10 ** place) % 10


def feature_values(a: int, b: int, m: int) -> dict[str, int]:
    """Every feature of `FEATURES` for one problem a + b mod m."""
    answer = (a + b) % m
    values = {f"a{k}": digit(a, k) for k in (2, 1, 0)} | {f"b{k}": digit(b, k) for k in (2, 1, 0)}
    values |= {"a": a, "b": b, "a mod m": a % m, "b mod m": b % m, "a-a0 mod m": (a - a % 10) % m,
               "b-b0 mod m": (b - b % 10) % m, "(a+b) mod m": answer,
               "a+b": a + b, "wraps": (a + b) // m}
    text = str(answer)
    values |= {f"ans d{k}": int(text[k - 1]) if k <= len(text) else NO_DIGIT for k in (1, 2, 3)}
    values["ans len"] = len(text)
    return values


def feature_table(rows: list[dict]) -> pd.DataFrame:
    """[len(rows), len(FEATURES)] integer table, one column per feature (in `FEATURES` order)."""
    return pd.DataFrame([feature_values(r["a"], r["b"], r["m"]) for r in rows], columns=[f.name for f in FEATURES])


def residue_grid_rows(m: int = MODULUS, max_operand: int = MAX_OPERAND, seed: int = 0) -> list[dict]:
    """m * m data rows, row x * m + y with a mod m == x and b mod m == y; a and b are drawn
    uniformly among the operands <= max_operand with that residue."""
    rng = random.Random(seed)
    pick = lambda r: rng.randrange(r, max_operand + 1, m)  # noqa: E731
    rows = []
    for x in range(m):
        for y in range(m):
            a, b = pick(x), pick(y)
            rows.append(Example(a, b, m, bucket_of(a, b, m)).to_json())
    return rows

# Neuron kinds named after the family of a neuron's strongest feature (mechlab.analysis.neurons.NEURON_RULE).
NEURON_KIND_BY_FAMILY = {"operand digits": "digit detector", "operands": "operand magnitude", "residues": "residue",
                         "sum": "sum magnitude", "wrap": "wrap detector", "answer": "answer digit"}
