"""Character tokenizer for the arithmetic task family: `"234 + 567 mod 113 ="` -> token ids.

Sequence layout used everywhere (training, evaluation, analysis):

    <bos> <pad>*k  2 3 4 ␣ + ␣ 5 6 7 ␣ m o d ␣ 1 1 3 ␣ =  1 0 <eos> <pad>*j
    |---- prompt, left-padded to PROMPT_WIDTH chars ----|  |- answer -|

Left-padding every prompt to the same width puts `=` at the same position
(`EQUALS_POS`) in every example and the answer digits right after it, so
batches line up by position for greedy decoding and for activation patching.

A tokenizer is parameterised by its operator set. The main study's is `+` only (`VOCAB`, whose ids
the committed main model depends on). The multi-task tokenizer, `ArithmeticTokenizer("+-*")`, writes
subtraction and multiplication as the single characters `-` and `*` in the same layout
(`"234 - 567 mod 113 ="`): each operator is one token, as a `[SUB]`-style token would be, but the
prompt stays characters, the operator stays between its operands and every prompt keeps its width.
Extra operators get the ids after the special tokens, so every id of the main vocabulary (digits,
`+`, `<pad>`, `<bos>`, `<eos>`) is the same in both, and a `+` prompt encodes to the same ids.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from functools import cache

import torch

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
CHARS = list("0123456789") + [" ", "+", "m", "o", "d", "="]
VOCAB: list[str] = CHARS + [PAD, BOS, EOS]

PROMPT_WIDTH = 21  # fits "1999 + 1999 mod 113 =", the longest prompt of any data set
MAX_ANSWER_DIGITS = 3
EQUALS_POS = PROMPT_WIDTH  # position of "=" (position 0 holds <bos>)
ANSWER_START = EQUALS_POS + 1
SEQ_LEN = 1 + PROMPT_WIDTH + MAX_ANSWER_DIGITS + 1  # <bos> + prompt + answer + <eos>
N_ANSWER_TOKENS = MAX_ANSWER_DIGITS + 1  # answer digits + <eos>
MODEL_INPUT_LEN = SEQ_LEN - 1  # what the model reads: every token but the last (which it only predicts)
DIGIT_IDS = torch.tensor([VOCAB.index(str(d)) for d in range(10)])  # token ids of '0'..'9'

OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}  # every operator a tokenizer can have
OPERATORS = "+"  # the main study's operator set
MAX_MODULUS = 10 ** MAX_ANSWER_DIGITS  # answers 0..m-1 of a larger modulus could need more digits than the layout holds
NUMBER = "(0|[1-9][0-9]*)"
MAX_NUMBER_DIGITS = 100  # longer numbers are refused before int() (which stops at 4,300 digits)
QUOTE_CHARS = 40  # error messages quote at most this much of the input


class TokenizerError(ValueError):
    """Raised for input the tokenizer cannot represent; the message names the problem."""


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """`repr(text)`, cut to its first `limit` characters (with the full length) when longer."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TokenizerError(f"{what} must be a str, got {type(value).__name__}")
    return value


