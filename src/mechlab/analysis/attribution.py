"""Direct logit attribution (DLA) and the logit lens of any `HookedTransformer`, at given
positions and for given target tokens.

Callers say where to read and what the right answer is: `positions` (the same k positions in
every row) and `target_ids` [n, k] (the correct token at each of them). For the arithmetic task
these are the answer positions (position i predicts answer digit i: `=` for the first digit,
then the answer digits themselves, teacher-forced) and the answer's digit ids; for a
single-token task, the last position and the label.

DLA. The final residual stream is a sum of components: token embedding, position embedding,
every head's output (`cache.stack_head_results`), the attention output biases b_O, and every
MLP's output (`cache.decompose_resid`). With the final LayerNorm's cached scale applied to each
component (`apply_ln=True`: centred, divided by the scale), the logit of token t is exactly

    sum_c  component_c . (w_ln * W_U[:, t])  +  (b_ln . W_U[:, t] + b_U[t])

so each component's term is its direct contribution to that logit (the model's LayerNorm
weights are not folded, hence the explicit w_ln and b_ln; `tests/analysis/test_attribution.py` checks
that the terms add up to the logits). `direct_logit_attribution` returns this for the target
and for the top wrong token (the highest-logit token among `candidate_ids` other than the
target), per example and position. `valid` [n, k] marks the positions the tables keep (e.g. for
the arithmetic task, the answer digits a short answer has; default: every position).

Logit lens. `logit_lens` applies the final LayerNorm (with its own statistics) and the unembedding
to the residual stream after the embeddings, after each attention layer and after each MLP
(`cache.accumulated_resid(incl_mid=True)`), and reports the first of those points from which the
target is the top prediction (among `candidate_ids`, default every token) and stays top through
the final output.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

HEAD_LABEL = re.compile(r"L(\d+)H(\d+)")  # TransformerLens' head labels, e.g. "L2H5"


def top_other(logits: torch.Tensor, target: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
    """[n, k] id of the highest-logit token among `candidate_ids` other than `target` [n, k].
    logits: [n, k, d_vocab]."""
    candidate_ids = candidate_ids.to(target.device)
    candidate_logits = logits[..., candidate_ids].clone()
    is_target = candidate_ids[None, None, :] == target[..., None]
    candidate_logits[is_target] = float("-inf")
    return candidate_ids[candidate_logits.argmax(-1)]


@dataclass
class DLAResult:
    labels: list[str]           # component names: embed, pos_embed (if in the stream), L0H0 ..., attn_bias, MLP0 ...
    correct: torch.Tensor       # [n, n_components, k] contribution to the target's logit
    wrong: torch.Tensor         # [n, n_components, k] ... to the top wrong token's logit
    constant_correct: torch.Tensor  # [n, k] LayerNorm bias + unembedding bias terms
    constant_wrong: torch.Tensor
    correct_ids: torch.Tensor   # [n, k] the targets
    wrong_ids: torch.Tensor
    valid: torch.Tensor         # [n, k] bool: positions the tables keep (e.g. the answer has this digit)
    logits: torch.Tensor        # [n, k, d_vocab] the model's logits there

    @property
    def diff(self) -> torch.Tensor:
        """Contribution to logit(correct) - logit(top wrong)."""
        return self.correct - self.wrong

    def table(self, rows: list[dict] | None = None, what: str = "diff") -> pd.DataFrame:
        """Long table: one row per (example, answer position, component) with value (NaN-free:
        invalid positions are dropped) and the example's bucket."""
        values = {"diff": self.diff, "correct": self.correct, "wrong": self.wrong}[what]
        n, c, k = values.shape
        ex, comp, pos = torch.meshgrid(torch.arange(n), torch.arange(c), torch.arange(k), indexing="ij")
        keep = self.valid[:, None, :].expand(n, c, k)
        df = pd.DataFrame({"example": ex[keep].numpy(), "component": [self.labels[i] for i in comp[keep].tolist()],
                           "answer_pos": pos[keep].numpy(), "value": values[keep].numpy()})
        if rows is not None:
            df["bucket"] = [rows[i]["bucket"] for i in df["example"]]
        return df


