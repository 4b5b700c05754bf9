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

from typing import Sequence

import pandas as pd
import torch
from transformer_lens import FactoredMatrix
from transformer_lens.head_detector import (
    compute_head_attention_similarity_score,
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
)

from mechlab.analysis.attention import attention_patterns
from mechlab.core.runs import first_reaching

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


def previous_token_score(patterns: torch.Tensor) -> torch.Tensor:
    """(n_layers, n_heads) mean attention on the previous token (the -1 diagonal), averaged over the batch;
    patterns (batch, n_layers, n_heads, pos, pos)."""
    return patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1))


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


OLSSON_CONTEXT, OLSSON_EARLY, OLSSON_LATE = 512, 50, 500  # Olsson et al.: loss on the 500th minus the 50th token


def icl_positions(n_ctx: int) -> tuple[int, int]:
    """(early, late) `loss_by_position` indices for a context of n_ctx tokens: Olsson et al.'s 50th and 500th
    token of 512, scaled to n_ctx. The k-th token (1-based) is predicted at position k - 2 (from the k - 1
    tokens before it), so a 512-token context gives (48, 498) and a 128-token one (10, 123)."""
    early, late = (max(0, round(k * n_ctx / OLSSON_CONTEXT) - 2) for k in (OLSSON_EARLY, OLSSON_LATE))
    return early, late


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


# --- Prefix matching and copying (Olsson et al. 2022) -------------------------------------------------------------

