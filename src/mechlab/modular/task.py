"""Single-token modular addition, (a + b) mod p with a, b in 0..p-1: the data, the fixed random
train/test split of the p*p pairs, and the `Task` the one training loop (`train.train`) runs.

Three input formats share one grid of pairs (row index = a * p + b):
    "pair"         [a, b]             for the MLP (`mechlab.modular.mlp.ModularMLP`)
    "one_layer"    [a, b, =]          Nanda et al. (2023): '=' is token p, d_vocab = p + 1
    "three_layer"  [a, +, b, =]       '+' is token p, '=' is token p + 1, d_vocab = p + 2
Transformers read their answer at the last position; only the first p logits (the residues)
enter the loss, so the extra '='/'+' outputs are never trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

P = 113
FORMATS = ("pair", "one_layer", "three_layer")


def all_pairs(p: int = P) -> torch.Tensor:
    """[p*p, 2] every (a, b), row a * p + b."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)


def labels(p: int = P) -> torch.Tensor:
    """[p*p] (a + b) mod p, in grid order."""
    pairs = all_pairs(p)
    return (pairs[:, 0] + pairs[:, 1]) % p


def encode(pairs: torch.Tensor, fmt: str, p: int = P) -> torch.Tensor:
    """Model inputs for `pairs` [n, 2] in format `fmt` (see module docstring)."""
    n = pairs.shape[0]
    if fmt == "pair":
        return pairs.clone()
    if fmt == "one_layer":
        return torch.cat([pairs, torch.full((n, 1), p)], dim=1)
    if fmt == "three_layer":
        return torch.stack([pairs[:, 0], torch.full((n,), p), pairs[:, 1], torch.full((n,), p + 1)], dim=1)
    raise ValueError(f"unknown format {fmt!r}: use one of {FORMATS}")


def vocab(fmt: str, p: int = P) -> tuple[str, ...]:
    """Token strings of a format's vocabulary (numbers, then '+'/'=')."""
    numbers = tuple(str(i) for i in range(p))
    return {"pair": numbers, "one_layer": numbers + ("=",), "three_layer": numbers + ("+", "=")}[fmt]


@dataclass(frozen=True)
class Split:
    """A fixed random split of the p*p grid: indices into `all_pairs(p)`."""

    train: torch.Tensor
    test: torch.Tensor
    p: int
    seed: int

    @property
    def train_fraction(self) -> float:
        return len(self.train) / self.p ** 2

    def describe(self) -> str:
        return (f"{len(self.train):,} train / {len(self.test):,} test pairs of {self.p ** 2:,} "
                f"({self.train_fraction:.1%} train), split seed {self.seed}")


def make_split(p: int = P, train_fraction: float | None = None, n_train: int | None = None,
               n_test: int | None = None, seed: int = 0) -> Split:
    """Shuffle the grid with `seed`; the first `n_train` (or round(train_fraction * p^2)) pairs
    train, the next `n_test` (default: all the rest) test. Deterministic in (p, sizes, seed)."""
    total = p * p
    if n_train is None:
        if train_fraction is None:
            raise ValueError("give train_fraction or n_train")
        n_train = round(train_fraction * total)
    n_test = total - n_train if n_test is None else n_test
    if n_train + n_test > total:
        raise ValueError(f"{n_train} + {n_test} pairs asked for, only {total} exist")
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return Split(train=perm[:n_train].sort().values, test=perm[n_train:n_train + n_test].sort().values, p=p, seed=seed)


def _keep_last_position(resid_mid: torch.Tensor, hook=None) -> torch.Tensor:
    return resid_mid[:, -1:, :]


def _residue_logits(out: torch.Tensor, p: int) -> torch.Tensor:
    """[n, p] residue logits from a model's output: a transformer's last position, or the MLP's."""
    return out[:, -1, :p] if out.dim() == 3 else out[:, :p]


def answer_logits(model: torch.nn.Module, inputs: torch.Tensor, p: int = P) -> torch.Tensor:
    """[n, p] residue logits for training: the MLP's output, or a transformer's last position.

    For a HookedTransformer only the last position is read, so the last block's MLP and the
    unembedding run on that position alone (a hook keeps the last row of its resid_mid): the
    same logits as `model(inputs)[:, -1]`, for about half the compute on short inputs. Evaluation
    (`evaluate_pairs`) runs the full forward pass instead, so that hooks at every position, such
    as ablations, see what they expect."""
    if isinstance(model, HookedTransformer):
        hook = f"blocks.{model.cfg.n_layers - 1}.hook_resid_mid"
        return model.run_with_hooks(inputs, fwd_hooks=[(hook, _keep_last_position)])[:, -1, :p]
    return _residue_logits(model(inputs), p)


def cross_entropy_f64(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in float64: near-zero training losses stay accurate (as in Nanda et al.),
    which matters late in grokking runs."""
    return F.cross_entropy(logits.double(), targets)


class ModularTask:
    """`train.Task` for modular addition on a `Split`.

    batch(step): the whole training set when `batch_size` is None (full-batch: one step is one
    epoch), else minibatch `step % steps_per_epoch` of a permutation drawn from (seed, epoch).
    evaluate(): train_acc, train_loss_full, test_loss, test_acc (val_* aliases for the loop's
    early-stopping defaults), plus any `extra_metrics(model) -> dict`.
    """

    def __init__(self, split: Split, fmt: str, batch_size: int | None = None, seed: int = 0,
                 extra_metrics: Callable[[torch.nn.Module], dict[str, float]] | None = None):
        self.split, self.fmt, self.p = split, fmt, split.p
        self.batch_size, self.seed, self.extra_metrics = batch_size, seed, extra_metrics
        inputs, targets = encode(all_pairs(self.p), fmt, self.p), labels(self.p)
        self.inputs, self.targets = inputs, targets
        self.train_x, self.train_y = inputs[split.train], targets[split.train]
        self.test_x, self.test_y = inputs[split.test], targets[split.test]

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.train_y)
        return 1 if self.batch_size is None else -(-n // self.batch_size)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_size is None:
            return self.train_x, self.train_y
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(len(self.train_y), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
        return self.train_x[idx], self.train_y[idx]

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return cross_entropy_f64(answer_logits(model, x, self.p), y)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        pairs = all_pairs(self.p)
        train = evaluate_pairs(model, pairs[self.split.train], self.fmt, "train", self.p)
        out = {"train_loss_full": train["train_loss"], "train_acc": train["train_acc"]}
        out |= evaluate_pairs(model, pairs[self.split.test], self.fmt, "test", self.p)
        out["val_loss"], out["val_acc"] = out["test_loss"], out["test_acc"]
        if self.extra_metrics is not None:
            out.update(self.extra_metrics(model))
        return out


@torch.no_grad()
def evaluate_pairs(model: torch.nn.Module, pairs: torch.Tensor, fmt: str, prefix: str, p: int = P) -> dict[str, float]:
    """The one evaluation of a single-token model: {"<prefix>_loss": cross-entropy (float64),
    "<prefix>_acc": share of argmax residues that are (a + b) mod p} on `pairs` [n, 2], read from
    the model's full forward pass (any hooks the model holds apply; see `answer_logits`)."""
    device = next(model.parameters()).device
    logits = _residue_logits(model(encode(pairs, fmt, p).to(device)), p)
    targets = ((pairs[:, 0] + pairs[:, 1]) % p).to(device)
    return {f"{prefix}_loss": cross_entropy_f64(logits, targets).item(),
            f"{prefix}_acc": (logits.argmax(-1) == targets).float().mean().item()}
