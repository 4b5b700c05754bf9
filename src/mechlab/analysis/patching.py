"""Activation patching of any `HookedTransformer`: a fast batched patcher that matches
`transformer_lens.patching`, the TransformerLens reference, and attribution patching.

A metric is a `PatchingMetric`: a function of the logits at the positions it names, normalized
so that 0 = corrupted run and 1 = clean run (the arithmetic pairs and metrics are in
`mechlab.arithmetic.pairs`).

Fast patching (`batched_patch`). `transformer_lens.patching` runs one full forward pass per
patched index. Here many patched indices are folded into the batch (one row per (patch, prompt)),
and a patch only recomputes what it can change:

* layers before the patched layer are skipped: rows start from the corrupted run's cached
  residual stream at that layer;
* positions before the patched position are skipped: their residual stream is unchanged in
  every later layer, so their keys and values are taken from the corrupted cache and only the
  positions >= the patched position are recomputed (attention over cached + new keys);
* a head-output / attention-output / MLP-output patch at (layer L, position p) changes the
  residual stream at L only at p, so layer L is a single-position update;
* in the last layer only the positions the metric reads are computed, and positions after the
  last metric position are never computed (they cannot influence it);
* patches that cannot change the metric at all (position after every metric position) are
  filled with the corrupted value without running anything.

Patches of one layer are grouped into chunks by a small dynamic programme over their start
positions that minimises (per-chunk overhead + rows x recomputed positions) under a token
budget, so one prompt folds a whole layer into one chunk and 64 prompts use one chunk per
position. `tests/analysis/test_patching.py` checks every sweep against `transformer_lens.patching`.

Attribution patching (`attribution_patch`): the first-order estimate
(clean - corrupted activation) . d metric / d activation, from one clean forward pass, one
corrupted forward pass and one backward pass, for the same sweeps.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mechlab.core.model import head_labels

# --- normalized metrics --------------------------------------------------------------------------

class PatchingMetric:
    """A metric of the logits at `positions`, normalized to 0 = corrupted, 1 = clean.

    Called on full logits [..., batch, pos, d_vocab] (the `transformer_lens.patching` interface)
    it returns the normalized metric averaged over the batch, with any leading dims kept.
    `score(logits_at_positions)` does the same from logits already restricted to `positions`.
    """

    positions: list[int]
    clean_value: float = 1.0
    corrupted_value: float = 0.0

    def raw(self, logits_at_positions: torch.Tensor) -> torch.Tensor:  # [..., batch, P, V] -> [...]
        raise NotImplementedError

    def score(self, logits_at_positions: torch.Tensor) -> torch.Tensor:
        return (self.raw(logits_at_positions) - self.corrupted_value) / (self.clean_value - self.corrupted_value)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.score(logits[..., self.positions, :])

    def calibrate(self, clean_logits: torch.Tensor, corrupted_logits: torch.Tensor) -> "PatchingMetric":
        with torch.no_grad():
            self.clean_value = self.raw(clean_logits[..., self.positions, :]).item()
            self.corrupted_value = self.raw(corrupted_logits[..., self.positions, :]).item()
        if math.isclose(self.clean_value, self.corrupted_value, abs_tol=1e-9):
            raise ValueError(f"{type(self).__name__}: clean and corrupted runs score the same "
                             f"({self.clean_value}); the metric cannot be normalized")
        return self


# --- the batched patcher -------------------------------------------------------------------------
#
# Names used below: a *row* is one (patch, prompt) pair of the folded batch; `prompt` [R] is the
# prompt index of each row, `pos` [R] and `head` [R] the patched position and head of each row.
# `length` is the number of positions that can matter (last metric position + 1) and
# `first_pos` the first position a chunk recomputes.

CORRUPTED_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "attn.hook_k", "attn.hook_v",
                   "attn.hook_z", "hook_attn_out", "hook_mlp_out")


def run_cache(model, tokens: torch.Tensor):
    """`model.run_with_cache` with what the batched patcher needs (and everything TL's helpers need)."""
    names = {f"blocks.{l}.{h}" for l in range(model.cfg.n_layers) for h in CORRUPTED_HOOKS}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names)
    return logits, cache