def check_operands(a: object, b: object, m: object) -> None:
    """Raise TokenizerError unless a, b are integers >= 0 and m an integer >= 1 (bools refused)."""
    for name, value in (("a", a), ("b", b), ("m", m)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TokenizerError(f"operand {name} must be an integer, got {value!r} ({type(value).__name__})")
    if a < 0 or b < 0 or m < 1:
        raise TokenizerError(f"operands must be >= 0 and modulus >= 1, got a={a}, b={b}, m={m}")


def check_operator(op: object) -> None:
    """Raise TokenizerError unless `op` is one of OPERATIONS' operators."""
    if not isinstance(op, str) or op not in OPERATIONS:
        raise TokenizerError(f"unknown operator {op!r}; the operators are {' '.join(OPERATIONS)}")


@dataclass(frozen=True)
class Problem:
    """`a op b mod m`; `op` (keyword only) is "+" unless given."""

    a: int
    b: int
    m: int
    op: str = field(default="+", kw_only=True)

    def __post_init__(self) -> None:
        check_operands(self.a, self.b, self.m)
        check_operator(self.op)

    @property
    def prompt(self) -> str:
        return format_prompt(self.a, self.b, self.m, self.op)

    @property
    def answer(self) -> str:
        return str(OPERATIONS[self.op](self.a, self.b) % self.m)


def format_prompt(a: int, b: int, m: int, op: str = "+") -> str:
    """`format_prompt(234, 567, 113) == "234 + 567 mod 113 ="` (no leading zeros, single spaces);
    `format_prompt(234, 567, 113, "-") == "234 - 567 mod 113 ="`."""
    check_operands(a, b, m)
    check_operator(op)
    return f"{a} {op} {b} mod {m} ="


def prompt_chars(operators: str) -> list[str]:
    """The characters a prompt of a tokenizer with these operators may hold."""
    return CHARS + [op for op in operators if op not in CHARS]


@cache
def prompt_regex(operators: str) -> re.Pattern:
    """`A op B mod M =` with op one of `operators`; groups a, op, b, m."""
    return re.compile(rf"^{NUMBER} ([{re.escape(operators)}]) {NUMBER} mod {NUMBER} =$")


def parse_prompt(prompt: str, operators: str = OPERATORS) -> Problem:
    """Inverse of `format_prompt` for prompts whose operator is one of `operators` (default: the main
    study's "+"); raises TokenizerError naming what is malformed."""
    _require_str(prompt, "a prompt")
    allowed = prompt_chars(operators)
    for i, ch in enumerate(prompt):
        if ch not in allowed:
            note = f" (unknown operator: this tokenizer's operators are {' '.join(operators)})" if ch in OPERATIONS else ""
            raise TokenizerError(f"unknown character {ch!r} at position {i} in {quote(prompt)}{note}")
    match = prompt_regex(operators).match(prompt)
    if match is None:
        shape = "'A + B mod M ='" if operators == "+" else f"'A OP B mod M =' (OP one of {' '.join(operators)})"
        raise TokenizerError(f"malformed prompt {quote(prompt)}: expected {shape} with single spaces and no leading zeros")
    a_digits, op, b_digits, m_digits = match.groups()
    for name, digits in zip("abm", (a_digits, b_digits, m_digits)):
        if len(digits) > MAX_NUMBER_DIGITS:
            raise TokenizerError(f"{name} in prompt {quote(prompt)} has {len(digits):,} digits; "
                                 f"at most {MAX_NUMBER_DIGITS} are accepted")
    a, b, m = int(a_digits), int(b_digits), int(m_digits)
    if m < 1:
        raise TokenizerError(f"the modulus must be >= 1, got {m} in {quote(prompt)}")
    return Problem(a, b, m, op=op)


def vocab_for(operators: str) -> list[str]:
    """The vocabulary of a tokenizer with these operators: `VOCAB`, then each operator it lacks."""
    if not operators or len(set(operators)) != len(operators):
        raise TokenizerError(f"operators must be distinct and at least one, got {operators!r}")
    for op in operators:
        check_operator(op)
    return VOCAB + [op for op in operators if op not in VOCAB]


class ArithmeticTokenizer:
    """Maps characters and the three special tokens to ids 0..vocab_size-1. `operators` (default
    the main study's "+") are the operators its prompts may hold; see the module docstring."""

    # The main tokenizer's vocabulary, also as class attributes (`ArithmeticTokenizer.stoi`).
    operators: str = OPERATORS
    vocab: list[str] = VOCAB
    stoi: dict[str, int] = {s: i for i, s in enumerate(VOCAB)}
    pad_id, bos_id, eos_id = stoi[PAD], stoi[BOS], stoi[EOS]

    def __init__(self, operators: str = OPERATORS):
        if operators != OPERATORS:
            self.operators = operators
            self.vocab = vocab_for(operators)
            self.stoi = {s: i for i, s in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode_chars(self, text: str) -> list[int]:
        """Ids of each character of `text`; raises TokenizerError on an unknown character."""
        _require_str(text, "text")
        ids = []
        for i, ch in enumerate(text):
            if ch not in self.stoi or ch in (PAD, BOS, EOS):
                raise TokenizerError(f"unknown character {ch!r} at position {i} in {quote(text)}")
            ids.append(self.stoi[ch])
        return ids

    def encode_prompt(self, prompt: str) -> list[int]:
        """`<bos>` + left-padded prompt: a list of 1 + PROMPT_WIDTH ids ending at "="."""
        if len(_require_str(prompt, "a prompt")) > PROMPT_WIDTH:
            raise TokenizerError(f"prompt {quote(prompt)} has {len(prompt):,} characters; at most {PROMPT_WIDTH} fit "
                                 "(an operand or the modulus is too long)")
        problem = parse_prompt(prompt, self.operators)
        if problem.m > MAX_MODULUS:
            raise TokenizerError(f"the modulus {problem.m} in {quote(prompt)} is outside the allowed 1..{MAX_MODULUS}: "
                                 f"its answers could need more than the {MAX_ANSWER_DIGITS} answer digits")
        return [self.bos_id] + [self.pad_id] * (PROMPT_WIDTH - len(prompt)) + self.encode_chars(prompt)

    def encode_answer(self, answer: str) -> list[int]:
        """Answer digits + `<eos>`, right-padded to MAX_ANSWER_DIGITS + 1 ids."""
        if len(_require_str(answer, "an answer")) > MAX_ANSWER_DIGITS:
            raise TokenizerError(f"answer {quote(answer)} is longer than {MAX_ANSWER_DIGITS} digits")
        if not answer.isdigit() or (len(answer) > 1 and answer[0] == "0"):
            raise TokenizerError(f"answer {quote(answer)} must be digits without leading zeros")
        ids = self.encode_chars(answer) + [self.eos_id]
        return ids + [self.pad_id] * (MAX_ANSWER_DIGITS + 1 - len(ids))

    def encode_example(self, prompt: str, answer: str) -> list[int]:
        """The full training sequence: SEQ_LEN ids."""
        return self.encode_prompt(prompt) + self.encode_answer(answer)

    def decode(self, ids: list[int] | torch.Tensor, keep_special: bool = False) -> str:
        """Ids back to text; special tokens are dropped unless `keep_special`."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if not isinstance(i, int) or isinstance(i, bool):
                raise TokenizerError(f"token ids must be integers, got {i!r} ({type(i).__name__})")
            if not 0 <= i < len(self.vocab):
                raise TokenizerError(f"token id {i} is outside the vocabulary (size {len(self.vocab)})")
            tok = self.vocab[i]
            if keep_special or tok not in (PAD, BOS, EOS):
                out.append(tok)
        return "".join(out)

    def decode_answer(self, ids: list[int] | torch.Tensor) -> str:
        """Generated answer ids up to the first `<eos>` (or the end) as a string."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.decode(ids, keep_special=True)

    def encode_batch(self, prompts: list[str], answers: list[str]) -> torch.Tensor:
        """[batch, SEQ_LEN] int64 tensor of full sequences; one answer per prompt."""
        if len(prompts) != len(answers):
            raise TokenizerError(f"encode_batch got {len(prompts)} prompts but {len(answers)} answers")
        rows = [self.encode_example(p, a) for p, a in zip(prompts, answers)]
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), SEQ_LEN)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """[batch, 1 + PROMPT_WIDTH] int64 tensor of prompts, "=" last."""
        rows = [self.encode_prompt(p) for p in prompts]
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), 1 + PROMPT_WIDTH)
