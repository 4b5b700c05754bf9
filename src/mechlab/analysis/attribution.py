"""Direct logit attribution (DLA) and the logit lens for the answer digits.

Answer position i (i = 0, 1, 2) is the position that predicts answer digit i: `=` for the first
digit, then the answer digits themselves (teacher-forced input: prompt + true answer).

DLA. The final residual stream is a sum of components: token embedding, position embedding,
every head's output (`cache.stack_head_results`), the attention output biases b_O, and every
MLP's output (`cache.decompose_resid`). With the final LayerNorm's cached scale applied to each
component (`apply_ln=True`: centred, divided by the scale), the logit of token t is exactly

    sum_c  component_c . (w_ln * W_U[:, t])  +  (b_ln . W_U[:, t] + b_U[t])

so each component's term is its direct contribution to that logit (the model's LayerNorm
weights are not folded, hence the explicit w_ln and b_ln; `tests/analysis/test_attribution.py` checks
that the terms add up to the logits). `direct_logit_attribution` returns this for the correct
digit and for the top wrong digit (the highest-logit digit token other than the correct one),
per example and answer position.

Logit lens. `logit_lens` applies the final LayerNorm (with its own statistics) and the unembedding
to the residual stream after the embeddings, after each attention layer and after each MLP
(`cache.accumulated_resid(incl_mid=True)`), and reports the first of those points from which the
correct digit is the top prediction (and stays top through the final output).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from mechlab.arithmetic.tokenizer import ANSWER_START, DIGIT_IDS, EQUALS_POS, MAX_ANSWER_DIGITS, MODEL_INPUT_LEN


def answer_digit_targets(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(digit ids [n, MAX_ANSWER_DIGITS], valid mask [n, MAX_ANSWER_DIGITS]) of the true answers
    in full sequences `tokens` [n, >= ANSWER_START + MAX_ANSWER_DIGITS]."""
    ans = tokens[:, ANSWER_START:ANSWER_START + MAX_ANSWER_DIGITS]
    valid = torch.isin(ans, DIGIT_IDS)
    return ans, valid