def prefix_matching_score(patterns: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(n_layers, n_heads) Olsson et al.'s prefix-matching score: the attention a query puts on the keys whose
    *preceding* token equals the query's token (the tokens after earlier copies of it), averaged over the
    queries that have such a key and over the batch. Computed from token identities, so it counts every
    earlier copy (repeats of a random sequence, or a character that recurs in it), not only the
    `-seq_len + 1` diagonal. patterns (batch, n_layers, n_heads, pos, pos), tokens (batch, pos)."""
    pos = tokens.shape[1]
    after_copy = torch.zeros(tokens.shape[0], pos, pos, dtype=torch.bool)  # (batch, query, key)
    after_copy[:, :, 1:] = tokens[:, :, None] == tokens[:, None, :-1]  # key k is preceded by the query's token
    after_copy &= torch.ones(pos, pos, dtype=torch.bool).tril()  # keys at or before the query
    has_match = after_copy.any(-1)  # (batch, query)
    mass = (patterns * after_copy[:, None, None].to(patterns.dtype)).sum(-1)  # (batch, n_layers, n_heads, query)
    return (mass * has_match[:, None, None]).sum((0, -1)) / has_match.sum()


def full_ov_circuit(model, layer: int, head: int):
    """(d_vocab, d_vocab) FactoredMatrix W_E W_V W_O W_U of one head: row = the token attended to, column =
    the logit its output raises directly (the direct path, through no other head)."""
    return model.W_E @ model.OV[layer, head] @ model.W_U


def full_qk_circuit(model, layer: int, head: int):
    """(d_vocab, d_vocab) FactoredMatrix W_E W_Q W_K^T W_E^T of one head: row = query token, column = key
    token, entry = the attention score from the token embeddings alone (positional terms left out)."""
    return model.W_E @ model.QK[layer, head] @ model.W_E.T


def copying_score(model) -> torch.Tensor:
    """(n_layers, n_heads) Elhage et al.'s copying measure of each head's full OV circuit W_E W_OV W_U:
    sum(eigenvalues) / sum(|eigenvalues|), the real part. +1 when every eigenvalue is positive (the head
    raises the logit of the token it attends to: copying), -1 when all are negative. The eigenvalues come
    from FactoredMatrix (those of the small d_head x d_head product, the nonzero ones of the full matrix)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    scores = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            eig = full_ov_circuit(model, layer, head).eigenvalues
            scores[layer, head] = (eig.sum() / eig.abs().sum()).real.item()
    return scores


# --- Composition between layers (Elhage et al. 2021) --------------------------------------------------------------

def composition_score(earlier, later) -> float:
    """||earlier @ later||_F / (||earlier||_F ||later||_F) for two (d_model, d_model) FactoredMatrix: how much
    of what `earlier` writes `later` reads (1: fully aligned, about 1/sqrt(d_model) for random matrices)."""
    return ((earlier @ later).norm() / (earlier.norm() * later.norm())).item()


def composition_scores(model, kind: str, earlier_layer: int = 0, later_layer: int = 1) -> torch.Tensor:
    """(n_heads earlier, n_heads later) Q-, K- or V-composition scores (`kind` "q", "k", "v") between every
    head of `earlier_layer` (its OV circuit writes the residual stream) and every head of `later_layer`
    (its QK circuit reads queries or keys, or its OV circuit reads values). In TransformerLens' row
    convention (x @ W): K-composition multiplies W_OV^earlier by (W_QK^later)^T, Q-composition by
    W_QK^later, V-composition by W_OV^later."""
    readers = {"q": lambda h: model.QK[later_layer, h], "k": lambda h: model.QK[later_layer, h].T,
               "v": lambda h: model.OV[later_layer, h]}
    if kind not in readers:
        raise ValueError(f"kind must be one of {sorted(readers)}, got {kind!r}")
    n_heads = model.cfg.n_heads
    return torch.tensor([[composition_score(model.OV[earlier_layer, e], readers[kind](l)) for l in range(n_heads)]
                         for e in range(n_heads)])


def composition_baseline(d_model: int, d_head: int, n_samples: int = 200, seed: int = 0) -> float:
    """The mean `composition_score` of two random rank-`d_head` (d_model, d_model) FactoredMatrix with Gaussian
    factors: what a composition score of unrelated heads looks like at this width (ARENA's baseline)."""
    gen = torch.Generator().manual_seed(seed)

    def random_factored() -> FactoredMatrix:
        return FactoredMatrix(torch.randn(d_model, d_head, generator=gen), torch.randn(d_head, d_model, generator=gen))

    return sum(composition_score(random_factored(), random_factored()) for _ in range(n_samples)) / n_samples


# --- Skip-trigrams of a 1-layer model (Elhage et al. 2021) --------------------------------------------------------

def skip_trigrams(model, layer: int, head: int, vocab: tuple[str, ...], k: int = 10,
                  among: Sequence[int] | None = None) -> pd.DataFrame:
    """The head's strongest skip-trigrams [source] ... [query] -> [output], read from its circuits: for each
    source token, the output whose logit the full OV circuit raises most (row-centred, since a constant
    shift of all logits changes nothing) and the query token that prefers this source most over the other
    keys (the full QK circuit's column, each query's row centred over keys). The k rows with the largest
    OV boost, with that boost (`ov`) and the query's attention-score advantage (`qk`). `among` (token ids)
    restricts sources, queries and outputs to those tokens (e.g. the frequent ones: rare tokens keep
    large untrained weights)."""
    ids = torch.arange(model.cfg.d_vocab) if among is None else torch.as_tensor(among)
    ov = full_ov_circuit(model, layer, head).AB.detach()[ids][:, ids]
    qk = full_qk_circuit(model, layer, head).AB.detach()[ids][:, ids]
    ov = ov - ov.mean(-1, keepdim=True)  # (source, output)
    qk = qk - qk.mean(-1, keepdim=True)  # (query, key)
    best_ov, output = ov.max(-1)
    best_qk, query = qk.max(0)  # for each key (source): the query that prefers it most
    order = best_ov.argsort(descending=True)[:k].tolist()
    name = [vocab[i] for i in ids.tolist()]
    return pd.DataFrame({"source": [name[i] for i in order], "query": [name[query[i]] for i in order],
                         "output": [name[output[i]] for i in order], "ov": best_ov[order].tolist(),
                         "qk": best_qk[order].tolist()})


# --- Norm-based attention (Kobayashi et al. 2020) -----------------------------------------------------------------

def norm_based_attention(model, tokens: torch.Tensor) -> torch.Tensor:
    """(batch, n_layers, n_heads, pos, pos) ||alpha_ij f(x_j)|| = alpha_ij ||v_j W_O||: the size of what each
    key position contributes to each query's head output, not just its attention weight (Kobayashi et al.
    2020; f(x_j) = v_j W_O, the transformed value vector; tokens (batch, pos))."""
    names = [f"blocks.{l}.attn.hook_{n}" for l in range(model.cfg.n_layers) for n in ("pattern", "v")]
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names)
    out = []
    for layer in range(model.cfg.n_layers):
        v = cache[f"blocks.{layer}.attn.hook_v"]  # (batch, key, head, d_head)
        f_norm = torch.einsum("bkhd,hdm->bhkm", v, model.W_O[layer]).norm(dim=-1)  # (batch, head, key)
        out.append(cache[f"blocks.{layer}.attn.hook_pattern"] * f_norm[:, :, None, :])
    return torch.stack(out, dim=1).detach().cpu()


