"""Token roles per position, role-aligned attention averages, and the measured head-role table.

Every prompt has the layout of `tokenizer.py` (`<bos>`, left padding, `A + B mod M =`, answer
digits, `<eos>`), but operand lengths vary, so position 7 is a digit of `a` in one prompt and the
`+` in another. The functions here read the role of every position *from the tokens* (never from
the data rows), so attention can be averaged over many prompts by role instead of by position.

Two granularities:

* **role** (`ROLES`): bos, pad, a, space, +, b, mod, m, =, answer, eos. "a"/"b" are the operand
  digits, "mod" the three letters, "m" the modulus digits, "answer" the answer digits.
* **slot** (`SLOTS`): a role refined by place value or order, e.g. `a:10` (tens digit of a),
  `ans:1` (first answer digit), `sp:b` (the space after b). Slots line up across prompts of
  different operand lengths: the units digit of a is `a:1` whether a has one digit or three.

Head-role table (`head_role_table`), per head:

* `mass:<role>`: attention mass from the *answer-predicting positions* to each role. The
  answer-predicting positions of a prompt are `=` and every answer digit except the last: the
  positions whose next token is an answer digit. Mass is summed over the source positions of a
  role, averaged over destination positions and prompts.
* `prev_token`: mean attention from position i to i - 1, over positions i where neither i nor
  i - 1 is `<bos>` or padding.
* `self`: mean attention from position i to itself, over the same positions.

`label_head` turns those numbers into a label by the rule in `LABEL_RULE` (first match wins);
the thresholds are in `LABEL_THRESHOLDS`.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from mechlab.analysis.compare import mass_by_group
from mechlab.arithmetic.tokenizer import DIGIT_IDS, VOCAB, ArithmeticTokenizer

ROLES: tuple[str, ...] = ("bos", "pad", "a", "space", "+", "b", "mod", "m", "=", "answer", "eos")
ROLE_INDEX = {r: i for i, r in enumerate(ROLES)}

# Slots in reading order. 4-digit operand slots exist for the OOD sets (1000..1999).
SLOTS: tuple[str, ...] = (
    "bos", "pad",
    "a:1000", "a:100", "a:10", "a:1", "sp:a", "+", "sp:+",
    "b:1000", "b:100", "b:10", "b:1", "sp:b",
    "mod:m", "mod:o", "mod:d", "sp:mod",
    "m:100", "m:10", "m:1", "sp:m", "=",
    "ans:1", "ans:2", "ans:3", "eos",
)
SLOT_INDEX = {s: i for i, s in enumerate(SLOTS)}

_ID = ArithmeticTokenizer.stoi
_DIGITS = frozenset(DIGIT_IDS.tolist())  # a set: `in` is tested once per token


class RoleError(ValueError):
    """The tokens do not follow the `<bos> pad* A + B mod M = answer <eos>` layout."""


def _row_slots(ids: Sequence[int]) -> list[str]:
    """Slot name of every position of one token sequence (see the module docstring)."""
    slots: list[str] = []
    n = len(ids)
    i = 0

    def expect(tok: str, slot: str) -> None:
        nonlocal i
        if i >= n or ids[i] != _ID[tok]:
            got = VOCAB[ids[i]] if i < n else "end of sequence"
            raise RoleError(f"expected {tok!r} at position {i}, got {got!r} in {[VOCAB[t] for t in ids]}")
        slots.append(slot)
        i += 1

    def number(prefix: str, places: bool = True) -> None:
        nonlocal i
        start = i
        while i < n and ids[i] in _DIGITS:
            i += 1
        length = i - start
        if length == 0:
            raise RoleError(f"expected digits for {prefix!r} at position {start}")
        if places:
            slots.extend(f"{prefix}:{10 ** (length - 1 - k)}" for k in range(length))
        else:
            slots.extend(f"{prefix}:{k + 1}" for k in range(length))

    expect("<bos>", "bos")
    while i < n and ids[i] == _ID["<pad>"]:
        slots.append("pad")
        i += 1
    number("a")
    expect(" ", "sp:a")
    expect("+", "+")
    expect(" ", "sp:+")
    number("b")
    expect(" ", "sp:b")
    expect("m", "mod:m")
    expect("o", "mod:o")
    expect("d", "mod:d")
    expect(" ", "sp:mod")
    number("m")
    expect(" ", "sp:m")
    expect("=", "=")
    if i < n and ids[i] in _DIGITS:
        number("ans", places=False)
    if i < n and ids[i] == _ID["<eos>"]:
        expect("<eos>", "eos")
    while i < n:
        if ids[i] != _ID["<pad>"]:
            raise RoleError(f"unexpected {VOCAB[ids[i]]!r} at position {i} after the answer")
        slots.append("pad")
        i += 1
    return slots


def slot_role(slot: str) -> str:
    """`a:10` -> `a`, `sp:b` -> `space`, `mod:o` -> `mod`, `ans:2` -> `answer`."""
    head = slot.split(":")[0]
    return {"sp": "space", "ans": "answer"}.get(head, head)


def position_slots(tokens: torch.Tensor) -> list[list[str]]:
    """Slot names per position for a [batch, pos] token tensor (or one [pos] row)."""
    tokens = tokens if tokens.ndim == 2 else tokens[None]
    return [_row_slots(row) for row in tokens.tolist()]


def position_roles(tokens: torch.Tensor) -> list[list[str]]:
    """Role names per position for a [batch, pos] token tensor."""
    return [[slot_role(s) for s in row] for row in position_slots(tokens)]


def slot_ids(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos] int64 index into SLOTS."""
    return torch.tensor([[SLOT_INDEX[s] for s in row] for row in position_slots(tokens)], dtype=torch.long)