class _Runner:
    """Runs the blocks of `model` on a window of positions, reusing the corrupted cache."""

    def __init__(self, model, corrupted_cache, positions: list[int]):
        self.model, self.cfg = model, model.cfg
        self.corrupted = corrupted_cache
        self.positions = sorted(positions)
        self.length = self.positions[-1] + 1  # nothing after the last metric position matters
        self.n_layers = self.cfg.n_layers
        self.k = [corrupted_cache[f"blocks.{l}.attn.hook_k"] for l in range(self.n_layers)]
        self.v = [corrupted_cache[f"blocks.{l}.attn.hook_v"] for l in range(self.n_layers)]
        self.final = corrupted_cache[f"blocks.{self.n_layers - 1}.hook_resid_post"]
        self.dtype = self.final.dtype  # what the model computes in (cfg.dtype can lag behind `model.double()`)

    def attn(self, layer: int, resid: torch.Tensor, first_pos: int, prompt: torch.Tensor, q_rel: list[int] | None,
             z_patch=None) -> torch.Tensor:
        """Attention of `layer` for window rows `resid` [R, W, d_model] starting at absolute
        position `first_pos`; keys and values before it come from the corrupted cache. Queries
        only at relative positions `q_rel` (None = all). Returns attn_out [R, Q, d_model]."""
        block = self.model.blocks[layer]
        attn = block.attn
        x = block.ln1(resid)
        k_new = torch.einsum("rwd,hde->rwhe", x, attn.W_K) + attn.b_K
        v_new = torch.einsum("rwd,hde->rwhe", x, attn.W_V) + attn.b_V
        if first_pos > 0:
            k = torch.cat([self.k[layer][prompt, :first_pos], k_new], dim=1)
            v = torch.cat([self.v[layer][prompt, :first_pos], v_new], dim=1)
        else:
            k, v = k_new, v_new
        xq = x if q_rel is None else x[:, q_rel]
        q = torch.einsum("rqd,hde->rqhe", xq, attn.W_Q) + attn.b_Q
        scores = torch.einsum("rqhe,rkhe->rhqk", q, k) / attn.attn_scale
        q_abs = torch.arange(first_pos, first_pos + resid.shape[1]) if q_rel is None else torch.tensor(q_rel) + first_pos
        future = torch.arange(k.shape[1])[None, :] > q_abs[:, None]  # [Q, K]
        scores = scores.masked_fill(future.to(scores.device), float("-inf"))
        pattern = F.softmax(scores, dim=-1)
        z = torch.einsum("rhqk,rkhe->rqhe", pattern, v)
        if z_patch is not None:
            mask, clean_z = z_patch  # [R, W, n_heads] bool, [R, W, n_heads, d_head]
            if q_rel is not None:
                mask, clean_z = mask[:, q_rel], clean_z[:, q_rel]
            z = torch.where(mask[..., None], clean_z, z)
        return torch.einsum("rqhe,hed->rqd", z, attn.W_O) + attn.b_O

    def mlp(self, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
        """[R, W, d_model]: the residual stream leaving `layer` given the one after its attention."""
        block = self.model.blocks[layer]
        return resid_mid + block.mlp(block.ln2(resid_mid))

    def run(self, start_layer: int, first_pos: int, resid: torch.Tensor, prompt: torch.Tensor,
            z_patches=None) -> torch.Tensor:
        """resid: [R, length - first_pos, d_model], the residual stream entering `start_layer` at
        positions first_pos..length-1. Returns logits [R, len(positions), d_vocab]."""
        q_rel_last = [p - first_pos for p in self.positions if p >= first_pos]
        for layer in range(start_layer, self.n_layers):
            q_rel = q_rel_last if layer == self.n_layers - 1 else None  # last layer: metric positions only
            z_patch = None if z_patches is None else z_patches.get(layer)
            attn_out = self.attn(layer, resid, first_pos, prompt, q_rel, z_patch)
            resid = resid if q_rel is None else resid[:, q_rel]
            resid = self.mlp(layer, resid + attn_out)
        if start_layer == self.n_layers:
            resid = resid[:, q_rel_last]
        before = [p for p in self.positions if p < first_pos]
        if before:
            resid = torch.cat([self.final[prompt][:, before], resid], dim=1)
        return self.model.unembed(self.model.ln_final(resid))

    def run_from_mid(self, layer: int, resid_mid: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """resid_mid: [R, length, d_model], the residual stream after the attention of `layer`
        at positions 0..length-1. Returns logits [R, len(positions), d_vocab]."""
        if layer == self.n_layers - 1:
            resid = self.mlp(layer, resid_mid[:, self.positions])
            return self.model.unembed(self.model.ln_final(resid))
        return self.run(layer + 1, 0, self.mlp(layer, resid_mid), prompt)


# Patch setters. Each computes, for a batch of rows, the residual stream of the corrupted run
# with one activation replaced by the clean run's. The position setters return the rows at the
# patched position only, [R, d_model]: `resid_pre` the stream entering `layer`, the others the
# stream leaving it (an attention, head or MLP output at one position changes the layer's output
# only there, so the layer is a single-position update). The all-positions head setter returns
# the stream after the attention of `layer` at positions 0..length-1, [R, length, d_model].

def resid_pre_setter(runner: _Runner, clean_cache, layer: int, prompt, pos, head) -> torch.Tensor:
    """index = [layer, pos]: the clean residual stream entering `layer` at `pos`."""
    return clean_cache[f"blocks.{layer}.hook_resid_pre"][prompt, pos]


def _resid_post_with_attn_delta(runner: _Runner, layer: int, prompt, pos, delta: torch.Tensor) -> torch.Tensor:
    """[R, d_model]: the corrupted stream leaving `layer` at `pos` when `delta` [R, d_model] is
    added to its attention output there."""
    resid_mid = runner.corrupted[f"blocks.{layer}.hook_resid_mid"][prompt, pos] + delta
    return runner.mlp(layer, resid_mid[:, None])[:, 0]


def attn_out_setter(runner: _Runner, clean_cache, layer: int, prompt, pos, head) -> torch.Tensor:
    """index = [layer, pos]: the stream leaving `layer` at `pos` with the clean attention output."""
    name = f"blocks.{layer}.hook_attn_out"
    delta = clean_cache[name][prompt, pos] - runner.corrupted[name][prompt, pos]
    return _resid_post_with_attn_delta(runner, layer, prompt, pos, delta)


def head_out_setter(runner: _Runner, clean_cache, layer: int, prompt, pos, head) -> torch.Tensor:
    """index = [layer, pos, head]: the stream leaving `layer` at `pos` with the clean output
    (hook_z) of `head` there."""
    name = f"blocks.{layer}.attn.hook_z"
    dz = clean_cache[name][prompt, pos, head] - runner.corrupted[name][prompt, pos, head]  # [R, d_head]
    delta = torch.einsum("re,red->rd", dz, runner.model.blocks[layer].attn.W_O[head])
    return _resid_post_with_attn_delta(runner, layer, prompt, pos, delta)


def mlp_out_setter(runner: _Runner, clean_cache, layer: int, prompt, pos, head) -> torch.Tensor:
    """index = [layer, pos]: the stream leaving `layer` at `pos` with the clean MLP output."""
    name = f"blocks.{layer}.hook_mlp_out"
    return (runner.corrupted[f"blocks.{layer}.hook_resid_post"][prompt, pos]
            + clean_cache[name][prompt, pos] - runner.corrupted[name][prompt, pos])


def head_out_all_pos_setter(runner: _Runner, clean_cache, layer: int, prompt, head) -> torch.Tensor:
    """index = [layer, head]: the stream after the attention of `layer` with the clean output of
    `head` at every position, [R, length, d_model]."""
    name, length = f"blocks.{layer}.attn.hook_z", runner.length
    dz = clean_cache[name][prompt, :length, head] - runner.corrupted[name][prompt, :length, head]  # [R, length, d_head]
    delta = torch.einsum("rte,red->rtd", dz, runner.model.blocks[layer].attn.W_O[head])
    return runner.corrupted[f"blocks.{layer}.hook_resid_mid"][prompt, :length] + delta


def _sweep_layer_pos(runner: _Runner, clean_cache, metric: PatchingMetric, n_prompts: int, n_pos: int,
                     token_budget: int, overhead_tokens: int, *, setter: Callable, stream: str,
                     by_head: bool) -> torch.Tensor:
    """[n_layers, n_pos(, n_heads)]: the metric after each patch (layer, pos(, head)). `setter`
    gives the patched rows of the residual stream `stream` ("resid_pre": entering the layer,
    "resid_post": leaving it) at the patched position; the rest of the window is corrupted."""
    cfg, device, length = runner.cfg, runner.cfg.device, runner.length
    n_heads = cfg.n_heads if by_head else 1
    base = metric.score(runner.model.unembed(runner.model.ln_final(runner.final[:, metric.positions]))).item()
    out = torch.full((cfg.n_layers, n_pos, n_heads), base, dtype=runner.dtype)  # untouched patches keep the corrupted score
    for layer in range(cfg.n_layers):
        patches = [(p, h) for p in range(min(n_pos, length)) for h in range(n_heads)]
        for i, j in _plan_chunks([p for p, _ in patches], n_prompts, length, token_budget, overhead_tokens):
            chunk = patches[i:j]
            first_pos, n = chunk[0][0], len(chunk)
            prompt = torch.arange(n_prompts, device=device).repeat(n)  # row r <-> (patch r // n_prompts, prompt r % n_prompts)
            pos = torch.tensor([p for p, _ in chunk], device=device).repeat_interleave(n_prompts)
            head = torch.tensor([h for _, h in chunk], device=device).repeat_interleave(n_prompts)
            resid = runner.corrupted[f"blocks.{layer}.hook_{stream}"][prompt, first_pos:length].clone()
            resid[torch.arange(n * n_prompts, device=device), pos - first_pos] = setter(runner, clean_cache, layer,
                                                                                        prompt, pos, head)
            start_layer = layer if stream == "resid_pre" else layer + 1
            logits = runner.run(start_layer, first_pos, resid, prompt)
            scores = metric.score(logits.view(n, n_prompts, *logits.shape[1:])).cpu()
            for k, (p, h) in enumerate(chunk):
                out[layer, p, h] = scores[k]
    return out if by_head else out[..., 0]


def _sweep_layer_head(runner: _Runner, clean_cache, metric: PatchingMetric, n_prompts: int, n_pos: int,
                      token_budget: int, overhead_tokens: int, *, setter: Callable) -> torch.Tensor:
    """[n_layers, n_heads]: the metric after each patch (layer, head) at every position. `setter`
    gives the patched residual stream after the layer's attention, [R, length, d_model].
    (`n_pos` and `overhead_tokens` are unused: every patch starts at position 0, so chunks are
    simply as many heads as fit the token budget.)"""
    cfg = runner.cfg
    out = torch.empty((cfg.n_layers, cfg.n_heads), dtype=runner.dtype)
    heads_per_chunk = max(1, token_budget // (n_prompts * runner.length))
    for layer in range(cfg.n_layers):
        for first in range(0, cfg.n_heads, heads_per_chunk):
            heads = list(range(first, min(first + heads_per_chunk, cfg.n_heads)))
            prompt = torch.arange(n_prompts).repeat(len(heads))  # row r <-> (head heads[r // n_prompts], prompt r % n_prompts)
            head = torch.tensor(heads).repeat_interleave(n_prompts)
            logits = runner.run_from_mid(layer, setter(runner, clean_cache, layer, prompt, head), prompt)
            out[layer, heads] = metric.score(logits.view(len(heads), n_prompts, *logits.shape[1:])).cpu()
    return out


def _plan_chunks(starts: Sequence[int], rows_per_patch: int, length: int, budget: int,
                 overhead: int) -> list[tuple[int, int]]:
    """Split patches sorted by start position into contiguous chunks [i, j) minimising
    sum(overhead + rows * (length - start_i)) with rows * (length - start_i) <= budget (a chunk
    of one patch is always allowed)."""
    n = len(starts)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):
            tokens = (j - i) * rows_per_patch * (length - starts[i])
            if tokens > budget and j - i > 1:
                break
            cost = best[i] + overhead + tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append((cut[j], j))
        j = cut[j]
    return chunks[::-1]


DEFAULT_TOKEN_BUDGET = 65536
DEFAULT_OVERHEAD_TOKENS = 256

# One generic sweep per index layout, specialised by its setter (as transformer_lens.patching does
# with `partial(generic_activation_patch, patch_setter=...)`). A new sweep is one more entry.
SWEEP_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "resid_pre": partial(_sweep_layer_pos, setter=resid_pre_setter, stream="resid_pre", by_head=False),
    "attn_out": partial(_sweep_layer_pos, setter=attn_out_setter, stream="resid_post", by_head=False),
    "mlp_out": partial(_sweep_layer_pos, setter=mlp_out_setter, stream="resid_post", by_head=False),
    "z_by_pos": partial(_sweep_layer_pos, setter=head_out_setter, stream="resid_post", by_head=True),
    "z_all_pos": partial(_sweep_layer_head, setter=head_out_all_pos_setter),
}
SWEEPS = tuple(SWEEP_FUNCTIONS)


@torch.no_grad()
def batched_patch(model, corrupted_tokens: torch.Tensor, clean_cache, metric: PatchingMetric, sweep: str = "z_by_pos",
                  corrupted_cache=None, token_budget: int = DEFAULT_TOKEN_BUDGET,
                  overhead_tokens: int = DEFAULT_OVERHEAD_TOKENS) -> torch.Tensor:
    """Activation patching of every index of `sweep`, equal to the matching
    `transformer_lens.patching` helper (same shapes, same metric) but batched:

    =========== ============================================ ======================
    sweep       TransformerLens helper                       shape
    =========== ============================================ ======================
    resid_pre   get_act_patch_resid_pre                      [n_layers, pos]
    attn_out    get_act_patch_attn_out                       [n_layers, pos]
    mlp_out     get_act_patch_mlp_out                        [n_layers, pos]
    z_by_pos    get_act_patch_attn_head_out_by_pos           [n_layers, pos, n_heads]
    z_all_pos   get_act_patch_attn_head_out_all_pos          [n_layers, n_heads]
    =========== ============================================ ======================

    `metric` must be a `PatchingMetric` (it says which positions it reads). `clean_cache` and
    `corrupted_cache` come from `run_cache` (a plain `run_with_cache` cache with those hooks works).
    """
    if sweep not in SWEEP_FUNCTIONS:
        raise ValueError(f"unknown sweep {sweep!r}; expected one of {SWEEPS}")
    corrupted_tokens = corrupted_tokens.to(model.cfg.device)
    if corrupted_cache is None:
        _, corrupted_cache = run_cache(model, corrupted_tokens)
    n_prompts, n_pos = corrupted_tokens.shape
    runner = _Runner(model, corrupted_cache, metric.positions)
    return SWEEP_FUNCTIONS[sweep](runner, clean_cache, metric, n_prompts, n_pos, token_budget, overhead_tokens)


@torch.no_grad()
def patch_head_sets(model, corrupted_tokens: torch.Tensor, clean_cache, metric: PatchingMetric,
                    head_sets: Sequence[Sequence[tuple[int, int]]], corrupted_cache=None,
                    token_budget: int = DEFAULT_TOKEN_BUDGET) -> torch.Tensor:
    """[len(head_sets)]: the metric after patching the outputs (all positions) of every head in
    each set at once, e.g. pairs of heads [[(0, 1), (2, 3)], ...]. Batched like `batched_patch`:
    each set starts at its earliest layer."""
    cfg = model.cfg
    corrupted_tokens = corrupted_tokens.to(cfg.device)
    if corrupted_cache is None:
        _, corrupted_cache = run_cache(model, corrupted_tokens)
    n_prompts = corrupted_tokens.shape[0]
    runner = _Runner(model, corrupted_cache, metric.positions)
    length = runner.length
    out = torch.empty(len(head_sets), dtype=runner.dtype)
    order = sorted(range(len(head_sets)), key=lambda i: min(l for l, _ in head_sets[i]))
    sets_per_chunk = max(1, token_budget // (n_prompts * length))
    for first in range(0, len(order), sets_per_chunk):
        ids = order[first:first + sets_per_chunk]
        start_layer = min(l for i in ids for l, _ in head_sets[i])
        n = len(ids)
        prompt = torch.arange(n_prompts).repeat(n)  # row r <-> (set ids[r // n_prompts], prompt r % n_prompts)
        z_patches = {}
        for layer in range(start_layer, cfg.n_layers):
            mask = torch.zeros(n * n_prompts, length, cfg.n_heads, dtype=torch.bool)
            for k, i in enumerate(ids):
                for set_layer, h in head_sets[i]:
                    if set_layer == layer:
                        mask[k * n_prompts:(k + 1) * n_prompts, :, h] = True
            if mask.any():
                z_patches[layer] = (mask, clean_cache[f"blocks.{layer}.attn.hook_z"][prompt, :length])
        resid = corrupted_cache[f"blocks.{start_layer}.hook_resid_pre"][prompt, :length]
        logits = runner.run(start_layer, 0, resid, prompt, z_patches)
        out[ids] = metric.score(logits.view(n, n_prompts, *logits.shape[1:])).cpu()
    return out


@torch.no_grad()
def patch_sweeps(model, corrupted_tokens: torch.Tensor, clean_cache, metrics: Mapping[str, PatchingMetric],
                 sweeps: Sequence[str], corrupted_cache=None) -> dict[tuple[str, str], torch.Tensor]:
    """{(metric name, sweep): `batched_patch(...)`} for every metric and sweep."""
    if corrupted_cache is None:
        _, corrupted_cache = run_cache(model, corrupted_tokens)
    return {(name, sweep): batched_patch(model, corrupted_tokens, clean_cache, metric, sweep, corrupted_cache=corrupted_cache)
            for name, metric in metrics.items() for sweep in sweeps}


# --- pairs of heads -------------------------------------------------------------------------------

ALONE_MAX = 0.05  # a head "does nothing alone" when patching it restores less than this
TOGETHER_MIN = 0.10  # a pair "matters" when patching both restores at least this


def head_pair_interactions(single: torch.Tensor, head_pairs: Sequence[tuple[tuple[int, int], tuple[int, int]]],
                           pair_values: Sequence[float], alone_max: float = ALONE_MAX,
                           together_min: float = TOGETHER_MIN) -> pd.DataFrame:
    """One row per pair of heads ((l, h), (l', h')), in the order of `head_pairs`: each head's
    patching effect alone (from `single` [n_layers, n_heads], the `z_all_pos` sweep), the pair's
    (`pair_values`, from `patch_head_sets`), interaction = pair - alone_a - alone_b, and
    only_together: each head alone restores < `alone_max` but the pair restores >= `together_min`."""
    names = head_labels(*single.shape)
    n_heads = single.shape[1]
    rows = []
    for ((la, ha), (lb, hb)), pair in zip(head_pairs, pair_values, strict=True):
        alone_a, alone_b = single[la, ha].item(), single[lb, hb].item()
        rows.append({"a": names[la * n_heads + ha], "b": names[lb * n_heads + hb], "alone_a": alone_a, "alone_b": alone_b,
                     "pair": pair, "interaction": pair - alone_a - alone_b,
                     "only_together": max(alone_a, alone_b) < alone_max and pair >= together_min})
    return pd.DataFrame(rows)


def interaction_matrix(head_pairs: Sequence[tuple[tuple[int, int], tuple[int, int]]], interaction: Sequence[float],
                       n_layers: int, n_heads: int) -> np.ndarray:
    """[n_layers * n_heads, n_layers * n_heads] symmetric matrix of the pairs' interactions
    (head (l, h) is row l * n_heads + h; pairs not given and the diagonal are 0)."""
    matrix = np.zeros((n_layers * n_heads, n_layers * n_heads))
    for ((la, ha), (lb, hb)), value in zip(head_pairs, interaction, strict=True):
        i, j = la * n_heads + ha, lb * n_heads + hb
        matrix[i, j] = matrix[j, i] = value
    return matrix


# --- the TransformerLens reference --------------------------------------------------------------

def tl_patch(model, corrupted_tokens: torch.Tensor, clean_cache, metric: Callable, sweep: str = "z_by_pos") -> torch.Tensor:
    """The same sweep with `transformer_lens.patching` (one forward pass per patched index)."""
    from transformer_lens import patching

    fn = {
        "resid_pre": patching.get_act_patch_resid_pre,
        "attn_out": patching.get_act_patch_attn_out,
        "mlp_out": patching.get_act_patch_mlp_out,
        "z_by_pos": patching.get_act_patch_attn_head_out_by_pos,
        "z_all_pos": patching.get_act_patch_attn_head_out_all_pos,
    }[sweep]
    quiet = lambda it, *args, **kwargs: it  # noqa: E731  (no progress bar per sweep)
    original, patching.tqdm = patching.tqdm, quiet
    try:
        with torch.no_grad():
            return fn(model, corrupted_tokens.to(model.cfg.device), clean_cache, metric).cpu()
    finally:
        patching.tqdm = original


# --- attribution patching -------------------------------------------------------------------------

_ATTR_HOOK = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
              "z_by_pos": "attn.hook_z", "z_all_pos": "attn.hook_z"}


def attribution_patch(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric: PatchingMetric,
                      sweeps: Sequence[str] = SWEEPS) -> dict[str, torch.Tensor]:
    """Attribution patching: for each sweep, (clean - corrupted activation) . grad of the
    normalized metric on the corrupted run, summed over the patched index's slice; shapes as in
    `batched_patch`. Two forward passes and one backward pass for all sweeps together."""
    cfg = model.cfg
    names = sorted({f"blocks.{l}.{_ATTR_HOOK[s]}" for s in sweeps for l in range(cfg.n_layers)})
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens.to(cfg.device), names_filter=lambda n: n in names)
    acts: dict[str, torch.Tensor] = {}

    def keep(act, hook):
        act.retain_grad()
        acts[hook.name] = act

    was_grad = torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    try:
        logits = model.run_with_hooks(corrupted_tokens.to(cfg.device), fwd_hooks=[(n, keep) for n in names])
        model.zero_grad(set_to_none=True)
        metric(logits).backward()
    finally:
        torch.set_grad_enabled(was_grad)
    out = {}
    for s in sweeps:
        per_layer = []
        for l in range(cfg.n_layers):
            name = f"blocks.{l}.{_ATTR_HOOK[s]}"
            a = acts[name]
            contrib = (clean_cache[name] - a.detach()) * a.grad  # [batch, pos, (head,) d]
            contrib = contrib.sum(-1).sum(0)  # [pos, (head)]
            per_layer.append(contrib.sum(0) if s == "z_all_pos" else contrib)
        out[s] = torch.stack(per_layer).detach().cpu()
    model.zero_grad(set_to_none=True)
    return out


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two same-shape tensors (flattened)."""
    x, y = x.flatten().double(), y.flatten().double()
    x, y = x - x.mean(), y - y.mean()
    denom = (x.norm() * y.norm()).item()
    return float("nan") if denom == 0 else ((x * y).sum().item() / denom)


# --- path patching ----------------------------------------------------------------------------------
#
# Path patching (Wang et al. 2022, IOI) measures one *edge* sender -> receiver: on the clean run,
# the sender's output is replaced by its corrupted-run value *only on its path into the receiver*.
# Every component except the receiver is frozen at its clean output, so the receiver's input is
# the clean residual stream plus the sender's output change, delta_S = sender(corrupted) -
# sender(clean); the receiver's output is recomputed from that input; then the model runs on from
# the receiver with everything downstream free (as in TransformerLens' and ARENA's path patching).
# The receiver "logits" takes delta_S straight into the final residual stream (the direct path).
#
# Batched like `batched_patch`: one row per (edge, prompt); the sender deltas are computed once;
# a receiver setter turns (clean stream + delta_S) into the receiver's output change delta_R for a
# whole chunk of rows at once, and the rows run on from the receiver's layer with `_Runner` on the
# clean cache. A sender is a head or an MLP (`mechlab.analysis.ablation.Component`), a receiver a
# head, an MLP or `LOGITS`. `path_patch_reference` is the slow, hook-based version the tests
# compare with.

LOGITS = "logits"  # the receiver "the unembedding": the sender's direct effect on the logits
RECEIVER_INPUTS = ("q", "k", "v")


def _component_delta(clean_cache, corrupted_cache, model, sender, length: int) -> torch.Tensor:
    """[n_prompts, length, d_model]: sender(corrupted) - sender(clean), the sender's output change
    as written into the residual stream."""
    if sender.kind == "head":
        name = f"blocks.{sender.layer}.attn.hook_z"
        dz = corrupted_cache[name][:, :length, sender.head] - clean_cache[name][:, :length, sender.head]
        return dz @ model.blocks[sender.layer].attn.W_O[sender.head]
    if sender.kind == "mlp":
        name = f"blocks.{sender.layer}.hook_mlp_out"
        return corrupted_cache[name][:, :length] - clean_cache[name][:, :length]
    raise ValueError(f"a path-patching sender is a head or an MLP, not {sender.kind!r}")


def head_receiver_setter(runner: _Runner, clean_cache, layer: int, prompt, head, delta: torch.Tensor,
                         receiver_input: str = "qkv") -> torch.Tensor:
    """[R, length, d_model]: the change of head `head` [R]'s output when the inputs named in
    `receiver_input` (some of "q", "k", "v") read the clean stream entering `layer` plus `delta`
    [R, length, d_model] and the others the clean stream."""
    attn, ln, length = runner.model.blocks[layer].attn, runner.model.blocks[layer].ln1, runner.length
    clean = ln(clean_cache[f"blocks.{layer}.hook_resid_pre"][prompt, :length])
    patched = ln(clean_cache[f"blocks.{layer}.hook_resid_pre"][prompt, :length] + delta)
    x = {name: patched if name in receiver_input else clean for name in RECEIVER_INPUTS}
    q = torch.einsum("rpd,rde->rpe", x["q"], attn.W_Q[head]) + attn.b_Q[head][:, None]
    k = torch.einsum("rpd,rde->rpe", x["k"], attn.W_K[head]) + attn.b_K[head][:, None]
    v = torch.einsum("rpd,rde->rpe", x["v"], attn.W_V[head]) + attn.b_V[head][:, None]
    scores = torch.einsum("rqe,rke->rqk", q, k) / attn.attn_scale
    future = torch.ones(length, length, dtype=torch.bool, device=scores.device).triu(1)
    z = torch.einsum("rqk,rke->rqe", F.softmax(scores.masked_fill(future, float("-inf")), dim=-1), v)
    dz = z - clean_cache[f"blocks.{layer}.attn.hook_z"][prompt, :length, head]
    return torch.einsum("rpe,red->rpd", dz, attn.W_O[head])


def mlp_receiver_setter(runner: _Runner, clean_cache, layer: int, prompt, head, delta: torch.Tensor,
                        receiver_input: str = "qkv") -> torch.Tensor:
    """[R, length, d_model]: the change of MLP `layer`'s output when it reads the clean stream
    after the layer's attention plus `delta` [R, length, d_model] (`head`, `receiver_input` unused)."""
    block, length = runner.model.blocks[layer], runner.length
    resid_mid = clean_cache[f"blocks.{layer}.hook_resid_mid"][prompt, :length] + delta
    return block.mlp(block.ln2(resid_mid)) - clean_cache[f"blocks.{layer}.hook_mlp_out"][prompt, :length]


