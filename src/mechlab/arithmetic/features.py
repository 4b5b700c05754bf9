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
`residue_readout` fits residue probes at `=` on in-distribution prompts and scores them, unchanged,
on other sets (the out-of-distribution sets of notebook 08): does the model still compute the
mod-113 quantities there?
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from mechlab.analysis.probes import cache_activations, fit_probes, probe_transfer
from mechlab.arithmetic.data import MAX_OPERAND, MODULUS, Example, bucket_of
from mechlab.arithmetic.task import TOKENIZER, ArithmeticSplit
from mechlab.arithmetic.tokenizer import EQUALS_POS, MODEL_INPUT_LEN, ArithmeticTokenizer


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


def operand_digit_code(table: pd.DataFrame) -> torch.Tensor:
    """[n, 60] one-hot code of the six operand digits of a `feature_table`: the input of a probe
    baseline, since whatever is linear in these codes (any sum f(a2) + g(a1) + ...) is readable
    from copied digits without any computation."""
    digits = [f.name for f in FEATURES if f.family == "operand digits"]
    return torch.cat([torch.nn.functional.one_hot(torch.tensor(table[c].to_numpy()), 10) for c in digits], 1).double()


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

READOUT_FEATURES = ("a mod m", "b mod m", "(a+b) mod m")  # what `residue_readout` probes by default


def activations_at_equals(model, rows: list[dict], hook_names: Sequence[str],
                          tokenizer: ArithmeticTokenizer = TOKENIZER) -> torch.Tensor:
    """[len(hook_names), len(rows), d_model]: each hook's activation at `=` on each row's prompt
    (written by `tokenizer`: the multi-task one for `-` and `*`)."""
    tokens = ArithmeticSplit.from_rows(rows, tokenizer).tokens[:, :MODEL_INPUT_LEN]
    at_equals = torch.full((len(tokens), 1), EQUALS_POS)
    cache = cache_activations(model, tokens, hook_names, positions=at_equals)
    return torch.stack([cache[h][:, 0] for h in hook_names])


def residue_readout(fit_acts: torch.Tensor, fit_rows: list[dict], sets: dict[str, tuple[torch.Tensor, list[dict]]],
                    points: Sequence[str], features: Sequence[str | Feature] = READOUT_FEATURES, modulus: int = MODULUS,
                    seed: int = 0, values: Callable[[list[dict]], torch.Tensor] | None = None) -> pd.DataFrame:
    """How well residue probes fitted on `fit_rows` read the same quantities on other prompts.

    Probes for `features` (as 113-way classes and on each circle k) are fitted at one slot per prompt
    on fit_acts [n_points, n, d] (`fit_probes`: 75% of the rows, scored on the rest), then scored
    unchanged (`probe_transfer`) on each set's acts [n_points, n_set, d]. By default every row's
    features are taken mod `modulus`, whatever modulus its prompt asks for: a set that scores like
    the fit rows still carries the mod-`modulus` quantities. `values(rows)` -> [n, n_features] replaces
    that for features of other names (a `Feature` each; e.g. the multi-task answer). One row per
    (feature, target, point): metric, "held-out" (the fit rows' held-out score) and one column per set."""
    chosen = [f if isinstance(f, Feature) else FEATURE_BY_NAME[f] for f in features]
    names = [f.name for f in chosen]
    values = values or (lambda rows: torch.tensor(feature_table([r | {"m": modulus} for r in rows])[names].to_numpy()))

    def one_slot(n: int) -> torch.Tensor:
        return torch.ones(n, 1, dtype=torch.bool)

    probes, table = fit_probes(fit_acts[:, :, None], one_slot(len(fit_rows)), values(fit_rows), chosen, list(points),
                               ["="], seed=seed)
    key = ["feature", "target", "point"]
    out = table.set_index(key)[["metric", "score"]].rename(columns={"score": "held-out"})
    for name, (acts, rows) in sets.items():
        out[name] = probe_transfer(probes, acts[:, :, None], one_slot(len(rows)), values(rows)).set_index(key)["score"]
    return out.reset_index()


# Neuron kinds named after the family of a neuron's strongest feature (mechlab.analysis.neurons.NEURON_RULE).
NEURON_KIND_BY_FAMILY = {"operand digits": "digit detector", "operands": "operand magnitude", "residues": "residue",
                         "sum": "sum magnitude", "wrap": "wrap detector", "answer": "answer digit"}


