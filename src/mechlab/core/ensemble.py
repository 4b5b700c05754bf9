"""N models of one architecture trained at once, vectorised over the members, by the one training loop.

An `Ensemble` holds the members' weights stacked (each parameter `(N, ...)`, from
`torch.func.stack_module_state`) and runs a function of one model on every member at once with
`torch.vmap` over `torch.func.functional_call` of a weightless (meta) copy of the member: one batched
matmul per layer instead of N small ones. An `EnsembleTask` wraps one task per member (same family,
data seeds of their own, or one task shared) so that `core.train.train(ensemble, ensemble_task, cfg)`
trains all members in one process, unchanged:

    ensemble = Ensemble.from_config(main_model_config(), seeds=range(4))
    task = EnsembleTask([ArithmeticTask(train, val, batch_size=128, seed=s) for s in range(4)])
    train(ensemble, task, TrainConfig(max_steps=..., stop_metric="min/val_exact", stop_value=0.99), run_dir)
    ensemble.member(2)  # a standalone HookedTransformer with member 2's weights

Each member gets exactly the update it would get trained alone on its own batches: the training loss is
the *sum* of the members' losses, so member i's gradient is the gradient of its own loss; AdamW and
weight decay act elementwise; the loop's gradient clipping calls `Ensemble.clip_grad_norm_`, which clips
each member by its own norm (tests/core/test_ensemble.py compares with members trained alone). In the
loop's record, `train_loss` is therefore the sum of the members' losses, and `grad_norm/<module>` the
root-sum-square over the members; the per-member metrics are `m<i>/<metric>` (see `EnsembleTask`).

The ensemble's parameter and buffer names are the member's (`blocks.0.attn.W_Q`, shape `(N, ...)`), so
a run folder's `state_dict` indexes like a member's. vmap's default `randomness="error"` stands: a
member with dropout would be refused rather than silently given one mask for all members.
"""
from __future__ import annotations

import copy
import dataclasses
import operator
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state
from transformer_lens import HookedTransformer

from mechlab.core.model import build


