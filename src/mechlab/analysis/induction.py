"""Induction heads and their relatives, for any `HookedTransformer`: repeated random tokens, ARENA's
induction score, TransformerLens' head-detector scores computed on attention patterns, a head
taxonomy from those scores, the loss on the first and the repeated half of a sequence, the loss by
context position and Olsson et al.'s in-context-learning score (loss late in the context minus early).

ARENA's induction score of a head: on tokens that are a random sequence of `seq_len` tokens followed
by the same sequence, the mean attention on the `-seq_len + 1` diagonal (query i attends to key
i - seq_len + 1: the token after the earlier copy of the current token), averaged over the batch.
Heads above INDUCTION_THRESHOLD (0.4) count as induction heads.

TransformerLens' `head_detector.detect_head` scores a head by the share of its attention that falls on
a detection pattern (previous token, duplicate token, induction). It tokenizes strings with the model's
tokenizer, which a character model built by `mechlab.core.model` does not have, so `detector_scores`
applies TransformerLens' own detection patterns and similarity score (error measure "mul") to
attention patterns computed here, one sequence at a time, and averages over the batch.
"""
from __future__ import annotations

import torch
from transformer_lens.head_detector import (
    compute_head_attention_similarity_score,
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
)

INDUCTION_THRESHOLD = 0.4  # ARENA: heads scoring above this on repeated random tokens are induction heads
DETECTION_PATTERNS = {
    "previous_token": get_previous_token_head_detection_pattern,
    "duplicate_token": get_duplicate_token_head_detection_pattern,
    "induction": get_induction_head_detection_pattern,
}
HEAD_KIND_THRESHOLD = 0.4  # a head is named for the detector pattern it scores highest on, if above this


def repeated_random_tokens(d_vocab: int, seq_len: int, batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, 2 * seq_len) tokens: a uniformly random sequence of seq_len tokens, then the same again."""
    first = torch.randint(0, d_vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    return torch.cat([first, first], dim=1)


def induction_score(patterns: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(n_layers, n_heads) ARENA induction score: mean attention on the -seq_len + 1 diagonal.
    patterns (batch, n_layers, n_heads, pos, pos) on repeated sequences of `seq_len` tokens."""
    return patterns.diagonal(offset=-seq_len + 1, dim1=-2, dim2=-1).mean(dim=(0, -1))


def detector_scores(patterns: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """{kind: (n_layers, n_heads)} TransformerLens head-detector scores ("mul": the share of a head's
    attention on the kind's detection pattern), averaged over the batch; patterns (batch, n_layers,
    n_heads, pos, pos), tokens (batch, pos)."""
    batch, n_layers, n_heads = patterns.shape[:3]
    scores = {}
    for kind, detection in DETECTION_PATTERNS.items():
        table = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        for row in range(batch):
            target = detection(tokens[row].cpu()).to(patterns.dtype)
            for layer in range(n_layers):
                for head in range(n_heads):
                    table[layer, head] += compute_head_attention_similarity_score(
                        patterns[row, layer, head], target, exclude_bos=False, exclude_current_token=False,
                        error_measure="mul")
        scores[kind] = table / batch
    return scores


def head_kinds(scores: dict[str, torch.Tensor], threshold: float = HEAD_KIND_THRESHOLD) -> list[list[str]]:
    """[layer][head] the kind whose score is highest for each head, or "other" when none exceeds `threshold`."""
    kinds = list(scores)
    stacked = torch.stack([scores[k] for k in kinds])  # (kind, n_layers, n_heads)
    best_value, best = stacked.max(dim=0)
    return [[kinds[best[l, h]] if best_value[l, h] > threshold else "other" for h in range(best.shape[1])]
            for l in range(best.shape[0])]


def loss_by_position(model, tokens: torch.Tensor) -> torch.Tensor:
    """(pos - 1,) mean next-token loss at each context position over the batch: entry t is the loss of
    predicting token t + 1 from tokens 0..t; tokens (batch, pos)."""
    return model(tokens, return_type="loss", loss_per_token=True).mean(0)


def in_context_learning_score(losses: torch.Tensor, early: int, late: int) -> float:
    """Olsson et al.'s (2022) in-context-learning score: the mean loss at context position `late` minus
    the mean loss at position `early` (negative when later tokens are predicted better, i.e. the model
    uses the context). `losses` (pos - 1,) from `loss_by_position`, or (batch, pos - 1) per-token losses
    (averaged over the batch); position t is the prediction of token t + 1 from tokens 0..t. Olsson et
    al. use the 500th and the 50th token of a 512-token context; a shorter context scales both down
    (e.g. late = n_ctx - 2, early = n_ctx // 10), and the positions chosen should be stated with the score."""
    if not 0 <= early < late < losses.shape[-1]:
        raise ValueError(f"need 0 <= early < late < {losses.shape[-1]} (positions with a loss), got early={early}, late={late}")
    by_position = losses if losses.dim() == 1 else losses.mean(0)
    return (by_position[late] - by_position[early]).item()


def half_losses(model, tokens: torch.Tensor, seq_len: int) -> dict[str, float]:
    """Mean next-token loss on the first half and on the repeated half of repeated sequences
    (batch, 2 * seq_len): predictions of tokens 1..seq_len-1 and of tokens seq_len+1..2*seq_len-1
    (the first token of the repeat is unpredictable and left out of both)."""
    losses = model(tokens, return_type="loss", loss_per_token=True)  # (batch, pos - 1): predicting token t + 1
    return {"loss_first_half": losses[:, :seq_len - 1].mean().item(),
            "loss_repeated_half": losses[:, seq_len:].mean().item()}


def heads_above(scores: torch.Tensor, threshold: float = INDUCTION_THRESHOLD) -> list[tuple[int, int]]:
    """[(layer, head)] of the heads whose score (n_layers, n_heads) exceeds `threshold`, highest first."""
    layer, head = torch.nonzero(scores > threshold, as_tuple=True)
    found = [(int(l), int(h)) for l, h in zip(layer, head)]
    return sorted(found, key=lambda lh: -float(scores[lh]))


def heads_of_kind(kinds: list[list[str]], kind: str) -> list[tuple[int, int]]:
    """[(layer, head)] of the heads `head_kinds` named `kind`."""
    return [(l, h) for l, row in enumerate(kinds) for h, k in enumerate(row) if k == kind]