def top_wrong_digit(logits_at_answer: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """[n, k] id of the highest-logit digit token other than `correct`. logits: [n, k, d_vocab]."""
    digit_logits = logits_at_answer[..., DIGIT_IDS].clone()
    is_correct = DIGIT_IDS.to(correct.device)[None, None, :] == correct[..., None]
    digit_logits[is_correct] = float("-inf")
    return DIGIT_IDS.to(correct.device)[digit_logits.argmax(-1)]


@dataclass
class DLAResult:
    labels: list[str]           # component names: embed, pos_embed, L0H0 ..., attn_bias, MLP0 ...
    correct: torch.Tensor       # [n, n_components, MAX_ANSWER_DIGITS] contribution to the correct digit's logit
    wrong: torch.Tensor         # [n, n_components, MAX_ANSWER_DIGITS] ... to the top wrong digit's logit
    constant_correct: torch.Tensor  # [n, MAX_ANSWER_DIGITS] LayerNorm bias + unembedding bias terms
    constant_wrong: torch.Tensor
    correct_ids: torch.Tensor   # [n, MAX_ANSWER_DIGITS]
    wrong_ids: torch.Tensor
    valid: torch.Tensor         # [n, MAX_ANSWER_DIGITS] bool: the answer has this digit
    logits: torch.Tensor        # [n, MAX_ANSWER_DIGITS, d_vocab] the model's logits there

    @property
    def diff(self) -> torch.Tensor:
        """Contribution to logit(correct) - logit(top wrong)."""
        return self.correct - self.wrong

    def table(self, rows: list[dict] | None = None, what: str = "diff") -> pd.DataFrame:
        """Long table: one row per (example, answer position, component) with value (NaN-free:
        positions the answer does not have are dropped) and the example's bucket."""
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


@torch.no_grad()
def direct_logit_attribution(model, tokens: torch.Tensor, batch_size: int = 256) -> DLAResult:
    """DLA of every component to the correct and the top wrong digit at each answer position.
    `tokens`: full sequences (prompt + answer), e.g. `ArithmeticSplit.tokens`."""
    correct_ids, valid = answer_digit_targets(tokens)
    k = MAX_ANSWER_DIGITS
    positions = list(range(EQUALS_POS, EQUALS_POS + k))
    parts = {key: [] for key in ("correct", "wrong", "cc", "cw", "wrong_ids", "logits")}
    labels = None
    n_layers = model.cfg.n_layers
    for s in range(0, len(tokens), batch_size):
        chunk = tokens[s:s + batch_size, :MODEL_INPUT_LEN].to(model.cfg.device)
        cid = correct_ids[s:s + batch_size].to(model.cfg.device)
        logits, cache = model.run_with_cache(chunk)
        la = logits[:, positions]
        wid = top_wrong_digit(la, cid)
        pos_slice = (EQUALS_POS, EQUALS_POS + k)
        heads, head_labels = cache.stack_head_results(layer=-1, return_labels=True, apply_ln=True, pos_slice=pos_slice)
        rest, rest_labels = cache.decompose_resid(layer=-1, mode="mlp", apply_ln=True, pos_slice=pos_slice,
                                                  return_labels=True)
        b_O = sum(model.blocks[l].attn.b_O for l in range(n_layers)).expand(1, *heads.shape[1:-1], -1)
        bias = cache.apply_ln_to_stack(b_O.clone(), layer=-1, pos_slice=pos_slice)
        # rest = [embed, pos_embed, mlp_out 0, ...]
        stack = torch.cat([rest[:2], heads, bias, rest[2:]])
        if labels is None:
            labels = ["embed", "pos_embed"] + head_labels + ["attn_bias"] + [f"MLP{l}" for l in range(n_layers)]
            assert len(rest_labels) == 2 + n_layers
        for ids, key, ckey in ((cid, "correct", "cc"), (wid, "wrong", "cw")):
            dirs, const = _unembed_dirs(model, ids)  # [n, k, d], [n, k]
            parts[key].append(torch.einsum("cnkd,nkd->nck", stack, dirs).cpu())
            parts[ckey].append(const.cpu())
        parts["wrong_ids"].append(wid.cpu())
        parts["logits"].append(la.cpu())
    cat = {key: torch.cat(v) for key, v in parts.items()}
    return DLAResult(labels, cat["correct"], cat["wrong"], cat["cc"], cat["cw"], correct_ids, cat["wrong_ids"], valid,
                     cat["logits"])


def mean_by_bucket(dla: DLAResult, rows: list[dict], what: str = "diff") -> pd.DataFrame:
    """Mean DLA per (bucket, answer position, component)."""
    df = dla.table(rows, what)
    return df.groupby(["bucket", "answer_pos", "component"], sort=False)["value"].mean().reset_index()


@dataclass
class LogitLensResult:
    labels: list[str]          # residual stream points: embeds, 0_mid, 0_post (after attn 0 / MLP 0), ...
    top_is_correct: torch.Tensor  # [n, n_points, MAX_ANSWER_DIGITS] bool
    correct_logprob: torch.Tensor  # [n, n_points, MAX_ANSWER_DIGITS] log-probability of the correct digit
    first_point: torch.Tensor  # [n, MAX_ANSWER_DIGITS] first point from which the top prediction stays correct (-1: never)
    valid: torch.Tensor

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
def logit_lens(model, tokens: torch.Tensor, batch_size: int = 256) -> LogitLensResult:
    correct_ids, valid = answer_digit_targets(tokens)
    k = MAX_ANSWER_DIGITS
    pos_slice = (EQUALS_POS, EQUALS_POS + k)
    tops, lps = [], []
    labels = None
    for s in range(0, len(tokens), batch_size):
        chunk = tokens[s:s + batch_size, :MODEL_INPUT_LEN].to(model.cfg.device)
        cid = correct_ids[s:s + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(chunk)
        resid, labels = cache.accumulated_resid(layer=None, incl_mid=True, pos_slice=pos_slice, return_labels=True)
        logits = model.unembed(model.ln_final(resid.flatten(0, 1))).view(*resid.shape[:2], k, -1)  # [p, n, k, V]
        logits = logits.movedim(0, 1)  # [n, p, k, V]
        tops.append((logits.argmax(-1) == cid[:, None, :]).cpu())
        lps.append(logits.log_softmax(-1).gather(-1, cid[:, None, :, None].expand(-1, logits.shape[1], -1, 1))[..., 0].cpu())
    top = torch.cat(tops)
    n_points = top.shape[1]
    # first point p such that top is correct at every point >= p
    stays = torch.flip(torch.cumprod(torch.flip(top.int(), dims=[1]), dim=1), dims=[1]).bool()
    first = torch.where(stays.any(1), stays.int().argmax(1), torch.full(stays.shape[::2], -1))
    return LogitLensResult(list(labels), top, torch.cat(lps), first, valid)
