"""Next-token language modelling as a `train.Task` for the one training loop: random windows of a
token stream, cross-entropy at every position, and a fixed evaluation set of windows."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def window_starts(n_tokens: int, n_ctx: int, n_windows: int) -> torch.Tensor:
    """(n_windows,) evenly spaced start indices of windows of n_ctx + 1 tokens in a stream of n_tokens."""
    last = n_tokens - (n_ctx + 1)
    if last < 0:
        raise ValueError(f"a stream of {n_tokens} tokens is shorter than one window of {n_ctx + 1}")
    return torch.linspace(0, last, n_windows).round().long()


def windows(tokens: torch.Tensor, starts: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """(len(starts), n_ctx + 1) windows of `tokens` (n,) beginning at `starts`: inputs are [:, :-1],
    targets [:, 1:]."""
    return tokens[starts[:, None] + torch.arange(n_ctx + 1)]


def next_token_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting batch[:, 1:] from batch[:, :-1]; batch (batch, n_ctx + 1)."""
    logits = model(batch[:, :-1])  # (batch, n_ctx, d_vocab)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


class NextTokenTask:
    """`train.Task`: windows of n_ctx + 1 tokens drawn uniformly from `train`.

    batch(step): `batch_size` windows at starts drawn from a generator seeded by (seed, step), so a
    resumed run sees the same batches. evaluate(): `val_loss` and `train_loss_eval`, the mean
    next-token loss over `n_eval_windows` fixed, evenly spaced windows of each stream.
    """

    def __init__(self, train: torch.Tensor, val: torch.Tensor, n_ctx: int, batch_size: int, seed: int = 0,
                 n_eval_windows: int = 64):
        self.train, self.val, self.n_ctx, self.batch_size, self.seed = train, val, n_ctx, batch_size, seed
        self.val_windows = windows(val, window_starts(len(val), n_ctx, n_eval_windows), n_ctx)
        self.train_windows = windows(train, window_starts(len(train), n_ctx, n_eval_windows), n_ctx)

    def batch(self, step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.train) - self.n_ctx, (self.batch_size,), generator=gen)
        return windows(self.train, starts, self.n_ctx)

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return next_token_loss(model, batch)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        return {"val_loss": next_token_loss(model, self.val_windows.to(device)).item(),
                "train_loss_eval": next_token_loss(model, self.train_windows.to(device)).item()}
