"""Adversarial circuit breaking: inputs designed from the circuit account to break a named component,
each with its failure rate predicted before it is run (design document, extension 5).

A design (`Design`) names the component of the circuit account it targets, builds its prompts as
data rows (the project's row format, `data.Example`, through the one tokenizer; a position-level
design also gives a positional remap, `compare.position_remap_hook`), and predicts its exact-match
failure rate (`Prediction`). Three kinds of prediction:

* **measured**: read from a measurement the account already has. `lookalike_prediction` takes the
  failure rate of the *in-distribution lookalikes* of the design's prompts: the rows of a reference
  set (the test split, scored by `task.exact_match`) in the same stratum -- operand digit layout and
  bucket (`stratum`) -- averaged over the design's prompts. The range is the average of the strata's
  Wilson 95% intervals. The account predicts *no* extra failure for designs whose target it says
  is robust to them, and the lookalike rate is then the whole prediction.
* **position-read** (also MEASURED, `position_read_prediction`): for a design that moves positional
  embeddings so that, read by position, the prompt spells another problem (`position_read_rows`):
  if the operands are read by position, the model answers that problem.
* **judgement**: a range and its rationale written into the design (`JUDGEMENTS`), committed before
  the design was run; used where no stored measurement speaks to the design.

The predictions came in three commits, each before what it predicts ran on the main model: the
first six designs (layout_3plus1, layout_1plus3, swapped_positions, wrap_boundary, equal_operands,
leading_zeros); then, after the first quick measurement showed swapped_positions keeping its
answers, crossed_digits and realigned_3plus1 (their rationales say so); then the knock-out below.

`knockout_effects` is the causal check of the account's explanation of the 3 + 1 weakness: remove the
named heads' attention from `=` onward to a's digits (`circuit.attention_knockout_hooks`) on 3 + 1
prompts and on in-distribution prompts of another layout; `KNOCKOUT_EXPECTATION` states, before it
ran, which way the 3 + 1 failure rate should move if those heads' reading of a's digits is the cause.

A design whose prompts the tokenizer refuses (`leading_zeros`: the prompt format has no leading
zeros) is measured as refused, with the tokenizer's message: the refusal is the result.

`measure_designs` scores every design with the one evaluation path (`circuit.row_correct`, i.e.
`task.exact_match`, under the design's positional remap if it has one). A prediction *holds* when
the measured failure rate's Wilson 95% interval overlaps the predicted range (`prediction_holds`).

`target_effects` is the generic causal check: mean-ablate each targeted component (`ablation.ablation_sweep`,
scored by `task.evaluate_split`) on the design's prompts and on in-distribution prompts; a target
that is what breaks should change its effect between the two.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import pandas as pd
import torch

from mechlab.analysis.ablation import Component, ablation_sweep
from mechlab.analysis.compare import position_remap_hook
from mechlab.arithmetic.circuit import (
    CAUSAL_CHANGE,
    attention_knockout_hooks,
    layout_pairs,
    role_positions,
    row_correct,
)
from mechlab.arithmetic.data import MAX_OPERAND, MODULUS, Example, bucket_of
from mechlab.arithmetic.task import TOKENIZER, ArithmeticSplit, digit_lengths, evaluate_split
from mechlab.arithmetic.tokenizer import MODEL_INPUT_LEN, PROMPT_WIDTH, TokenizerError, parse_prompt

Z95 = 1.959964  # two-sided 95% normal quantile, for Wilson intervals
MEASURED, JUDGEMENT, REFUSED = "measured", "judgement", "refused"


class DesignError(ValueError):
    """A design input that cannot be built: the message names the design and the problem."""


@dataclass(frozen=True)
class Prediction:
    """A predicted exact-match failure rate: `point` in [`low`, `high`] (NaN for a refused design),
    of `kind` MEASURED (read from a measurement), JUDGEMENT (stated before running) or REFUSED
    (the tokenizer is predicted to refuse the prompts), and why."""

    kind: str
    point: float
    low: float
    high: float
    rationale: str

    def __post_init__(self) -> None:
        if self.kind not in (MEASURED, JUDGEMENT, REFUSED):
            raise DesignError(f"prediction kind must be {MEASURED!r}, {JUDGEMENT!r} or {REFUSED!r}, got {self.kind!r}")
        if self.kind != REFUSED and not 0.0 <= self.low <= self.point <= self.high <= 1.0:
            raise DesignError(f"a predicted failure rate needs 0 <= low <= point <= high <= 1, "
                              f"got {self.low}, {self.point}, {self.high}")


@dataclass(frozen=True)
class Evidence:
    """The measurement predictions read: reference rows and whether the model got each right
    (`task.exact_match` on the test split)."""

    rows: list[dict]
    correct: torch.Tensor  # [n] bool

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.correct):
            raise DesignError(f"evidence has {len(self.rows)} rows but {len(self.correct)} exact-match values")


@dataclass(frozen=True)
class Design:
    """An input designed to break `targets` (component names, e.g. "L0H0", "MLP3"), the part of the
    circuit account they play (`account`). `pairs()` lists every operand pair it may use (`build`
    samples them into data rows); its failure rate is predicted by `judgement` when set, else by
    `predictor(design, evidence, rows)`, else from the in-distribution lookalikes of its rows
    (`lookalike_prediction`, with `rationale`);
    `remap(tokens)` ([MODEL_INPUT_LEN] int64 or None) moves positional embeddings, for designs that
    no prompt string can express; `rows(pairs)` turns pairs into data rows (default `example_rows`)."""

    name: str
    targets: tuple[str, ...]
    account: str
    pairs: Callable[[], list[tuple[int, int]]]
    rationale: str = ""
    judgement: Prediction | None = None
    remap: Callable[[torch.Tensor], torch.Tensor] | None = None
    rows: Callable[[Sequence[tuple[int, int]]], list[dict]] | None = None
    predictor: Callable[["Design", Evidence, Sequence[dict]], Prediction] | None = None

    def __post_init__(self) -> None:
        if self.judgement is None and self.predictor is None and not self.rationale:
            raise DesignError(f"design {self.name!r} needs a judgement or the rationale of its lookalike prediction")
        if not self.targets:
            raise DesignError(f"design {self.name!r} names no target component")

    def build(self, n: int, seed: int, exclude: set[tuple[int, int]] = frozenset()) -> list[dict]:
        """At most `n` of the design's rows (a seeded sample) whose (a, b) is not in `exclude`
        (e.g. the pairs the model was trained on, and the reference rows the prediction reads)."""
        if n < 1:
            raise DesignError(f"design {self.name!r}: n must be >= 1, got {n}")
        pairs = [p for p in self.pairs() if p not in exclude]
        if not pairs:
            raise DesignError(f"design {self.name!r} has no rows left after excluding {len(exclude):,} pairs")
        sample = random.Random(seed).sample(pairs, min(n, len(pairs)))
        return (self.rows or example_rows)(sample)

    def predict(self, evidence: Evidence, rows: Sequence[dict]) -> Prediction:
        """The predicted failure rate on `rows`: its `judgement`, else its `predictor`'s, else the
        lookalike rate read from `evidence`."""
        if self.judgement is not None:
            return self.judgement
        if self.predictor is not None:
            return self.predictor(self, evidence, rows)
        return lookalike_prediction(rows, evidence, self.rationale)

    def tokens(self, rows: Sequence[dict]) -> torch.Tensor:
        """[n, MODEL_INPUT_LEN] the model inputs of `rows` (prompt teacher-forced with its answer)."""
        return ArithmeticSplit.from_rows(list(rows)).tokens[:, :MODEL_INPUT_LEN]

    def hooks(self, model, tokens: torch.Tensor) -> list[tuple]:
        """The forward hooks under which the design's prompts are run (none for a plain prompt design)."""
        return [] if self.remap is None else [position_remap_hook(model, self.remap(tokens))]