def row_normalised(attention: torch.Tensor) -> torch.Tensor:
    """(..., pos, pos) each query's row divided by its sum: norm-based attention as a distribution over keys,
    comparable with the raw weights."""
    return attention / attention.sum(-1, keepdim=True).clamp(min=1e-12)


def attention_disagreement(raw: torch.Tensor, norm_based: torch.Tensor) -> torch.Tensor:
    """(n_layers, n_heads) mean over queries and batch of the total-variation distance between the raw
    attention weights and the row-normalised norm-based attention (0: the same distribution over keys, 1:
    disjoint); both (batch, n_layers, n_heads, pos, pos)."""
    return 0.5 * (raw - row_normalised(norm_based)).abs().sum(-1).mean((0, -1))


# --- The phase change over a checkpoint series (Olsson et al. 2022) -----------------------------------------------

JUMP_FRACTION = 0.5  # a measure has "jumped" at the first checkpoint past half its way from start to extreme
# ... provided that way is at least this long (smaller moves are noise: the ICL score of one context position moves
# by a few hundredths of a nat between checkpoints of a model without induction heads)
MIN_JUMP = {"previous_token_score": 0.2, "induction_score": 0.2, "k_composition": 0.05, "icl_score": 0.1}


def jump_step(rows: list[dict], metric: str, decreasing: bool = False, fraction: float = JUMP_FRACTION,
              min_change: float = 0.0) -> int | None:
    """The step of the first row (`first_reaching`) where `metric` has gone `fraction` of the way from its
    value in the first row to its extreme over the series (the maximum, or the minimum if `decreasing`);
    None if the extreme is less than `min_change` away from the first value (no jump). rows: [{"step": ...,
    metric: ...}] in step order."""
    values = [row[metric] for row in rows]
    extreme = min(values) if decreasing else max(values)
    if extreme == values[0] or abs(extreme - values[0]) < min_change:
        return None
    target = values[0] + fraction * (extreme - values[0])
    return first_reaching(rows, metric, target, below=decreasing)["step"]  # the extreme is past the target


def series_measures(series: list[tuple[int, torch.nn.Module]], repeated: torch.Tensor, seq_len: int,
                    text: torch.Tensor, early: int, late: int) -> pd.DataFrame:
    """One row per checkpoint (step, model) of a series: the highest layer-0 previous-token score and the
    highest induction score on `repeated` (batch, 2 * seq_len) tokens, the highest K-composition score between a layer-0 and a layer-1 head, and the
    in-context-learning score (loss at position `late` minus at `early`) on `text` windows (batch, pos)."""
    rows = []
    for step, model in series:
        patterns = attention_patterns(model, repeated)
        rows.append({"step": step, "previous_token_score": previous_token_score(patterns)[0].max().item(),
                     "induction_score": induction_score(patterns, seq_len).max().item(),
                     "k_composition": composition_scores(model, "k").max().item(),
                     "icl_score": in_context_learning_score(loss_by_position(model, text), early, late)})
    return pd.DataFrame(rows)


def phase_change_steps(measures: pd.DataFrame, fraction: float = JUMP_FRACTION) -> dict[str, int | None]:
    """{measure: the step it jumps at, or None} (`jump_step`) for the columns of `series_measures`: the
    previous-token score, the induction score and K-composition rise, the in-context-learning score falls, each by at least MIN_JUMP[measure]."""
    rows = measures.to_dict("records")
    return {name: jump_step(rows, name, decreasing=name == "icl_score", fraction=fraction, min_change=MIN_JUMP[name])
            for name in ("previous_token_score", "induction_score", "k_composition", "icl_score")}