CAUSAL_DROP = 0.5  # exact-match drop that counts as "the model needs these directions"
KEY_FREQUENCY_EXPERIMENT = "key frequencies"  # prefix of the projection experiments on key-frequency directions


def _verdict(held: bool, partial: bool = False) -> str:
    return "held" if held else "partial" if partial else "failed"


def residue_account(first: pd.DataFrame, keys: pd.DataFrame, sweep: pd.DataFrame) -> pd.DataFrame:
    """The residue account's claims, each with its measurement and verdict (held / partial / failed).

    first: `mechlab.analysis.probes.first_readable` of the probes at `=` (with a "baseline"
    column, when given, quoted beside each score); keys:
    `mechlab.analysis.fourier.key_frequency_summary` of the residual stream at `=`; sweep:
    `mechlab.analysis.probes.projection_sweep` whose experiments on key-frequency directions are
    named "key frequencies ...". Readability uses `probes.readable`'s thresholds."""
    def best(feature: str, targets: Sequence[str] | None = None) -> pd.Series:
        g = first[first.feature == feature]
        g = g if targets is None else g[g.target.isin(targets)]
        return g.loc[g["best score"].idxmax()]

    def is_readable(feature: str, circle: bool | None = None) -> bool:
        g = first[first.feature == feature]
        if circle is not None:
            g = g[g.target.str.startswith("k=") == circle]
        return bool((g["first point"] != "never").any())

    def describe(r: pd.Series) -> str:
        baseline = f" (operand digits alone: {r['baseline']:.3f})" if "baseline" in r else ""
        return (f"{r.feature} ({r.target}): best {r.metric} {r['best score']:.3f}{baseline} at {r['best point']}, "
                f"first readable: {r['first point']}")

    rows = []
    operands = [best(f, [t]) for f in ("a mod m", "b mod m") for t in ("class", "k=1")]
    n_ok = sum(is_readable(f) for f in ("a mod m", "b mod m"))
    rows.append({"claim": "a mod m and b mod m are linearly readable at '=' (as classes or on a circle)",
                 "measurement": "; ".join(describe(r) for r in operands), "verdict": _verdict(n_ok == 2, n_ok == 1)})
    circles = first[(first.feature == "(a+b) mod m") & first.target.str.startswith("k=")]
    top = circles.loc[circles["best score"].idxmax()]
    rows.append({"claim": "(a+b) mod m sits on a circle (cos, sin)(2 pi k x / m) at '='",
                 "measurement": describe(top) + "; " + describe(best("(a+b) mod m", ["class"])),
                 "verdict": _verdict(is_readable("(a+b) mod m", circle=True))})
    rows.append({"claim": "a + b is linearly readable at '=' (the first step of the alternative: add, then subtract)",
                 "measurement": describe(best("a+b")), "verdict": _verdict(is_readable("a+b"))})
    wraps = best("wraps")
    rows.append({"claim": "the wrap count floor((a+b)/m) is linearly readable at '=' (the alternative's second step)",
                 "measurement": describe(wraps) + f", selectivity {wraps['best selectivity']:.3f}",
                 "verdict": _verdict(is_readable("wraps"))})
    strongest = keys.loc[keys["share"].idxmax()]
    rows.append({"claim": "the residual stream's key frequencies carry (a+b) waves, not a-only or b-only waves",
                 "measurement": f"at {strongest.point}: key frequencies {strongest['key frequencies']} carry "
                                f"{strongest.share:.1%} of the variance; a+b wave {strongest['a+b wave']:.1%}, "
                                f"a only {strongest['a only']:.1%}, b only {strongest['b only']:.1%}",
                 "verdict": _verdict(strongest["a+b wave"] > strongest["a only"] + strongest["b only"])})
    key = sweep[sweep.experiment.str.startswith(KEY_FREQUENCY_EXPERIMENT)]
    worst = key.loc[key["drop"].idxmax()]
    rows.append({"claim": "projecting the key-frequency directions out breaks the model; random directions do not",
                 "measurement": f"{worst.experiment} ({worst.dim} dims): exact match {worst.base:.3f} -> {worst.score:.3f}; "
                                f"random subspaces of that size: largest drop {worst['random drop (max)']:.3f}",
                 "verdict": _verdict(worst["drop"] >= CAUSAL_DROP and worst["random drop (max)"] < CAUSAL_DROP)})
    return pd.DataFrame(rows)