def role_ids(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos] int64 index into ROLES."""
    return torch.tensor([[ROLE_INDEX[slot_role(s)] for s in row] for row in position_slots(tokens)], dtype=torch.long)


def slot_positions(tokens: torch.Tensor, slots: Sequence[str]) -> torch.Tensor:
    """[batch, len(slots)] int64: the position of each slot in each prompt, -1 where the prompt
    has no such slot (e.g. "a:100" when a < 100)."""
    ids = slot_ids(tokens)  # [batch, pos]
    out = torch.full((len(ids), len(slots)), -1, dtype=torch.long)
    for j, slot in enumerate(slots):
        rows, pos = (ids == SLOT_INDEX[slot]).nonzero(as_tuple=True)
        out[rows, j] = pos
    return out

def answer_predicting_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos] bool: positions whose next token is an answer digit (`=` and all answer
    digits but the last)."""
    roles = role_ids(tokens)
    nxt = torch.full_like(roles, -1)
    nxt[:, :-1] = roles[:, 1:]
    return nxt == ROLE_INDEX["answer"]


def aligned_attention(patterns: torch.Tensor, ids: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Average attention patterns over prompts, aligned by slot (or role).

    patterns: [batch, *heads, dest, src] (e.g. [batch, layer, head, pos, pos]);
    ids: [batch, pos] group index of each position (`slot_ids` or `role_ids`).
    Returns [*heads, n_groups (dest), n_groups (src)]: for each destination group, the mean over
    prompts and destination positions in that group of the attention mass summed over the source
    positions in each source group. Rows of groups that never occur are NaN.
    """
    onehot = torch.nn.functional.one_hot(ids, n_groups).to(patterns.dtype)  # [b, pos, g]
    mass = torch.einsum("b...ij,bjs->b...is", patterns, onehot)  # summed over src within group
    total = torch.einsum("b...is,bid->...ds", mass, onehot)
    counts = onehot.sum((0, 1))  # [g]
    return total / counts[:, None]


def slot_aligned_attention(patterns: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """`aligned_attention` over SLOTS, dropping slots that occur in none of the prompts.
    Returns (averaged [*heads, k, k], the k slot names)."""
    ids = slot_ids(tokens)
    avg = aligned_attention(patterns, ids, len(SLOTS))
    present = torch.bincount(ids.flatten(), minlength=len(SLOTS)) > 0
    keep = present.nonzero().flatten()
    avg = avg.index_select(-2, keep).index_select(-1, keep)
    return avg, [SLOTS[i] for i in keep.tolist()]


# --- the head-role table ---------------------------------------------------------------------

LABEL_THRESHOLDS = {"strong": 0.6, "single": 0.5, "both": 0.25, "rest": 0.5}
LABEL_RULE = """\
First match wins (m:X = attention mass from the answer-predicting positions to role X):
 1. previous-token   prev_token >= strong (0.6)
 2. self             self >= strong (0.6)
 3. a+b reader       m:a >= both (0.25) and m:b >= both (0.25)
 4. a reader         m:a >= single (0.5)
 5. b reader         m:b >= single (0.5)
 6. operand reader   m:a + m:b >= single (0.5)
 7. modulus reader   m:mod + m:m >= single (0.5)
 8. answer reader    m:= + m:answer >= single (0.5)
 9. resting          m:bos + m:pad + m:space >= rest (0.5)
10. mixed            otherwise"""


def label_head(row: dict, t: dict = LABEL_THRESHOLDS) -> str:
    """The documented rule `LABEL_RULE` applied to one row of `head_role_table`."""
    m = lambda r: row[f"mass:{r}"]  # noqa: E731
    if row["prev_token"] >= t["strong"]:
        return "previous-token"
    if row["self"] >= t["strong"]:
        return "self"
    if m("a") >= t["both"] and m("b") >= t["both"]:
        return "a+b reader"
    if m("a") >= t["single"]:
        return "a reader"
    if m("b") >= t["single"]:
        return "b reader"
    if m("a") + m("b") >= t["single"]:
        return "operand reader"
    if m("mod") + m("m") >= t["single"]:
        return "modulus reader"
    if m("=") + m("answer") >= t["single"]:
        return "answer reader"
    if m("bos") + m("pad") + m("space") >= t["rest"]:
        return "resting"
    return "mixed"


def head_role_table(patterns: torch.Tensor, tokens: torch.Tensor) -> pd.DataFrame:
    """One row per head: attention mass from answer-predicting positions to each role,
    previous-token score, self score, and the label from `label_head`.

    patterns: [batch, n_layers, n_heads, pos, pos]; tokens: [batch, pos] (with answers, so that
    there are answer-predicting positions beyond `=`).
    """
    roles = role_ids(tokens)
    batch, n_layers, n_heads, n_pos, _ = patterns.shape
    dest = answer_predicting_mask(tokens)  # [b, pos]
    if not dest.any():
        raise ValueError("no answer-predicting positions: pass tokens that include the answers")
    answer_mass = mass_by_group(patterns, roles, dest, len(ROLES))  # [l, h, role]

    special = (roles == ROLE_INDEX["pad"]) | (roles == ROLE_INDEX["bos"])
    real = ~special
    valid = torch.zeros_like(real)
    valid[:, 1:] = real[:, 1:] & real[:, :-1]
    valid_f = valid.to(patterns.dtype)
    diag = patterns.diagonal(dim1=-2, dim2=-1)  # [b, l, h, pos]
    prev = torch.zeros_like(diag)
    prev[..., 1:] = patterns.diagonal(offset=-1, dim1=-2, dim2=-1)
    self_score = torch.einsum("blhi,bi->lh", diag, valid_f) / valid_f.sum()
    prev_score = torch.einsum("blhi,bi->lh", prev, valid_f) / valid_f.sum()

    rows = []
    for l in range(n_layers):
        for h in range(n_heads):
            row = {"head": f"L{l}H{h}", "layer": l, "index": h}
            row |= {f"mass:{r}": answer_mass[l, h, i].item() for i, r in enumerate(ROLES)}
            row |= {"prev_token": prev_score[l, h].item(), "self": self_score[l, h].item()}
            row["label"] = label_head(row)
            rows.append(row)
    return pd.DataFrame(rows)


def layer_specialization(table: pd.DataFrame, n_layers: int) -> tuple[pd.DataFrame, bool]:
    """The most common label per layer of `head_role_table` (columns label, heads: how many heads
    of the layer have it; ties go to the label first in alphabetical order), and whether the
    layers specialize: the label most layers of the early half (layers < n_layers // 2) share
    differs from the late half's."""
    counts = pd.crosstab(table["layer"], table["label"])  # [layer, label]
    dominant = counts.idxmax(axis=1)
    per_layer = pd.DataFrame({"label": dominant, "heads": [counts.loc[l, dominant[l]] for l in counts.index]})
    half = n_layers // 2
    specialized = dominant.iloc[:half].mode().iloc[0] != dominant.iloc[half:].mode().iloc[0]
    return per_layer, bool(specialized)
