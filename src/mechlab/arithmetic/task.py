"""The main study's task as the training loop sees it: tokenized splits, the answer-token
loss, and greedy exact-match evaluation (the one evaluation path for every split and OOD set).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mechlab.arithmetic.data import read_jsonl, verify_file
from mechlab.arithmetic.tokenizer import (
    ANSWER_START,
    EQUALS_POS,
    MODEL_INPUT_LEN,
    N_ANSWER_TOKENS,
    VOCAB,
    ArithmeticTokenizer,
)

TOKENIZER = ArithmeticTokenizer()
# Rows per forward pass when evaluating. Smaller batches are faster on a CPU here (the activations
# stay in cache): the 10,000-row test split took 8.0 s at 2,048 rows a pass, 5.0 s at 512 and
# 4.5 s at 256 (2 cores, main model), with identical metrics (measured 2026-11-30).
EVAL_BATCH = 512


def load_rows(data_dir: Path, name: str) -> list[dict]:
    """The rows of `data_dir/<name>.jsonl`, checked against data_dir/manifest.json (edited data is refused, not used)."""
    path = Path(data_dir) / f"{name}.jsonl"
    verify_file(path)
    return read_jsonl(path)


@dataclass
class ArithmeticSplit:
    """A tokenized data set. tokens: [n, SEQ_LEN]; rows: the JSON rows it came from."""

    rows: list[dict]
    tokens: torch.Tensor

    @classmethod
    def from_rows(cls, rows: list[dict], tokenizer: ArithmeticTokenizer = TOKENIZER) -> "ArithmeticSplit":
        """Rows tokenized by `tokenizer` (default the main one; the multi-task one for `-` and `*`)."""
        return cls(rows, tokenizer.encode_batch([r["prompt"] for r in rows], [r["answer"] for r in rows]))

    @classmethod
    def load(cls, data_dir: Path, name: str, limit: int | None = None,
             tokenizer: ArithmeticTokenizer = TOKENIZER) -> "ArithmeticSplit":
        rows = load_rows(data_dir, name)
        return cls.from_rows(rows[:limit] if limit else rows, tokenizer)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def prompts(self) -> torch.Tensor:
        """[n, 1 + PROMPT_WIDTH]: <bos> and the left-padded prompt, ending at "="."""
        return self.tokens[:, :ANSWER_START]

    @property
    def answers(self) -> torch.Tensor:
        """[n, N_ANSWER_TOKENS]: answer digits, <eos>, then <pad>."""
        return self.tokens[:, ANSWER_START:]


def answer_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, N_ANSWER_TOKENS, d_vocab]: the logits that predict each answer token."""
    return model(tokens[:, :MODEL_INPUT_LEN])[:, EQUALS_POS:]


