"""The toy language models (notebooks 20-21), registered in the one study registry: a 0-layer
(embed -> unembed) model and 1- and 2-layer attention-only transformers, all character-level on
Tiny Shakespeare (`mechlab.toylm.data`), trained by the one loop on `NextTokenTask`.

All use "shortformer" positions (TransformerLens: positional embeddings enter only the
queries and keys, never the residual stream) and no LayerNorm, as in Elhage et al.'s toy models: the
residual stream holds token embeddings and head outputs only, so the 0-layer model is exactly the
bigram table softmax(W_E W_U + b_U) and the attention-only circuits (OV, QK) read off the weights.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mechlab.core.io import write_json_atomic
from mechlab.core.model import ModelConfig, load_checkpoint
from mechlab.core.studies import QUICK_STEPS, Study, register_study
from mechlab.core.train import TrainConfig
from mechlab.toylm.bigram import bigram_counts
from mechlab.toylm.data import SHA256, SHAKESPEARE_VOCAB, load_shakespeare
from mechlab.toylm.task import NextTokenTask

N_EVAL_WINDOWS, QUICK_EVAL_WINDOWS = 128, 8
SAMPLE_CHARS = 1000  # characters of the validation text kept with each export (attention on real text)


def toy_config(n_layers: int, n_heads: int = 4, n_ctx: int = 64, seed: int = 0, d_model: int = 64,
               positional_embedding_type: str = "shortformer") -> ModelConfig:
    """An attention-only (d_mlp None) character model without LayerNorm, heads of 16 dimensions; by default
    64 wide with shortformer positions."""
    return ModelConfig(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_head=16, d_mlp=None,
                       d_vocab=len(SHAKESPEARE_VOCAB), n_ctx=n_ctx, normalization_type=None,
                       positional_embedding_type=positional_embedding_type, vocab=SHAKESPEARE_VOCAB, seed=seed)


@dataclass(frozen=True)
class ToyLMStudy:
    """One toy language model: its config, recipe and batch size, trained on Tiny Shakespeare."""

    name: str
    model_config: ModelConfig
    train_config: TrainConfig
    batch_size: int
    note: str
    n_series: int = 0

    def task(self, quick: bool = False, data_path: Path | None = None, seed: int | None = None) -> NextTokenTask:
        """Next-token prediction on Tiny Shakespeare; `seed` draws the training windows (default the recipe's)."""
        corpus = load_shakespeare(data_path)
        return NextTokenTask(corpus.train, corpus.val, self.model_config.n_ctx, self.batch_size,
                             seed=self.train_config.seed if seed is None else seed,
                             n_eval_windows=QUICK_EVAL_WINDOWS if quick else N_EVAL_WINDOWS)

    def evaluate(self, checkpoint_dir: Path, limit: int | None = None, data_path: Path | None = None) -> dict[str, float]:
        """val_loss and train_loss_eval of the exported model over N_EVAL_WINDOWS (or `limit`) windows."""
        model = load_checkpoint(Path(checkpoint_dir) / "model.pt", expected=self.model_config, device="cpu")
        corpus = load_shakespeare(data_path)
        task = NextTokenTask(corpus.train, corpus.val, self.model_config.n_ctx, self.batch_size,
                             n_eval_windows=limit or N_EVAL_WINDOWS)
        model.eval()
        with torch.no_grad():
            return task.evaluate(model)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_config.to_json(), "train": self.train_config.to_json(),
                "batch_size": self.batch_size, "data_sha256": SHA256, "note": self.note}

    def study(self) -> Study:
        return Study(self.name, self.model_config, self.train_config, make_task=self.task, evaluate=self.evaluate,
                     export_dir=Path("checkpoints") / self.name, quick_steps=QUICK_STEPS, n_series=self.n_series,
                     record=self.to_json, after_export=lambda run_dir, out_dir, quick: export_corpus(out_dir))


def export_corpus(out_dir: Path, data_path: Path | None = None) -> Path:
    """corpus.json beside an export: the train and validation bigram counts and the first SAMPLE_CHARS
    validation characters, so the notebooks run without the Shakespeare file."""
    corpus = load_shakespeare(data_path)
    d_vocab = corpus.d_vocab
    record = {"sha256": SHA256, "vocab": list(corpus.vocab), "n_train": len(corpus.train), "n_val": len(corpus.val),
              "train_bigrams": bigram_counts(corpus.train, d_vocab).tolist(),
              "val_bigrams": bigram_counts(corpus.val, d_vocab).tolist(),
              "val_sample": corpus.decode(corpus.val[:SAMPLE_CHARS])}
    write_json_atomic(Path(out_dir) / "corpus.json", record)
    return Path(out_dir) / "corpus.json"


