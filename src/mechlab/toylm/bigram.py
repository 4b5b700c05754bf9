"""The 0-layer model as a bigram table: empirical bigram statistics of a token stream, the
table a 0-layer transformer has learned (softmax(W_E W_U + b_U)), and how far apart they are.

For counts n[a, b] (b follows a) with empirical conditionals P(b|a), any bigram model Q has
    loss(Q) = -sum n[a,b] log Q(b|a) / N  =  H(P) + KL(P || Q),
where H(P) is the conditional entropy of the stream (the floor no bigram model beats on it) and
KL is averaged over a with weights n[a, :] / N.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def bigram_counts(tokens: torch.Tensor, d_vocab: int) -> torch.Tensor:
    """(d_vocab, d_vocab) counts n[a, b] of token b directly after token a in `tokens` (n,)."""
    pairs = tokens[:-1] * d_vocab + tokens[1:]
    return torch.bincount(pairs, minlength=d_vocab * d_vocab).reshape(d_vocab, d_vocab)


def conditional_probs(counts: torch.Tensor) -> torch.Tensor:
    """(d_vocab, d_vocab) empirical P(b | a) = n[a, b] / n[a, :]; rows of unseen a are uniform."""
    counts = counts.double()
    totals = counts.sum(1, keepdim=True)
    uniform = torch.full_like(counts, 1 / counts.shape[1])
    return torch.where(totals > 0, counts / totals.clamp(min=1), uniform)


def bigram_loss(log_probs: torch.Tensor, counts: torch.Tensor) -> float:
    """Mean next-token loss (nats) of a bigram model log Q(b|a) (d_vocab, d_vocab) on a stream with `counts`."""
    counts = counts.double()
    weighted = torch.where(counts > 0, counts * log_probs.double(), torch.zeros_like(counts))
    return (-weighted.sum() / counts.sum()).item()


def bigram_entropy(counts: torch.Tensor) -> float:
    """Conditional entropy H(next | current) in nats: the lowest loss any bigram model reaches on the stream."""
    return bigram_loss(conditional_probs(counts).log(), counts)


def kl_per_token(counts: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """(d_vocab,) KL(P(.|a) || Q(.|a)) in nats for every current token a (0 for unseen a)."""
    p = conditional_probs(counts)
    terms = torch.where(p > 0, p * (p.log() - log_probs.double()), torch.zeros_like(p))
    return torch.where(counts.sum(1) > 0, terms.sum(1), torch.zeros(len(p), dtype=p.dtype))


def weighted_kl(counts: torch.Tensor, log_probs: torch.Tensor) -> float:
    """KL(P || Q) averaged over current tokens a weighted by how often a occurs: loss(Q) - H(P)."""
    weights = counts.double().sum(1) / counts.sum()
    return (weights * kl_per_token(counts, log_probs)).sum().item()


def learned_bigram_log_probs(model) -> torch.Tensor:
    """(d_vocab, d_vocab) log softmax(W_E W_U + b_U) of a HookedTransformer: for a 0-layer model
    without positional embeddings in the residual stream this is exactly its prediction; row a =
    the distribution over the token after a."""
    return torch.log_softmax((model.W_E @ model.W_U + model.b_U).double(), dim=-1).detach()


def top_next(log_probs: torch.Tensor, vocab: tuple[str, ...], token: str, k: int = 5) -> pd.DataFrame:
    """"What follows this character": the k most likely next tokens after `token`, with probabilities."""
    probs = log_probs[vocab.index(token)].exp()
    values, ids = probs.topk(k)
    return pd.DataFrame({"next": [vocab[i] for i in ids.tolist()], "p": values.tolist()})


def top_predictors(log_probs: torch.Tensor, vocab: tuple[str, ...], token: str, k: int = 5) -> pd.DataFrame:
    """"What predicts this one": the k current tokens a under which `token` is most likely next."""
    probs = log_probs[:, vocab.index(token)].exp()
    values, ids = probs.topk(k)
    return pd.DataFrame({"previous": [vocab[i] for i in ids.tolist()], "p": values.tolist()})


def pca(matrix: torch.Tensor, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the rows of `matrix` (n, d): (n, n_components) coordinates and the
    share of variance each component explains (n_components,)."""
    x = matrix.detach().double().numpy()
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    share = s ** 2 / (s ** 2).sum()
    return u[:, :n_components] * s[:n_components], share[:n_components]


def bigram_report(log_probs: torch.Tensor, counts: dict[str, torch.Tensor]) -> pd.DataFrame:
    """One row per stream (e.g. "train", "val"): its bigram entropy floor, the loss of the bigram model
    `log_probs` on every bigram of it, and the weighted KL between the two (loss - floor), in nats."""
    return pd.DataFrame([{"split": name, "entropy floor": bigram_entropy(n), "model loss": bigram_loss(log_probs, n),
                          "KL(empirical || model)": weighted_kl(n, log_probs), "bigrams": int(n.sum())}
                         for name, n in counts.items()]).set_index("split")