def answer_loss(model: torch.nn.Module, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on the answer digits and <eos> only (prompt tokens are not trained on:
    the operands are random, so predicting them only adds noise to the gradient). Vmappable (no
    boolean-mask indexing), so `core.ensemble` trains several models on it at once."""
    logits = answer_logits(model, tokens)
    targets = tokens[:, ANSWER_START:]
    targets = targets.masked_fill(targets == TOKENIZER.pad_id, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction=reduction)


@torch.no_grad()
def greedy_answers(model: torch.nn.Module, prompts: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """[n, N_ANSWER_TOKENS] ids generated greedily one token at a time after each prompt."""
    device = next(model.parameters()).device
    outputs = []
    for chunk in prompts.split(batch_size):
        seq = chunk.to(device)
        for _ in range(N_ANSWER_TOKENS):
            next_token = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, next_token], dim=1)
        outputs.append(seq[:, ANSWER_START:].cpu())
    return torch.cat(outputs)


def predicted_answers(model: torch.nn.Module, split: ArithmeticSplit) -> list[str]:
    """The greedily generated answer of each row as text (the tokens up to <eos>, e.g. "14").

    Rows that one teacher-forced pass gets exactly right keep their true answer -- greedy decoding
    writes exactly that (`teacher_forced_exact`) -- and only the others are decoded token by token,
    which makes a mostly-right set about four times cheaper. tests/arithmetic/test_task.py checks
    the result against decoding every row."""
    answers = [r["answer"] for r in split.rows]
    wrong = (~exact_match(model, split)).nonzero().flatten().tolist()
    if wrong:
        for i, ids in zip(wrong, greedy_answers(model, split.prompts[wrong])):
            answers[i] = TOKENIZER.decode_answer(ids)
    return answers


@torch.no_grad()
def exact_match(model: torch.nn.Module, split: ArithmeticSplit, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """[n] bool: the greedily generated answer (digits up to <eos>) equals the true answer, from one
    teacher-forced pass (`teacher_forced_exact`: the two are equal)."""
    device = next(model.parameters()).device
    return torch.cat([teacher_forced_exact(answer_logits(model, t.to(device)), t[:, ANSWER_START:].to(device)).cpu()
                      for t in split.tokens.split(batch_size)])


def digit_lengths(row: dict) -> str:
    """Operand digit lengths, e.g. "3+2" for 234 + 56."""
    return f"{len(str(row['a']))}+{len(str(row['b']))}"


def operator_of(row: dict) -> str:
    """The row's operator: its "op", or "+" (the main study's rows have no "op")."""
    return row.get("op", "+")


def modulus_of(row: dict) -> int:
    return row["m"]


# The breakdowns `evaluate_split` can report: name -> (key prefix after "<prefix>_exact/", grouping key).
BREAKDOWNS = {"bucket": ("", "bucket"), "digits": ("digits_", digit_lengths), "op": ("op_", operator_of),
              "modulus": ("mod_", modulus_of)}
MAIN_BREAKDOWNS = ("bucket", "digits")


def accuracy_by(rows: list[dict], correct: torch.Tensor, key) -> dict[str, float]:
    """Mean of `correct` grouped by `key(row)` (a function) or `row[key]` (a field name)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for row, ok in zip(rows, correct.tolist()):
        groups[key(row) if callable(key) else row[key]].append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def teacher_forced_exact(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """[n] bool: argmax is right at every answer position (digits and <eos>) given the true prefix.

    This equals greedy decoding's exact match (greedy stays on the true prefix exactly as long as
    every argmax is right), at the cost of one forward pass instead of one per answer token;
    `tests/arithmetic/test_task.py` checks the equality on a model that is partly right. logits: [n, N_ANSWER_TOKENS, d_vocab].
    """
    scored = answers != TOKENIZER.pad_id
    return ((logits.argmax(-1) == answers) | ~scored).all(-1)


def evaluate_split(model: torch.nn.Module, split: ArithmeticSplit, prefix: str, batch_size: int = EVAL_BATCH,
                   by: tuple[str, ...] = MAIN_BREAKDOWNS) -> dict[str, float]:
    """Loss, exact match of the greedy answer, and exact match per group of each breakdown in `by`
    (`BREAKDOWNS`; default per bucket and per operand digit length, the extensions add per operator
    and per modulus): keys "<prefix>_exact/<tag><group>", e.g. "val_exact/op_-", "test_exact/mod_97".

    Exact match comes from one teacher-forced pass, equal to greedy decoding's (`teacher_forced_exact`;
    tests/arithmetic/test_task.py compares the two on a model that is partly right).
    """
    model_was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses, corrects = [], []
    with torch.no_grad():
        for tokens in split.tokens.split(batch_size):
            tokens = tokens.to(device)
            logits = answer_logits(model, tokens)
            targets = tokens[:, ANSWER_START:]
            losses.append(F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=TOKENIZER.pad_id,
                                          reduction="sum").cpu())
            corrects.append(teacher_forced_exact(logits, targets).cpu())
    correct = torch.cat(corrects)
    model.train(model_was_training)
    n_answer = (split.answers != TOKENIZER.pad_id).sum()
    metrics = {f"{prefix}_loss": torch.stack(losses).sum().item() / n_answer.item(),
               f"{prefix}_exact": correct.float().mean().item()}
    for name in by:
        tag, key = BREAKDOWNS[name]
        metrics |= {f"{prefix}_exact/{tag}{k}": v for k, v in accuracy_by(split.rows, correct, key).items()}
    return metrics


