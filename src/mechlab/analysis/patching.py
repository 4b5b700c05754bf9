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
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

SWEEPS = ("resid_pre", "attn_out", "mlp_out", "z_by_pos", "z_all_pos")


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
        self.cc = corrupted_cache
        self.positions = sorted(positions)
        self.T = self.positions[-1] + 1  # nothing after the last metric position matters
        L = self.cfg.n_layers
        self.k = [corrupted_cache[f"blocks.{l}.attn.hook_k"] for l in range(L)]
        self.v = [corrupted_cache[f"blocks.{l}.attn.hook_v"] for l in range(L)]
        self.final = corrupted_cache[f"blocks.{L - 1}.hook_resid_post"]

    def attn(self, l: int, resid: torch.Tensor, p0: int, idx: torch.Tensor, q_rel: list[int] | None,
             z_patch=None) -> torch.Tensor:
        """Attention of layer l for window rows `resid` [R, W, d] starting at absolute position p0.
        Queries only at relative positions `q_rel` (None = all). Returns attn_out [R, Q, d]."""
        blk = self.model.blocks[l]
        a = blk.attn
        x = blk.ln1(resid)
        k_new = torch.einsum("rwd,hde->rwhe", x, a.W_K) + a.b_K
        v_new = torch.einsum("rwd,hde->rwhe", x, a.W_V) + a.b_V
        if p0 > 0:
            k = torch.cat([self.k[l][idx, :p0], k_new], dim=1)
            v = torch.cat([self.v[l][idx, :p0], v_new], dim=1)
        else:
            k, v = k_new, v_new
        xq = x if q_rel is None else x[:, q_rel]
        q = torch.einsum("rqd,hde->rqhe", xq, a.W_Q) + a.b_Q
        scores = torch.einsum("rqhe,rkhe->rhqk", q, k) / a.attn_scale
        q_abs = torch.arange(p0, p0 + resid.shape[1]) if q_rel is None else torch.tensor(q_rel) + p0
        future = torch.arange(k.shape[1])[None, :] > q_abs[:, None]  # [Q, K]
        scores = scores.masked_fill(future.to(scores.device), float("-inf"))
        pattern = F.softmax(scores, dim=-1)
        z = torch.einsum("rhqk,rkhe->rqhe", pattern, v)
        if z_patch is not None:
            mask, clean_z = z_patch  # [R, W, H] bool, [R, W, H, d_head]
            if q_rel is not None:
                mask, clean_z = mask[:, q_rel], clean_z[:, q_rel]
            z = torch.where(mask[..., None], clean_z, z)
        return torch.einsum("rqhe,hed->rqd", z, a.W_O) + a.b_O

    def mlp(self, l: int, resid_mid: torch.Tensor) -> torch.Tensor:
        blk = self.model.blocks[l]
        return resid_mid + blk.mlp(blk.ln2(resid_mid))

    def run(self, start_layer: int, p0: int, resid: torch.Tensor, idx: torch.Tensor, z_patches=None) -> torch.Tensor:
        """resid: [R, T - p0, d], the residual stream entering `start_layer` at positions p0..T-1.
        Returns logits [R, len(positions), d_vocab]."""
        L = self.cfg.n_layers
        q_rel_last = [p - p0 for p in self.positions if p >= p0]
        for l in range(start_layer, L):
            q_rel = q_rel_last if l == L - 1 else None
            zp = None if z_patches is None else z_patches.get(l)
            attn_out = self.attn(l, resid, p0, idx, q_rel, zp)
            resid = resid if q_rel is None else resid[:, q_rel]
            resid = self.mlp(l, resid + attn_out)
        if start_layer == L:
            resid = resid[:, q_rel_last]
        before = [p for p in self.positions if p < p0]
        if before:
            resid = torch.cat([self.final[idx][:, before], resid], dim=1)
        return self.model.unembed(self.model.ln_final(resid))