def _run_on_from_receiver(runner: _Runner, clean_cache, kind: str, layer: int, prompt, delta_r: torch.Tensor) -> torch.Tensor:
    """Logits [R, len(positions), d_vocab] when the receiver's output changes by `delta_r`."""
    if kind == "head":
        return runner.run_from_mid(layer, clean_cache[f"blocks.{layer}.hook_resid_mid"][prompt, :runner.length] + delta_r, prompt)
    return runner.run(layer + 1, 0, clean_cache[f"blocks.{layer}.hook_resid_post"][prompt, :runner.length] + delta_r, prompt)


# The receiver setters, specialised by kind (one more setter per receiver kind, as for the sweeps).
PATH_RECEIVER_SETTERS: dict[str, Callable[..., torch.Tensor]] = {"head": head_receiver_setter, "mlp": mlp_receiver_setter}


def _check_edge(sender, receiver) -> None:
    for node in (sender, receiver):
        if node != LOGITS and node.positions is not None:
            raise ValueError(f"path patching takes whole components; {node.name} is restricted to some positions")
    if receiver == LOGITS:
        return
    after = receiver.layer > sender.layer or (receiver.kind == "mlp" and sender.kind == "head" and receiver.layer == sender.layer)
    if not after:
        raise ValueError(f"receiver {receiver.name} does not read {sender.name}'s output (it is not downstream)")