def _unembed_dirs(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(effective unembedding directions [..., d_model], constants [...]) for token ids."""
    W_U, b_U = model.W_U, model.b_U
    if model.cfg.normalization_type in ("LN", "LNPre") and hasattr(model.ln_final, "w"):
        w, b = model.ln_final.w, model.ln_final.b
    else:
        w, b = torch.ones(model.cfg.d_model, device=W_U.device), torch.zeros(model.cfg.d_model, device=W_U.device)
    dirs = (w[:, None] * W_U)[:, ids].movedim(0, -1)
    const = (b @ W_U)[ids] + b_U[ids]
    return dirs, const


def _pos_slice(positions: Sequence[int]) -> tuple[int, int] | list[int]:
    """TransformerLens' pos_slice for `positions`: a (start, stop) range when they are consecutive."""
    positions = list(positions)
    if positions == list(range(positions[0], positions[0] + len(positions))) and positions[0] >= 0:
        return (positions[0], positions[0] + len(positions))
    return positions


@torch.no_grad()
def direct_logit_attribution(model, tokens: torch.Tensor, positions: Sequence[int], target_ids: torch.Tensor,
                             candidate_ids: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                             batch_size: int = 256) -> DLAResult:
    """DLA of every component to the target and the top wrong token at each of `positions`.
    tokens: model inputs [n, pos]; target_ids: [n, k] with k = len(positions); candidate_ids:
    the tokens the top wrong one is chosen from (default: every token); valid: [n, k] positions
    the tables keep (default: all)."""
    candidates = torch.arange(model.cfg.d_vocab) if candidate_ids is None else candidate_ids
    valid = torch.ones_like(target_ids, dtype=torch.bool) if valid is None else valid
    pos_slice = _pos_slice(positions)
    positions = list(positions)
    parts = {key: [] for key in ("correct", "wrong", "cc", "cw", "wrong_ids", "logits")}
    labels = None
    n_layers = model.cfg.n_layers
    for s in range(0, len(tokens), batch_size):
        chunk = tokens[s:s + batch_size].to(model.cfg.device)
        cid = target_ids[s:s + batch_size].to(model.cfg.device)
        logits, cache = model.run_with_cache(chunk)
        la = logits[:, positions]  # [n, k, d_vocab]
        wid = top_other(la, cid, candidates)
        heads, head_labels = cache.stack_head_results(layer=-1, return_labels=True, apply_ln=True, pos_slice=pos_slice)
        rest, rest_labels = cache.decompose_resid(layer=-1, mode="mlp", apply_ln=True, pos_slice=pos_slice,
                                                  return_labels=True)
        b_O = sum(model.blocks[l].attn.b_O for l in range(n_layers)).expand(1, *heads.shape[1:-1], -1)
        bias = cache.apply_ln_to_stack(b_O.clone(), layer=-1, pos_slice=pos_slice)
        # rest = [embed, pos_embed (absent when positions enter only queries and keys), mlp_out 0, ... (absent
        # in an attention-only model)]
        if "pos_embed" in rest_labels and model.cfg.positional_embedding_type != "standard":  # not in the stream
            keep = [i for i, label in enumerate(rest_labels) if label != "pos_embed"]
            rest, rest_labels = rest[keep], [rest_labels[i] for i in keep]
        n_embeds = sum(not label.endswith("mlp_out") for label in rest_labels)
        stack = torch.cat([rest[:n_embeds], heads, bias, rest[n_embeds:]])  # [n_components, n, k, d_model]
        if labels is None:
            labels = (list(rest_labels[:n_embeds]) + head_labels + ["attn_bias"]
                      + [f"MLP{l}" for l in range(len(rest_labels) - n_embeds)])
        for ids, key, ckey in ((cid, "correct", "cc"), (wid, "wrong", "cw")):
            dirs, const = _unembed_dirs(model, ids)  # [n, k, d], [n, k]
            parts[key].append(torch.einsum("cnkd,nkd->nck", stack, dirs).cpu())
            parts[ckey].append(const.cpu())
        parts["wrong_ids"].append(wid.cpu())
        parts["logits"].append(la.cpu())
    cat = {key: torch.cat(v) for key, v in parts.items()}
    return DLAResult(labels, cat["correct"], cat["wrong"], cat["cc"], cat["cw"], target_ids, cat["wrong_ids"], valid,
                     cat["logits"])


def mean_by_bucket(dla: DLAResult, rows: list[dict], what: str = "diff") -> pd.DataFrame:
    """Mean DLA per (bucket, answer position, component)."""
    df = dla.table(rows, what)
    return df.groupby(["bucket", "answer_pos", "component"], sort=False)["value"].mean().reset_index()


def head_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a DLA table whose component is a head (named like "L2H5"), with its layer."""
    heads = table[table["component"].str.fullmatch(HEAD_LABEL)]
    return heads.assign(layer=heads["component"].str.extract(HEAD_LABEL)[0].astype(int))


def head_mean_abs_by_layer(table: pd.DataFrame) -> pd.Series:
    """Mean |value| of the head rows of a DLA table, per layer."""
    return head_rows(table).groupby("layer")["value"].apply(lambda v: v.abs().mean())


@dataclass
class LogitLensResult:
    labels: list[str]          # residual stream points: embeds, 0_mid, 0_post (after attn 0 / MLP 0), ...
    top_is_correct: torch.Tensor  # [n, n_points, k] bool
    correct_logprob: torch.Tensor  # [n, n_points, k] log-probability of the target (over the whole vocabulary)
    first_point: torch.Tensor  # [n, k] first point from which the top prediction stays correct (-1: never)
    valid: torch.Tensor        # [n, k] bool
    top: torch.Tensor | None = None  # [n, n_points, k] id of the top prediction (among the candidates)

    def accuracy(self) -> pd.Series:
        """Share of rows whose target is the top prediction at each point (position 0), by label."""
        return pd.Series(self.top_is_correct[:, :, 0].float().mean(0).tolist(), index=self.labels)

    def first_point_table(self, rows: list[dict] | None = None) -> pd.DataFrame:
        n, k = self.first_point.shape
        ex, pos = torch.meshgrid(torch.arange(n), torch.arange(k), indexing="ij")
        keep = self.valid
        fp = self.first_point[keep]
        df = pd.DataFrame({"example": ex[keep].numpy(), "answer_pos": pos[keep].numpy(), "first_point": fp.numpy(),
                           "first_label": [self.labels[i] if i >= 0 else "never" for i in fp.tolist()]})
        if rows is not None:
            df["bucket"] = [rows[i]["bucket"] for i in df["example"]]
        return df


@torch.no_grad()
def logit_lens(model, tokens: torch.Tensor, positions: Sequence[int], target_ids: torch.Tensor,
               candidate_ids: torch.Tensor | None = None, valid: torch.Tensor | None = None,
               batch_size: int = 256) -> LogitLensResult:
    """The logit lens at `positions` of model inputs `tokens` [n, pos] for targets [n, k]: is the
    target the top prediction among `candidate_ids` (default: every token) at each point of the
    residual stream? valid: [n, k] positions the tables keep (default: all)."""
    valid = torch.ones_like(target_ids, dtype=torch.bool) if valid is None else valid
    k = len(positions)
    pos_slice = _pos_slice(positions)
    tops, lps, top_ids = [], [], []
    labels = None
    for s in range(0, len(tokens), batch_size):
        chunk = tokens[s:s + batch_size].to(model.cfg.device)
        cid = target_ids[s:s + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(chunk)
        resid, labels = cache.accumulated_resid(layer=None, incl_mid=True, pos_slice=pos_slice, return_labels=True)
        final_ln = getattr(model, "ln_final", torch.nn.Identity())  # a model without LayerNorm has none
        logits = model.unembed(final_ln(resid.flatten(0, 1))).view(*resid.shape[:2], k, -1)  # [p, n, k, V]
        logits = logits.movedim(0, 1)  # [n, p, k, V]
        if candidate_ids is None:
            top = logits.argmax(-1)
        else:
            top = candidate_ids.to(logits.device)[logits[..., candidate_ids].argmax(-1)]
        top_ids.append(top.cpu())
        tops.append((top == cid[:, None, :]).cpu())
        lps.append(logits.log_softmax(-1).gather(-1, cid[:, None, :, None].expand(-1, logits.shape[1], -1, 1))[..., 0].cpu())
    top = torch.cat(tops)
    # first point p such that top is correct at every point >= p
    stays = torch.flip(torch.cumprod(torch.flip(top.int(), dims=[1]), dim=1), dims=[1]).bool()
    first = torch.where(stays.any(1), stays.int().argmax(1), torch.full(stays.shape[::2], -1))
    return LogitLensResult(list(labels), top, torch.cat(lps), first, valid, torch.cat(top_ids))


def point_names(labels: Sequence[str]) -> list[str]:
    """Readable names of logit-lens points (TransformerLens' `accumulated_resid` labels): "0_pre" ->
    "embeddings", "L_mid" -> "layer L attention", "L_pre" -> "layer L-1 MLP", "final_post" -> the
    last layer's MLP (each point is read after that sublayer)."""
    names = []
    for label in labels:
        if label == "final_post":
            last = max(int(x.split("_")[0]) for x in labels if x != "final_post")
            names.append(f"layer {last} MLP")
            continue
        layer, where = label.split("_")
        layer = int(layer)
        names.append("embeddings" if (layer, where) == (0, "pre") else
                     f"layer {layer} attention" if where == "mid" else f"layer {layer - 1} MLP")
    return names


def top_correct_by(lens: LogitLensResult, groups: Sequence[str]) -> pd.DataFrame:
    """Share of valid rows whose target is the top prediction, per (position, group, lens point).
    groups: [n] the group of each row (e.g. its bucket). Columns: answer_pos, group, point,
    top_is_correct; positions and groups with no valid row are left out."""
    groups = list(groups)
    out = []
    for k in range(lens.valid.shape[1]):
        valid = lens.valid[:, k]
        if valid.sum() == 0:
            continue
        for g in sorted(set(groups)):
            mask = valid & torch.tensor([x == g for x in groups])
            if mask.sum() == 0:
                continue
            top = lens.top_is_correct[mask][:, :, k].float().mean(0)
            out += [{"answer_pos": k, "group": g, "point": lens.labels[p], "top_is_correct": top[p].item()}
                    for p in range(len(lens.labels))]
    return pd.DataFrame(out)


def median_first_point(first_point: Sequence[int], labels: Sequence[str], min_share: float = 0.0,
                       never: str = "never") -> str:
    """Label of the median first point (`LogitLensResult.first_point`, -1 = never) among the rows
    that reach one, or `never` when none do or fewer than `min_share` of the rows do."""
    first_point = pd.Series(first_point)
    reached = first_point[first_point >= 0]
    if len(reached) == 0 or len(reached) < min_share * len(first_point):
        return never
    return labels[int(reached.median())]


def confidence_by_point(lens: LogitLensResult) -> pd.Series:
    """Mean probability of the target at each logit-lens point (over rows and positions), by label."""
    return pd.Series(lens.correct_logprob.exp().mean(dim=(0, 2)).tolist(), index=lens.labels)


def first_confident_point(lens: LogitLensResult, threshold: float = 0.5, never: str = "never") -> str:
    """Label of the first logit-lens point where the mean probability of the target exceeds `threshold`
    (the seed document's convergence point at 0.5), or `never`."""
    confidence = confidence_by_point(lens)
    above = confidence[confidence > threshold]
    return str(above.index[0]) if len(above) else never
