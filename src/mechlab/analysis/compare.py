"""Comparing a model's internals on two sets of prompts (e.g. in-distribution vs out-of-distribution):
where its heads attend, and how far its activations move.

* `mass_by_group`: attention mass from chosen destination positions to groups of source positions
  (slots such as "tens digit of b", or plain absolute positions), averaged over prompts.
* `total_variation`: how different two such mass profiles are (0 = the same, 1 = disjoint). A head
  whose profile by *position* stays put while its profile by *slot* moves when the layout shifts
  reads fixed positions, not tokens.
* `activation_shift`: how far the mean activation of a component moves between two prompt sets, in
  units of its spread on the reference set.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def mass_by_group(patterns: torch.Tensor, group_ids: torch.Tensor, dest_mask: torch.Tensor, n_groups: int) -> torch.Tensor:
    """[*heads, n_groups]: attention mass summed over the source positions of each group, averaged
    over the (prompt, destination position) pairs where `dest_mask` holds.

    patterns: [batch, *heads, dest, src] (e.g. [batch, n_layers, n_heads, pos, pos]);
    group_ids: [batch, pos] int64 group of every position; dest_mask: [batch, pos] bool.
    """
    if not dest_mask.any():
        raise ValueError("dest_mask selects no destination position")
    onehot = torch.nn.functional.one_hot(group_ids, n_groups).to(patterns.dtype)  # [batch, src, group]
    mass = torch.einsum("b...ij,bjg->b...ig", patterns, onehot)  # [batch, *heads, dest, group]
    dest = dest_mask.to(patterns.dtype)
    return torch.einsum("b...ig,bi->...g", mass, dest) / dest.sum()


def position_ids(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos] int64: each position's own index, the grouping of `mass_by_group` by absolute position."""
    return torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[...]: half the L1 distance between two mass profiles [..., groups] (each summing to 1)."""
    return 0.5 * (p - q).abs().sum(-1)


def activation_shift(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """[...]: |mean(other) - mean(reference)| / spread(reference), per component.

    reference: [n, ..., d], other: [m, ..., d] (e.g. [prompts, n_layers, d_model] at one position).
    spread = sqrt(mean over reference prompts of |x - mean(reference)|^2): 0 means the mean did not
    move, 1 means it moved as far as a typical reference activation lies from its own mean.
    """
    mean = reference.mean(0)
    spread = (reference - mean).pow(2).sum(-1).mean(0).sqrt()
    return (other.mean(0) - mean).norm(dim=-1) / spread


POSITION_GAP = 0.2  # a head reads fixed positions when its profile by group moves this much more than by position


def reads_fixed_positions(tv_by_group: torch.Tensor, tv_by_position: torch.Tensor, min_gap: float = POSITION_GAP) -> torch.Tensor:
    """[...] bool: after a layout shift, the head's attention profile by token group (slot) moved at
    least `min_gap` more (`total_variation`) than its profile by absolute position, i.e. it kept
    attending to the same positions although other tokens sit there now."""
    return tv_by_group - tv_by_position >= min_gap


def position_remap_hook(model, index: torch.Tensor) -> tuple[str, Callable]:
    """A forward hook ("hook_pos_embed", fn) under which position p gets the learned positional
    embedding of position `index[p]` ([n] int64; positions from n on keep their own), e.g. to
    show a model its usual tokens at the positions another layout puts them."""
    def hook(pos_embed: torch.Tensor, hook) -> torch.Tensor:  # [batch, pos, d_model]
        n = pos_embed.shape[1]
        full = torch.cat([index[:n], torch.arange(min(len(index), n), n)]).to(pos_embed.device)
        return model.W_pos[full].to(pos_embed.dtype).expand_as(pos_embed).clone()
    return "hook_pos_embed", hook