# 32 windows of 64 characters (2,048 tokens) a step; AdamW with the cosine to 10% of the peak.
TOY_TRAIN = TrainConfig(max_steps=3000, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), warmup_steps=100,
                        schedule="cosine", min_lr_frac=0.1, grad_clip=1.0, eval_every=100, checkpoint_every=250,
                        seed=0)

TOYLM_STUDIES: dict[str, ToyLMStudy] = {s.name: s for s in [
    # The 0-layer model only has to fit a 65 x 65 table: a higher learning rate and no weight decay
    # (which would pull the table towards uniform) reach the bigram floor in 1,500 steps.
    ToyLMStudy("toylm_zero_layer", toy_config(0, n_heads=1),
               dataclasses.replace(TOY_TRAIN, max_steps=1500, lr=1e-2, weight_decay=0.0),
               batch_size=32, note="0 layers (embed -> unembed), d_model 64; AdamW lr 1e-2, no weight decay."),
    ToyLMStudy("toylm_attn_only_1l", toy_config(1), TOY_TRAIN, batch_size=32,
               note="1 attention-only layer, 4 heads of 16, d_model 64, context 64; AdamW lr 1e-3, wd 0.1."),
    # Snapshots every 250 steps, 12 kept in series.pt: the checkpoint series for the induction-head phase change.
    ToyLMStudy("toylm_attn_only_2l", toy_config(2), dataclasses.replace(TOY_TRAIN, snapshot_every=250),
               batch_size=32, n_series=12,
               note="2 attention-only layers, 4 heads of 16 each, d_model 64, context 64; AdamW lr 1e-3, wd 0.1."),
    # The same model with a context of 256 characters (8 windows a step: the same 2,048 tokens), 4,000 steps at
    # lr 2e-3: at context 64 no induction head formed in 3,000 steps, and copying from context pays off only
    # when earlier copies (names in speaker lines, repeated words) fall inside the window.
    ToyLMStudy("toylm_attn_only_2l_ctx256", toy_config(2, n_ctx=256),
               dataclasses.replace(TOY_TRAIN, max_steps=4000, lr=2e-3, snapshot_every=250),
               batch_size=8, n_series=16,
               note="2 attention-only layers, 4 heads of 16 each, d_model 64, context 256; 8 windows a step; "
                    "AdamW lr 2e-3, wd 0.1, 4,000 steps."),
    # Probes for induction heads (scripts/probe_induction.py; measured numbers in its docstring): standard positions,
    # 8 heads of 16 (d_model 128), lr 3e-3 formed none (induction score <= 0.03). lr 1e-2 without weight decay lowers
    # the validation loss by 0.3 nats and, at context 256, grows a layer-0 previous-token head, but still no layer-1
    # induction head; notebook 21 measures both runs' snapshot series.
    ToyLMStudy("toylm_attn_only_2l_lr1e2", toy_config(2, n_ctx=128),
               dataclasses.replace(TOY_TRAIN, max_steps=2000, lr=1e-2, weight_decay=0.0, checkpoint_every=100,
                                   snapshot_every=100),
               batch_size=16, n_series=12,
               note="2 attention-only layers, 4 heads of 16 each, d_model 64, context 128; 16 windows a step; "
                    "AdamW lr 1e-2, no weight decay, 2,000 steps."),
    # The same recipe at context 256 (8 windows a step), 3,000 steps, where more repeated words and names fall inside
    # the window: notebook 21's 2-layer model.
    ToyLMStudy("toylm_attn_only_2l_ctx256_lr1e2", toy_config(2, n_ctx=256),
               dataclasses.replace(TOY_TRAIN, max_steps=3000, lr=1e-2, weight_decay=0.0, snapshot_every=250),
               batch_size=8, n_series=12,
               note="2 attention-only layers, 4 heads of 16 each, d_model 64, context 256; 8 windows a step; "
                    "AdamW lr 1e-2, no weight decay, 3,000 steps."),
]}
for _spec in TOYLM_STUDIES.values():
    register_study(_spec.study())
