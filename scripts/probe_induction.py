"""Short probes for induction heads in 2-layer attention-only models on Tiny Shakespeare: one recipe per call,
trained by the one loop (`mechlab.core.train.train`, no run folder), with the induction measures printed at
every evaluation.

    MECHLAB_SHAKESPEARE=../shared/data/tinyshakespeare.txt PYTHONPATH=src \\
        python scripts/probe_induction.py --positions standard --d-model 128 --heads 8 --ctx 128 --lr 3e-3

Each evaluation prints the validation loss (32 windows), the layer-1 induction scores (ARENA's, on 32 repeated
random sequences of min(30, ctx / 2) characters; uniform attention scores about 0.02 there), the layer-0
previous-token attention on the same sequences, the in-context-learning score (`icl_positions`) and the loss gain
on repeated *validation text* (loss on the first half minus on the repeat). The last line is a JSON summary.

Measured on the project's shared 2-core CPU (one thread, while other jobs ran), November 2026: batch x context =
2,048 tokens a step, warm-up 100 steps, cosine to 10% of lr; "induction" = the highest layer-1 induction score and
"prev-token" = the highest layer-0 previous-token score at the last evaluation (on 32 repeated random sequences;
uniform attention scores about 0.02 on both), "repeat gain" = loss on the first half of repeated validation text
minus on the repeat (positive when the repeat is predicted better):

| positions   | d_model x heads | ctx | lr   | wd  | steps                    | val loss | induction | prev-token | repeat gain |
|-------------|-----------------|-----|------|-----|--------------------------|----------|-----------|------------|-------------|
| standard    | 64 x 4          | 64  | 3e-3 | 0.1 | 1,500                    | 2.151    | 0.011     | n/a        | n/a         |
| standard    | 128 x 8         | 128 | 3e-3 | 0.1 | 1,000 of 2,000 (stopped) | 2.109    | 0.023     | 0.07       | n/a         |
| shortformer | 64 x 4          | 128 | 1e-2 | 0   | 2,000                    | 1.871    | 0.009     | 0.31       | -0.06       |
| shortformer | 128 x 8         | 256 | 1e-2 | 0   | stopped before its first evaluation (about 1 s a step here) |

The last two recipes of `mechlab.toylm.studies` continue this table as registered studies (their numbers from
their committed snapshot series, 128 evaluation windows): `toylm_attn_only_2l_lr1e2` (the third row's recipe:
validation loss 1.908, induction 0.009, prev-token 0.305) and `toylm_attn_only_2l_ctx256_lr1e2` (context 256:
1.861, induction 0.006, prev-token 0.59). The committed `toylm_attn_only_2l` and `_ctx256` (shortformer 64 x 4,
lr 1e-3 / 2e-3, weight decay 0.1) reach 0.025 at most. No probe formed an induction head.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from mechlab.analysis.attention import attention_patterns
from mechlab.analysis.induction import (
    half_losses,
    icl_positions,
    in_context_learning_score,
    induction_score,
    loss_by_position,
    repeated_random_tokens,
)
from mechlab.core.model import build
from mechlab.core.train import train
from mechlab.toylm.data import load_shakespeare
from mechlab.toylm.studies import TOY_TRAIN, toy_config
from mechlab.toylm.task import NextTokenTask


class ProbeTask(NextTokenTask):
    """The next-token task whose evaluation also prints and returns the induction measures."""

    def __init__(self, *args, repeated: torch.Tensor, repeated_text: torch.Tensor, seq_len: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.repeated, self.repeated_text, self.seq_len, self.start = repeated, repeated_text, seq_len, time.time()

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        out = super().evaluate(model)
        patterns = attention_patterns(model, self.repeated)
        scores = induction_score(patterns, self.seq_len)
        previous = patterns[:, 0].diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, -1))
        text_halves = half_losses(model, self.repeated_text, self.seq_len)
        out.update(induction=scores[-1].max().item(), previous_token=previous.max().item(),
                   icl=in_context_learning_score(loss_by_position(model, self.val_windows[:, :-1]), *icl_positions(self.n_ctx)),
                   repeat_gain=text_halves["loss_first_half"] - text_halves["loss_repeated_half"])
        print(f"{time.time() - self.start:5.0f}s val {out['val_loss']:.3f} induction {scores[-1].numpy().round(3)} "
              f"layer-0 prev-token {previous.numpy().round(2)} icl {out['icl']:+.3f} repeat gain {out['repeat_gain']:+.3f}",
              flush=True)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--positions", default="shortformer", choices=["shortformer", "standard"])
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ctx", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--eval-every", type=int, default=250)
    a = p.parse_args()
    torch.set_num_threads(1)
    corpus = load_shakespeare()
    seq_len = min(30, a.ctx // 2)
    starts = torch.linspace(0, len(corpus.val) - seq_len - 1, 32).long()
    text = corpus.val[starts[:, None] + torch.arange(seq_len)]
    task = ProbeTask(corpus.train, corpus.val, a.ctx, 2048 // a.ctx, n_eval_windows=32, seq_len=seq_len,
                     repeated=repeated_random_tokens(corpus.d_vocab, seq_len, 32), repeated_text=torch.cat([text, text], 1))
    model = build(toy_config(2, n_heads=a.heads, n_ctx=a.ctx, d_model=a.d_model, positional_embedding_type=a.positions), "cpu")
    recipe = dataclasses.replace(TOY_TRAIN, max_steps=a.steps, lr=a.lr, weight_decay=a.wd, eval_every=a.eval_every,
                                 checkpoint_every=a.steps)
    result = train(model, task, recipe, None, progress=False)
    last = result.history[-1]
    print(json.dumps({**vars(a), "seconds": round(result.seconds), **{k: last[k] for k in
                      ("val_loss", "induction", "previous_token", "icl", "repeat_gain")}}))


if __name__ == "__main__":
    main()