@torch.no_grad()
def path_patch(model, clean_cache, corrupted_cache, metric: PatchingMetric, edges: Sequence[tuple],
               receiver_input: str = "qkv", token_budget: int = DEFAULT_TOKEN_BUDGET) -> torch.Tensor:
    """[len(edges)]: the metric (0 = corrupted, 1 = clean) after path-patching each edge
    (sender, receiver) on the clean run (see the section comment); 1 - value is the share of
    the clean-vs-corrupted difference that flows along the edge. A head receiver reads the
    patched stream through the inputs in `receiver_input` ("qkv", "q", "k", "v", "qk", ...).
    Caches from `run_cache` on the clean and corrupted inputs."""
    if not receiver_input or set(receiver_input) - set(RECEIVER_INPUTS):
        raise ValueError(f"receiver_input must be made of {RECEIVER_INPUTS}, got {receiver_input!r}")
    for sender, receiver in edges:
        _check_edge(sender, receiver)
    runner = _Runner(model, clean_cache, metric.positions)
    length, n_prompts = runner.length, clean_cache["blocks.0.hook_resid_pre"].shape[0]
    deltas = {s: _component_delta(clean_cache, corrupted_cache, model, s, length) for s in {s for s, _ in edges}}
    out = torch.empty(len(edges), dtype=runner.dtype)
    groups: dict[tuple, list[int]] = {}
    for i, (_, receiver) in enumerate(edges):
        groups.setdefault((LOGITS, 0) if receiver == LOGITS else (receiver.kind, receiver.layer), []).append(i)
    per_chunk = max(1, token_budget // (n_prompts * length))
    for (kind, layer), ids in groups.items():
        for first in range(0, len(ids), per_chunk):
            chunk = ids[first:first + per_chunk]
            prompt = torch.arange(n_prompts).repeat(len(chunk))  # row r <-> (edge chunk[r // n_prompts], prompt r % n_prompts)
            delta = torch.cat([deltas[edges[i][0]] for i in chunk])
            if kind == LOGITS:
                resid = runner.final[prompt][:, metric.positions] + delta[:, metric.positions]
                logits = model.unembed(model.ln_final(resid))
            else:
                head = torch.tensor([edges[i][1].head or 0 for i in chunk]).repeat_interleave(n_prompts)
                delta_r = PATH_RECEIVER_SETTERS[kind](runner, clean_cache, layer, prompt, head, delta, receiver_input)
                logits = _run_on_from_receiver(runner, clean_cache, kind, layer, prompt, delta_r)
            out[chunk] = metric.score(logits.view(len(chunk), n_prompts, *logits.shape[1:])).cpu()
    return out


@torch.no_grad()
def path_patch_reference(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric: Callable,
                         sender, receiver, receiver_input: str = "qkv") -> float:
    """`path_patch` for one edge, the slow and obvious way with hooks (three full forward passes):
    (1) cache both runs; (2) run the clean input with every head and MLP output frozen at its clean
    value, the sender's at its corrupted value and the receiver free, and keep the receiver's
    inputs (q/k/v), output (MLP) or logits (`LOGITS`); (3) run the clean input with only those
    patched in."""
    _check_edge(sender, receiver)
    clean_tokens, corrupted_tokens = clean_tokens.to(model.cfg.device), corrupted_tokens.to(model.cfg.device)
    _, clean = model.run_with_cache(clean_tokens)
    _, corrupted = model.run_with_cache(corrupted_tokens)

    def freeze(act, hook):
        is_z = hook.name.endswith("hook_z")
        here = ("head" if is_z else "mlp", hook.layer())
        out = clean[hook.name].clone()
        if receiver != LOGITS and (receiver.kind, receiver.layer) == here:  # the receiver stays free
            if is_z:
                out[:, :, receiver.head] = act[:, :, receiver.head]
            else:
                out = act.clone()
        if (sender.kind, sender.layer) == here:
            if is_z:
                out[:, :, sender.head] = corrupted[hook.name][:, :, sender.head]
            else:
                out = corrupted[hook.name].clone()
        return out

    frozen = [(f"blocks.{l}.{name}", freeze) for l in range(model.cfg.n_layers) for name in ("attn.hook_z", "hook_mlp_out")]
    if receiver == LOGITS:
        return float(metric(model.run_with_hooks(clean_tokens, fwd_hooks=frozen)))
    names = [f"blocks.{receiver.layer}.attn.hook_{x}" for x in receiver_input] if receiver.kind == "head" \
        else [f"blocks.{receiver.layer}.hook_mlp_out"]
    with model.hooks(fwd_hooks=frozen):
        _, kept = model.run_with_cache(clean_tokens, names_filter=lambda n: n in names)

    def patch(act, hook):
        act = act.clone()
        if receiver.kind == "head":
            act[:, :, receiver.head] = kept[hook.name][:, :, receiver.head]
            return act
        return kept[hook.name]

    return float(metric(model.run_with_hooks(clean_tokens, fwd_hooks=[(n, patch) for n in names])))