def _plan_chunks(starts: Sequence[int], rows_per_patch: int, T: int, budget: int, overhead: int) -> list[tuple[int, int]]:
    """Split patches sorted by start position into contiguous chunks [i, j) minimising
    sum(overhead + rows * (T - start_i)) with rows * (T - start_i) <= budget (a chunk of one patch
    is always allowed)."""
    n = len(starts)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):
            tokens = (j - i) * rows_per_patch * (T - starts[i])
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
    if sweep not in SWEEPS:
        raise ValueError(f"unknown sweep {sweep!r}; expected one of {SWEEPS}")
    cfg = model.cfg
    device = cfg.device
    corrupted_tokens = corrupted_tokens.to(device)
    if corrupted_cache is None:
        _, corrupted_cache = run_cache(model, corrupted_tokens)
    B, n_pos = corrupted_tokens.shape
    L, H = cfg.n_layers, cfg.n_heads
    runner = _Runner(model, corrupted_cache, metric.positions)
    T = runner.T
    base = metric.score(runner.model.unembed(runner.model.ln_final(runner.final[:, metric.positions]))).item()
    cc, cl = corrupted_cache, clean_cache
    W_O = [model.blocks[l].attn.W_O for l in range(L)]

    if sweep == "z_all_pos":
        out = torch.full((L, H), base, dtype=cfg.dtype)
        for l in range(L):
            heads = list(range(H))
            per = max(1, token_budget // (B * T))
            for s in range(0, H, per):
                hs = heads[s:s + per]
                idx = torch.arange(B).repeat(len(hs))  # row r <-> (head hs[r // B], prompt r % B)
                h_of_row = torch.tensor(hs).repeat_interleave(B)
                dz = (cl[f"blocks.{l}.attn.hook_z"][idx, :T, h_of_row] - cc[f"blocks.{l}.attn.hook_z"][idx, :T, h_of_row])
                delta = torch.einsum("rte,red->rtd", dz, W_O[l][h_of_row])
                mid = cc[f"blocks.{l}.hook_resid_mid"][idx, :T] + delta
                if l == L - 1:
                    resid = runner.mlp(l, mid[:, runner.positions])
                    logits = model.unembed(model.ln_final(resid))
                else:
                    logits = runner.run(l + 1, 0, runner.mlp(l, mid), idx)
                out[l, hs] = metric.score(logits.view(len(hs), B, *logits.shape[1:])).cpu()
        return out

    n_idx = H if sweep == "z_by_pos" else 1
    shape = (L, n_pos, H) if sweep == "z_by_pos" else (L, n_pos)
    out = torch.full(shape, base, dtype=cfg.dtype)
    for l in range(L):
        patches = [(p, h) for p in range(min(n_pos, T)) for h in range(n_idx)]
        starts = [p for p, _ in patches]
        for i, j in _plan_chunks(starts, B, T, token_budget, overhead_tokens):
            chunk = patches[i:j]
            p0 = chunk[0][0]
            n = len(chunk)
            idx = torch.arange(B, device=device).repeat(n)
            p_of_row = torch.tensor([p for p, _ in chunk], device=device).repeat_interleave(B)
            rows = torch.arange(n * B, device=device)
            if sweep == "resid_pre":
                resid = cc[f"blocks.{l}.hook_resid_pre"][idx, p0:T].clone()
                resid[rows, p_of_row - p0] = cl[f"blocks.{l}.hook_resid_pre"][idx, p_of_row]
                logits = runner.run(l, p0, resid, idx)
            else:
                if sweep == "mlp_out":
                    post = (cc[f"blocks.{l}.hook_resid_post"][idx, p_of_row]
                            + cl[f"blocks.{l}.hook_mlp_out"][idx, p_of_row] - cc[f"blocks.{l}.hook_mlp_out"][idx, p_of_row])
                else:
                    if sweep == "attn_out":
                        delta = cl[f"blocks.{l}.hook_attn_out"][idx, p_of_row] - cc[f"blocks.{l}.hook_attn_out"][idx, p_of_row]
                    else:  # z_by_pos
                        h_of_row = torch.tensor([h for _, h in chunk], device=device).repeat_interleave(B)
                        dz = (cl[f"blocks.{l}.attn.hook_z"][idx, p_of_row, h_of_row]
                              - cc[f"blocks.{l}.attn.hook_z"][idx, p_of_row, h_of_row])
                        delta = torch.einsum("re,red->rd", dz, W_O[l][h_of_row])
                    mid = cc[f"blocks.{l}.hook_resid_mid"][idx, p_of_row] + delta
                    post = runner.mlp(l, mid[:, None])[:, 0]
                resid = cc[f"blocks.{l}.hook_resid_post"][idx, p0:T].clone()
                resid[rows, p_of_row - p0] = post
                logits = runner.run(l + 1, p0, resid, idx)
            scores = metric.score(logits.view(n, B, *logits.shape[1:])).cpu()
            for k, (p, h) in enumerate(chunk):
                if sweep == "z_by_pos":
                    out[l, p, h] = scores[k]
                else:
                    out[l, p] = scores[k]
    return out


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
    B = corrupted_tokens.shape[0]
    runner = _Runner(model, corrupted_cache, metric.positions)
    T = runner.T
    out = torch.empty(len(head_sets), dtype=cfg.dtype)
    order = sorted(range(len(head_sets)), key=lambda i: min(l for l, _ in head_sets[i]))
    per = max(1, token_budget // (B * T))
    for s in range(0, len(order), per):
        ids = order[s:s + per]
        start = min(l for i in ids for l, _ in head_sets[i])
        n = len(ids)
        idx = torch.arange(B).repeat(n)
        z_patches = {}
        for l in range(start, cfg.n_layers):
            mask = torch.zeros(n * B, T, cfg.n_heads, dtype=torch.bool)
            for k, i in enumerate(ids):
                for hl, h in head_sets[i]:
                    if hl == l:
                        mask[k * B:(k + 1) * B, :, h] = True
            if mask.any():
                z_patches[l] = (mask, clean_cache[f"blocks.{l}.attn.hook_z"][idx, :T])
        resid = corrupted_cache[f"blocks.{start}.hook_resid_pre"][idx, :T]
        logits = runner.run(start, 0, resid, idx, z_patches)
        out[ids] = metric.score(logits.view(n, B, *logits.shape[1:])).cpu()
    return out


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