class ArithmeticTask:
    """Training task for the training loop: random batches from `train`, evaluation on `val`
    (and on a fixed slice of `train`, to show the train/validation gap).

    bucket_weights: relative sampling weight per bucket at training time (default: uniform
    over examples). From step `rebalance_from` on, each example's weight is also multiplied by
    count(its operand digit lengths) ** -length_balance, which draws rare layouts such as 3+1
    digits more often (0 = no change, 1 = every digit-length class equally often). Batches are
    drawn with replacement from a generator seeded by (seed, step), so batch(step) is
    reproducible and a resumed run sees the same data. `breakdowns` are the validation breakdowns
    (`evaluate_split`'s `by`).
    """

    def __init__(self, train: ArithmeticSplit, val: ArithmeticSplit, batch_size: int, seed: int = 0,
                 bucket_weights: dict[str, float] | None = None, train_eval_size: int = 2000,
                 length_balance: float = 0.0, rebalance_from: int = 0, breakdowns: tuple[str, ...] = MAIN_BREAKDOWNS):
        self.train, self.val, self.batch_size, self.seed = train, val, batch_size, seed
        self.breakdowns = breakdowns
        weights = [1.0 if bucket_weights is None else bucket_weights[r["bucket"]] for r in train.rows]
        self.weights = torch.tensor(weights, dtype=torch.float)
        self.rebalanced_weights = self.weights * length_balance_factors(train.rows, length_balance)
        self.rebalance_from = rebalance_from
        self.train_eval = ArithmeticSplit(train.rows[:train_eval_size], train.tokens[:train_eval_size])

    def sampling_weights(self, step: int) -> torch.Tensor:
        """[n_train] relative probability of drawing each training example at `step`."""
        return self.rebalanced_weights if step >= self.rebalance_from else self.weights

    def batch(self, step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.multinomial(self.sampling_weights(step), self.batch_size, replacement=True, generator=gen)
        return self.train.tokens[idx]

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return answer_loss(model, batch)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return evaluate_split(model, self.val, "val", by=self.breakdowns) | {
            k: v for k, v in evaluate_split(model, self.train_eval, "train").items() if "/" not in k}


def length_balance_factors(rows: list[dict], power: float) -> torch.Tensor:
    """[n] count(row's operand digit lengths) ** -power: 1 everywhere for power 0."""
    counts = Counter(digit_lengths(r) for r in rows)
    return torch.tensor([counts[digit_lengths(r)] ** -power for r in rows], dtype=torch.float)


def main_model_config(seed: int = 0):
    """The main study's architecture (4 layers, 8 heads, d_model 128) with this task's vocabulary."""
    from mechlab.core.model import ModelConfig

    return ModelConfig(d_vocab=len(VOCAB), vocab=tuple(VOCAB), seed=seed)


def breakdown(metrics: dict[str, float], prefix: str, by: str = "bucket") -> dict[str, float]:
    """One data set's exact match per bucket (`by="bucket"`), per operand digit layout (`by="digits"`,
    keys like "2+3"), per operator (`"op"`) or per modulus (`"modulus"`, keys like "97") from
    `evaluate_split`'s metrics ("<prefix>_exact/<bucket>", "<prefix>_exact/digits_<a>+<b>", ...)."""
    if by not in BREAKDOWNS:
        raise ValueError(f"breakdown by {' or '.join(repr(name) for name in BREAKDOWNS)}, not {by!r}")
    rows = {k.removeprefix(f"{prefix}_exact/"): v for k, v in metrics.items() if k.startswith(f"{prefix}_exact/")}
    tag = BREAKDOWNS[by][0]
    if tag:
        return {k.removeprefix(tag): v for k, v in rows.items() if k.startswith(tag)}
    tags = tuple(t for t, _ in BREAKDOWNS.values() if t)
    return {k: v for k, v in rows.items() if not k.startswith(tags)}