# --- rows --------------------------------------------------------------------------------------------

def example_rows(pairs: Sequence[tuple[int, int]], m: int = MODULUS) -> list[dict]:
    """Data rows (`data.Example.to_json`) of operand pairs, prompts and answers through the tokenizer's rules."""
    return [Example(a, b, m, bucket_of(a, b, m)).to_json() for a, b in pairs]


def wrap_boundary_pairs(offsets: Sequence[int] = (-1, 0, 1), m: int = MODULUS) -> list[tuple[int, int]]:
    """Every (a, b) with 0 <= a, b <= MAX_OPERAND whose sum is a positive multiple of m plus one of
    `offsets` (sums just below, at and just above a wrap: answers m - 1, 0, 1)."""
    sums = sorted({k * m + o for k in range(1, 2 * MAX_OPERAND // m + 2) for o in offsets} & set(range(2 * MAX_OPERAND + 1)))
    return [(a, s - a) for s in sums for a in range(max(0, s - MAX_OPERAND), min(s, MAX_OPERAND) + 1)]


def equal_operand_pairs() -> list[tuple[int, int]]:
    """(a, a) for every operand: the same digits at a's and at b's positions."""
    return [(a, a) for a in range(MAX_OPERAND + 1)]


def crossed_digit_pairs() -> list[tuple[int, int]]:
    """3 + 3 pairs whose b has a tens digit other than 0 (so the crossed reading has no leading zero)."""
    return [(a, b) for a, b in layout_pairs(3, 3) if (b // 10) % 10 != 0]


def zero_padded_prompt(a: int, b: int, m: int = MODULUS, width: int = 3) -> str:
    """`a + b mod m =` with both operands written with leading zeros to `width` digits ("007 + 012 mod 113 =")."""
    if not (0 <= a < 10 ** width and 0 <= b < 10 ** width):
        raise DesignError(f"operands {a}, {b} do not fit in {width} digits")
    return f"{a:0{width}d} + {b:0{width}d} mod {m} ="


def tokenizer_verdict(prompt: str) -> str:
    """"accepted", or the tokenizer's refusal message for `prompt` (`ArithmeticTokenizer.encode_prompt`)."""
    try:
        TOKENIZER.encode_prompt(prompt)
    except TokenizerError as error:
        return f"refused: {error}"
    return "accepted"


def zero_padded_rows(pairs: Sequence[tuple[int, int]], m: int = MODULUS) -> list[dict]:
    """Rows whose prompts write the operands zero-padded to three digits, each passed through the
    tokenizer (`encode_prompt`) first: the format has no leading zeros, so this raises its
    TokenizerError on the first operand below 100 -- the refusal is the result."""
    rows = []
    for a, b in pairs:
        prompt = zero_padded_prompt(a, b, m)
        TOKENIZER.encode_prompt(prompt)
        rows.append(Example(a, b, m, bucket_of(a, b, m)).to_json() | {"prompt": prompt})
    return rows


def short_operand_pairs() -> list[tuple[int, int]]:
    """Pairs with both operands below 100: the ones a leading zero would change."""
    return [(a, b) for a in range(100) for b in range(100)]


def swapped_operand_index(tokens: torch.Tensor) -> torch.Tensor:
    """[MODEL_INPUT_LEN] int64 position index for `compare.position_remap_hook`: a's digits get the
    positional embeddings of b's digits and b's those of a's (tokens unchanged), so the layer-0 heads
    that read fixed positions find b where they read a and a where they read b. Every row of `tokens`
    [n, pos] must share one layout with as many digits in a as in b (e.g. all 3 + 3)."""
    a_pos, b_pos = _operand_positions(tokens, "swapping operand positions")
    if len(a_pos) != len(b_pos):
        raise DesignError(f"swapping operand positions needs as many digits in a as in b, got {len(a_pos)} and {len(b_pos)}")
    index = torch.arange(MODEL_INPUT_LEN)
    index[a_pos], index[b_pos] = b_pos, a_pos
    return index


def crossed_digit_index(tokens: torch.Tensor) -> torch.Tensor:
    """[MODEL_INPUT_LEN] position index: a's hundreds digit and b's tens digit trade positional
    embeddings (tokens unchanged). A model that reads operands by position then reads
    a' = (b's tens, a's tens, a's units) and b' = (b's hundreds, a's hundreds, b's units), whose sum
    differs from a + b by 90 * (b's tens - a's hundreds). Rows must all be 3 + 3 prompts."""
    a_pos, b_pos = _operand_positions(tokens, "crossing digit positions")
    if len(a_pos) != 3 or len(b_pos) != 3:
        raise DesignError(f"crossing digit positions needs 3 + 3 prompts, got {len(a_pos)} + {len(b_pos)} digits")
    index = torch.arange(MODEL_INPUT_LEN)
    index[a_pos[0]], index[b_pos[1]] = b_pos[1], a_pos[0]
    return index


def realigned_a_index(tokens: torch.Tensor, shift: int = -1) -> torch.Tensor:
    """[MODEL_INPUT_LEN] position index: a's digits, the space after a, "+" and the space after it move
    by `shift` (tokens unchanged); b and everything after it keep their positions. shift=-1 on 3 + 1
    prompts puts a and "+" where 3 + 2 prompts have them (b's tens position is then left empty)."""
    a_pos, _ = _operand_positions(tokens, "realigning a")
    first, last = int(a_pos[0]), int(a_pos[-1]) + 3  # a's digits, " ", "+", " "
    if first + shift < 1:
        raise DesignError(f"realigning a by {shift} would move it onto <bos> (a starts at position {first})")
    index = torch.arange(MODEL_INPUT_LEN)
    index[first:last + 1] += shift
    return index


def _operand_positions(tokens: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions of a's digits, of b's digits) shared by every row of `tokens`, else DesignError."""
    try:
        return tuple(role_positions(tokens, role).nonzero().flatten() for role in ("a", "b"))
    except ValueError as error:
        raise DesignError(f"{what} needs one shared layout: {error}") from None


def position_read_rows(rows: Sequence[dict], index: torch.Tensor) -> list[dict]:
    """The rows of the problems that the positions spell under the remap `index` (token i is read at
    position index[i]): e.g. under `swapped_operand_index`, "123 + 456" reads "456 + 123". The remap
    must permute the prompt positions; a read prompt the tokenizer refuses is a DesignError."""
    n = 1 + PROMPT_WIDTH
    if sorted(index[:n].tolist()) != list(range(n)):
        raise DesignError("the remap does not permute the prompt positions: some position would hold no token")
    tokens = ArithmeticSplit.from_rows(list(rows)).prompts  # [n_rows, 1 + PROMPT_WIDTH]
    read = torch.empty_like(tokens)
    read[:, index[:n]] = tokens
    out = []
    for row, ids in zip(rows, read):
        prompt = TOKENIZER.decode(ids)
        try:
            problem = parse_prompt(prompt)
        except TokenizerError as error:
            raise DesignError(f"{row['prompt']!r} reads as {prompt!r} under the remap, which is not a prompt: {error}") from None
        out.append(Example(problem.a, problem.b, problem.m, bucket_of(problem.a, problem.b, problem.m)).to_json())
    return out


def position_read_split(design: "Design", rows: Sequence[dict]) -> ArithmeticSplit:
    """The design's prompts (the tokens of `rows`) teacher-forced with the answers of the problems their
    positions spell (`position_read_rows`): exact match on it says how often the model answers the
    problem it reads by position."""
    if design.remap is None:
        raise DesignError(f"design {design.name!r} moves no position: its prompts read as written")
    read = position_read_rows(rows, design.remap(design.tokens(rows)))
    return ArithmeticSplit(read, TOKENIZER.encode_batch([r["prompt"] for r in rows], [r["answer"] for r in read]))


# --- predictions ---------------------------------------------------------------------------------------

def wilson_interval(failures: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a rate `failures / n` (n >= 1)."""
    if n < 1 or not 0 <= failures <= n:
        raise DesignError(f"a rate needs n >= 1 and 0 <= failures <= n, got {failures} of {n}")
    p = failures / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def stratum(row: dict) -> tuple[str, str]:
    """The in-distribution stratum a row is compared with: (operand digit layout, bucket), e.g. ("3+1", "large_wrap")."""
    return digit_lengths(row), row["bucket"]


def stratum_failures(evidence: Evidence) -> dict[tuple[str, str], tuple[int, int]]:
    """(failures, rows) of the evidence per stratum, per digit layout ((layout, "*")) and overall (("*", "*"))."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row, ok in zip(evidence.rows, evidence.correct.tolist()):
        layout, bucket = stratum(row)
        for key in ((layout, bucket), (layout, "*"), ("*", "*")):
            counts[key][0] += not ok
            counts[key][1] += 1
    return {k: (f, n) for k, (f, n) in counts.items()}


def lookalike_prediction(rows: Sequence[dict], evidence: Evidence, rationale: str) -> Prediction:
    """MEASURED prediction: each row's failure rate is that of its stratum in the evidence (falling
    back to its digit layout, then to all rows, when the evidence has no row of that stratum); the
    point is their mean and the range the mean of their Wilson 95% intervals."""
    if not rows:
        raise DesignError("a lookalike prediction needs at least one design row")
    table = stratum_failures(evidence)
    points, lows, highs = [], [], []
    for row in rows:
        layout, bucket = stratum(row)
        key = next(k for k in ((layout, bucket), (layout, "*"), ("*", "*")) if k in table)
        failures, n = table[key]
        low, high = wilson_interval(failures, n)
        points.append(failures / n)
        lows.append(low)
        highs.append(high)
    mean = sum(points) / len(points)
    return Prediction(MEASURED, mean, min(sum(lows) / len(lows), mean), max(sum(highs) / len(highs), mean), rationale)


def prediction_holds(prediction: Prediction, failures: int, n: int) -> bool:
    """The measured failure rate's Wilson 95% interval overlaps the predicted range."""
    low, high = wilson_interval(failures, n)
    return low <= prediction.high and high >= prediction.low


POSITION_READ_SHARE = 0.8  # judgement: the position-read prediction's range allows up to 20% of rows to follow the tokens


def position_read_prediction(design: "Design", evidence: Evidence, rows: Sequence[dict]) -> Prediction:
    """MEASURED prediction for a remapped design, if the operands are read by position: a row fails
    when the problem its positions spell has another answer (`position_read_rows`) and the model
    answers that problem -- as often as in distribution (1 - the lookalike failure rate) -- or when
    the answers agree and the model fails as its lookalikes do. The range is a judgement: from
    POSITION_READ_SHARE of the rows reading by position up to all of them, widened by the
    lookalikes' interval."""
    lookalike = lookalike_prediction(rows, evidence, "lookalikes")
    read = position_read_rows(rows, design.remap(design.tokens(rows)))
    differ = sum(r["answer"] != q["answer"] for r, q in zip(rows, read)) / len(rows)
    point = differ * (1 - lookalike.point) + (1 - differ) * lookalike.point
    low = min(point, POSITION_READ_SHARE * differ * (1 - lookalike.high) + (1 - differ) * lookalike.low)
    high = max(point, min(1.0, differ + lookalike.high))
    return Prediction(MEASURED, point, low, high,
                      f"{design.rationale} The positions spell another answer for {differ:.3f} of the rows; "
                      f"the lookalikes fail {lookalike.point:.4f}.")


# --- the designs ----------------------------------------------------------------------------------------

# Judgements, written before the designs were run (see the git history of this file).
JUDGEMENTS = {
    "swapped_positions": Prediction(
        JUDGEMENT, 0.9, 0.5, 1.0,
        "The account: the layer-0 heads read operands by position (L0H5 a's, L0H0 b's; report 08), so at '=' "
        "they would read b as a and a as b, and a + b = b + a would keep the answer. But report 07 needs the "
        "layer-0 heads and MLPs 0-2 at the prompt positions too, and there the causal mask now shows b's "
        "positions before a's, an order never trained; moving the operands by one position broke 99% of "
        "answers (report 08). Judged: the prompt-position part dominates, most answers break."),
    "realigned_3plus1": Prediction(
        JUDGEMENT, 0.15, 0.0, 0.3,
        "Written after the first measurements (swapped positions kept 97% of answers in the quick run: the "
        "operands are read by position). If 3 + 1 prompts fail because the layer-0 heads read a's digits two "
        "positions right of where the x + 2 and x + 3 layouts put them (report 08), moving a and '+' one "
        "position left, onto the 3 + 2 layout's positions (99.8% right on the test split), should remove most "
        "failures; b's tens position is then empty, a layout never trained, so not all. Judged: failure falls "
        "from the 3 + 1 level to 0.3 or less."),
}


def make_designs() -> dict[str, Design]:
    """The designs, by name (see the module docstring; each `account` says what it tests)."""
    designs = [
        Design("layout_3plus1", ("L0H0", "L0H6", "L0H7"),
               "3-digit a + 1-digit b: left padding moves a's digits two positions right, where the layer-0 "
               "operand heads L0H0/L0H6/L0H7 keep reading (report 08)",
               partial(layout_pairs, 3, 1),
               rationale="The account names this layout as the weak one; the test split's 3+1 prompts of the same "
                         "bucket measure how weak. Predicted: their failure rate. (Report 07 saw 0.317 of the 3+1 "
                         "prompts outside the data splits fail; this prediction does not read that number.)"),
        Design("layout_1plus3", ("L0H5", "L0H6"),
               "1-digit a + 3-digit b: b stays where 3+3 prompts have it and a's digit sits on a's usual units "
               "position, so the position-reading heads read the right digits",
               partial(layout_pairs, 1, 3),
               rationale="The account says the heads read fixed positions and this layout keeps both operands on "
                         "them; predicted: the test split's 1+3 failure rate of the same bucket (near zero)."),
        Design("swapped_positions", ("L0H5", "L0H0"),
               "3+3 prompts with a's and b's digits given each other's positional embeddings (tokens unchanged): "
               "b's digits where a's usually sit",
               partial(layout_pairs, 3, 3), judgement=JUDGEMENTS["swapped_positions"], remap=swapped_operand_index),
        Design("crossed_digits", ("L0H5", "L0H0"),
               "3+3 prompts (b's tens digit not 0) with a's hundreds digit and b's tens digit trading positional "
               "embeddings: read by position the prompt spells another problem",
               crossed_digit_pairs, remap=crossed_digit_index, predictor=position_read_prediction,
               rationale="Written after the first measurements. The account: operands are read by position (the "
                         "swapped-positions design kept 97% of answers in the quick run), so the model should answer "
                         "the problem the positions spell."),
        Design("realigned_3plus1", ("L0H0", "L0H6", "L0H7"),
               "3+1 prompts with a's digits and '+' moved one position left (tokens unchanged), onto the positions "
               "3+2 prompts give them: the repair the layout account implies",
               partial(layout_pairs, 3, 1), judgement=JUDGEMENTS["realigned_3plus1"], remap=realigned_a_index),
        Design("wrap_boundary", ("MLP2", "MLP3"),
               "sums one below, at and one above a multiple of 113 (answers 112, 0, 1): the answer is carried on "
               "the k = 1 circle of (a + b) mod 113 (MLP 2, report 06) and written out by MLP 3",
               wrap_boundary_pairs,
               rationale="On the k = 1 circle 112, 0 and 1 are neighbours like any others; a subtract-the-multiple "
                         "account would fail at the wrap, the circle account does not. Predicted: the lookalike rate."),
        Design("equal_operands", ("L0H5", "L0H0"),
               "a = b: the same digits at a's and b's positions, which would confuse heads that find an operand by "
               "its digits rather than by its position",
               equal_operand_pairs,
               rationale="The account's operand heads read positions, not digit values, so repeated digits change "
                         "nothing; predicted: the lookalike rate."),
        Design("leading_zeros", ("L0H5", "L0H0"),
               "operands below 100 zero-padded to three digits ('007 + 012'), which would put every digit on its "
               "3+3 position",
               short_operand_pairs, rows=zero_padded_rows, judgement=Prediction(
                   REFUSED, float("nan"), float("nan"), float("nan"),
                   "The prompt format has no leading zeros (tokenizer.PROMPT_RE), so the tokenizer should refuse "
                   "these prompts before the model sees them.")),
    ]
    return {d.name: d for d in designs}


# --- measuring ----------------------------------------------------------------------------------------

def predict_designs(designs: Sequence[Design], evidence: Evidence, n: int, seed: int = 0,
                    exclude: set[tuple[int, int]] = frozenset()) -> pd.DataFrame:
    """Each design's prediction for the rows `measure_design` will run (same `n`, `seed`, `exclude`),
    before anything is run: design, targets, account, kind, predicted (low, high), rationale."""
    out = []
    for design in designs:
        try:
            rows = design.build(n, seed, exclude)
        except TokenizerError:
            rows = []
        prediction = design.predict(evidence, rows)
        out.append({"design": design.name, "targets": ", ".join(design.targets), "account": design.account}
                   | _prediction_columns(prediction) | {"rationale": prediction.rationale})
    return pd.DataFrame(out)


def measure_design(model, design: Design, evidence: Evidence, n: int, seed: int = 0,
                   exclude: set[tuple[int, int]] = frozenset()) -> dict:
    """One row of the predicted-vs-measured table: the design's prediction for its rows, the measured
    failure rate on at most `n` seeded rows (`circuit.row_correct`: `task.exact_match` under the
    design's hooks), and whether the prediction holds. A design whose prompts the tokenizer refuses
    is measured as refused (n = 0, the tokenizer's message in `refusal`)."""
    head = {"design": design.name, "targets": ", ".join(design.targets)}
    try:
        rows = design.build(n, seed, exclude)
    except TokenizerError as error:
        prediction = design.predict(evidence, [])
        return head | _prediction_columns(prediction) | {
            "n": 0, "failures": 0, "measured": float("nan"), "measured low": float("nan"), "measured high": float("nan"),
            "holds": prediction.kind == REFUSED, "refusal": str(error)}
    prediction = design.predict(evidence, rows)
    split = ArithmeticSplit.from_rows(rows)
    correct = row_correct(model, split, design.hooks(model, split.tokens[:, :MODEL_INPUT_LEN]))
    failures = int((~correct).sum())
    low, high = wilson_interval(failures, len(rows))
    holds = prediction.kind != REFUSED and prediction_holds(prediction, failures, len(rows))
    return head | _prediction_columns(prediction) | {
        "n": len(rows), "failures": failures, "measured": failures / len(rows), "measured low": low,
        "measured high": high, "holds": holds, "refusal": ""}


def _prediction_columns(prediction: Prediction) -> dict:
    return {"kind": prediction.kind, "predicted": prediction.point, "predicted low": prediction.low,
            "predicted high": prediction.high}


def measure_designs(model, designs: Sequence[Design], evidence: Evidence, n: int, seed: int = 0,
                    exclude: set[tuple[int, int]] = frozenset()) -> pd.DataFrame:
    """`measure_design` for each design: one row per design."""
    return pd.DataFrame([measure_design(model, d, evidence, n, seed, exclude) for d in designs])


def target_components(design: Design) -> list[Component]:
    """The design's targets as ablatable components ("L0H5" -> head (0, 5), "MLP3" -> mlp 3)."""
    out = []
    for name in design.targets:
        if name.startswith("MLP") and name[3:].isdigit():
            out.append(Component("mlp", int(name[3:])))
            continue
        try:
            out.append(Component("head", *head_index(name)))
        except DesignError:
            raise DesignError(f"design {design.name!r}: target {name!r} is not a head (L0H5) or an MLP (MLP3)") from None
    return out


def target_effects(model, design: Design, design_rows: list[dict], reference_rows: list[dict],
                   reference: dict[str, torch.Tensor], method: str = "mean") -> pd.DataFrame:
    """The causal check: exact match with each targeted component ablated alone (`method`, reference
    activations `reference` from `ablation.reference_activations`), on the design's prompts (under its
    hooks) and on in-distribution `reference_rows`. Columns: design, component, set ("design" or
    "in-distribution"), exact (unablated), ablated, drop."""
    components = target_components(design)
    frames = []
    for which, rows in (("design", design_rows), ("in-distribution", reference_rows)):
        split = ArithmeticSplit.from_rows(rows)
        hooks = design.hooks(model, split.tokens[:, :MODEL_INPUT_LEN]) if which == "design" else []
        score = partial(evaluate_split, split=split, prefix="ablated")
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            sweep = ablation_sweep(model, score, components, [method], reference, metric="ablated_exact")
        base = float(sweep.loc[sweep.component == "none", "score"].iloc[0])
        body = sweep[sweep.component != "none"]
        frames.append(pd.DataFrame({"design": design.name, "component": body.component, "set": which,
                                    "exact": base, "ablated": body.score, "drop": body["drop"]}))
    return pd.concat(frames, ignore_index=True)



# Stated before the knock-out ran on the main model (third commit of predictions).
KNOCKOUT_EXPECTATION = {
    "heads": ("L0H0", "L0H6", "L0H7"), "role": "a", "sign": -1,
    "rationale": "The account (README; report 08) says that in 3 + 1 prompts L0H0, L0H6 and L0H7 keep attending to "
                 "positions that now hold a's digits. If that misreading causes the failures, removing these heads' "
                 "attention to a's digits (renormalised onto the rest) lowers the 3 + 1 failure rate by at least "
                 f"CAUSAL_CHANGE ({CAUSAL_CHANGE}); on 3 + 2 prompts, where they read correctly, it should not help.",
}


def head_index(name: str) -> tuple[int, int]:
    """"L0H6" -> (0, 6); a DesignError for anything else."""
    layer, sep, head = name.removeprefix("L").partition("H")
    if not (name.startswith("L") and sep and layer.isdigit() and head.isdigit()):
        raise DesignError(f"{name!r} is not a head name like 'L0H6'")
    return int(layer), int(head)


def knockout_effects(model, rows: Sequence[dict], heads: Sequence[str], role: str = "a") -> pd.DataFrame:
    """Exact-match failure rate of `rows` (all of one token layout) with each head's attention from `=`
    onward to the `role` positions knocked out and renormalised (`circuit.attention_knockout_hooks`),
    then with all of `heads` at once. Columns: knocked out ("none", a head, or "all"), failure,
    change (failure minus the unablated failure)."""
    split = ArithmeticSplit.from_rows(list(rows))
    sources = role_positions(split.tokens[:, :MODEL_INPUT_LEN], role)
    hooks = {name: attention_knockout_hooks(*head_index(name), sources) for name in heads}
    runs = {"none": []} | hooks | {"all": [h for hs in hooks.values() for h in hs]}
    failure = {name: (~row_correct(model, split, run)).float().mean().item() for name, run in runs.items()}
    return pd.DataFrame({"knocked out": list(failure), "failure": list(failure.values()),
                         "change": [f - failure["none"] for f in failure.values()]})


def knockout_holds(change: float, sign: int = KNOCKOUT_EXPECTATION["sign"]) -> bool:
    """The failure rate moved by at least CAUSAL_CHANGE in the expected direction (`sign`: -1 = down)."""
    return change * sign >= CAUSAL_CHANGE


def a_hundreds(row: dict) -> str:
    """a's hundreds digit as text ("0" for a below 100): a key for `task.accuracy_by`."""
    return str(row["a"] // 100 % 10)