class _Call(nn.Module):
    """`fn(model, *args)` as a module, so that `functional_call` can run any function of the model (a
    task's loss, with its hooks) with substituted weights, not only `model.forward`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.model, *args)


def _config_without_seed(model: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in model.mechlab_config.to_json().items() if k != "seed"}


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor, parameter: bool) -> None:
    """Register `value` at dotted `name` under `root`, creating empty parent modules as needed."""
    *path, leaf = name.split(".")
    module = root
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    if parameter:
        module.register_parameter(leaf, nn.Parameter(value))
    else:
        module.register_buffer(leaf, value)


class Ensemble(nn.Module):
    """`len(models)` models of one config (they may differ in seed) as one module: parameters stacked
    `(N, ...)` under the member's names, buffers (attention masks) shared, and a member structure on the
    meta device through which `map` runs a function of one model on all members at once."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        shapes = [_config_without_seed(m) for m in models]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("ensemble members must share one config (all fields but seed): "
                             + ", ".join(f"model {i} differs" for i, s in enumerate(shapes) if s != shapes[0]))
        self.configs = [m.mechlab_config for m in models]
        params, _ = stack_module_state(list(models))
        for name, value in params.items():
            _set_tensor(self, name, value, parameter=True)
        for name, value in models[0].named_buffers():  # constants (causal mask), the same in every member
            _set_tensor(self, name, value.clone(), parameter=False)
        structure = copy.deepcopy(models[0])
        nn.Module.to(structure, device="meta")  # nn.Module's .to: a HookedTransformer's would set cfg.device to meta
        # Kept outside the module tree: it holds no weights, so it is neither trained, moved nor saved.
        object.__setattr__(self, "_structure", _Call(structure))

    @classmethod
    def from_config(cls, config: Any, seeds: Sequence[int], device: torch.device | str | None = None) -> "Ensemble":
        """Members `build(dataclasses.replace(config, seed=s))` for each seed in `seeds`."""
        return cls([build(dataclasses.replace(config, seed=s), device) for s in seeds])

    def __len__(self) -> int:
        return len(self.configs)

    def _member_model(self) -> nn.Module:
        """The meta member structure in the ensemble's dtype; a HookedTransformer's config pointed at the
        ensemble's device and dtype (TransformerLens moves the tokens to `cfg.device`)."""
        weight = next(self.parameters())
        model = nn.Module.to(self._structure.model, dtype=weight.dtype)
        if isinstance(model, HookedTransformer):
            model.cfg.device, model.cfg.dtype = str(weight.device), weight.dtype
        return model

    def map(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(model, *member_args)` for every member at once (`torch.vmap` over the members): `model` is the
        member structure carrying member i's weights, each of `args` (tensors or tuples of them) has a
        leading member dimension `(N, ...)`. Returns `fn`'s output stacked `(N, ...)`."""
        self._member_model()
        params = {f"model.{k}": v for k, v in self.named_parameters()}
        buffers = {f"model.{k}": v for k, v in self.named_buffers()}

        def one_member(member_params: dict[str, torch.Tensor], *member_args: Any) -> Any:
            return functional_call(self._structure, (member_params, buffers), (fn, *member_args))

        return torch.vmap(one_member)(params, *args)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, batch, pos) tokens, one batch per member -> (N, batch, pos, d_vocab) logits."""
        return self.map(operator.call, tokens)

    def member(self, i: int) -> nn.Module:
        """A standalone copy of member `i` (weights copied, config `configs[i]`), in the ensemble's
        train/eval mode: for evaluation and export (`save_checkpoint(ensemble.member(i), ...)`)."""
        model = copy.deepcopy(self._member_model()).to_empty(device=next(self.parameters()).device)
        model.load_state_dict({k: v[i] for k, v in self.named_parameters()} | dict(self.named_buffers()))
        model.mechlab_config = self.configs[i]
        return model.train(self.training)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip each member's gradient to L2 norm `max_norm` on its own (as `torch.nn.utils.clip_grad_norm_`
        would clip that member trained alone); returns the members' norms before clipping, `(N,)`."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
        return norms


def stack_batches(batches: Sequence[Any]) -> Any:
    """The members' batches stacked along a new leading member dimension: tensors `(N, ...)`, tuples and
    lists of tensors element by element."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(list(batches))
    if isinstance(first, (tuple, list)):
        return type(first)(stack_batches(parts) for parts in zip(*batches))
    raise TypeError(f"cannot stack batches of type {type(first).__name__}")


class EnsembleTask:
    """The training loop's `Task` for an `Ensemble`: one task per member, of one family (they differ in
    data seed, or are one task shared: `EnsembleTask([task] * n)`).

    batch(step): the members' batches for `step`, stacked `(N, ...)` (pure in `step`, as each member's).
    loss: the sum over members of the first task's `loss` applied to each member and its batch, run
    vectorised through `Ensemble.map` (so a task's loss must be vmappable: no boolean-mask indexing).
    evaluate: every member's metrics from its own task, `m<i>/<metric>`, plus `mean/<metric>` and
    `min/<metric>` across members, e.g. `stop_metric="min/val_exact"` stops once every member is there.
    The plain names are absent, so early stopping needs its metric named too (`early_stopping_metric=
    "mean/val_loss"`).
    """

    def __init__(self, tasks: Sequence[Any]):
        if len({type(t) for t in tasks}) != 1:
            raise ValueError(f"ensemble tasks must be of one family, got {sorted({type(t).__name__ for t in tasks})}")
        self.tasks = list(tasks)

    def batch(self, step: int) -> Any:
        return stack_batches([task.batch(step) for task in self.tasks])

    def loss(self, model: Ensemble, batch: Any) -> torch.Tensor:
        return model.map(self.tasks[0].loss, batch).sum()

    def evaluate(self, model: Ensemble) -> dict[str, float]:
        if len(model) != len(self.tasks):
            raise ValueError(f"an ensemble of {len(model)} members for {len(self.tasks)} tasks")
        members = [task.evaluate(model.member(i)) for i, task in enumerate(self.tasks)]
        out = {f"m{i}/{k}": v for i, metrics in enumerate(members) for k, v in metrics.items()}
        for k in members[0]:
            values = [metrics[k] for metrics in members]
            out[f"mean/{k}"] = sum(values) / len(values)
            out[f"min/{k}"] = min(values)
        return out
