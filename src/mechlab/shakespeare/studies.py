"""The Shakespeare GPT studies, registered in the one study registry: nanoGPT's CPU configuration of
its character-level Shakespeare model (README: `python train.py config/train_shakespeare_char.py
--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12
--n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`) as a
`HookedTransformer` from the one factory, trained by the one loop on `toylm.task.NextTokenTask`.

    shakespeare_char_seed0/1/2   4 layers x 4 heads x 128, context 64: three training seeds (CPU, minutes)
    shakespeare_char_gpu         the seed document's 6 layers x 6 heads x 384, context 128 (GPU only)

nanoGPT's recipe, and where ours differs:
* AdamW lr 1e-3, betas (0.9, 0.99), weight decay 0.1, gradient clipping at 1.0, batch 12 windows;
  linear warm-up over 100 iterations, then a cosine to min_lr 1e-4 at iteration 2,000 (`learning_rate`:
  lr * (step + 1) / 100 during the warm-up; nanoGPT's is lr * (it + 1) / 101 in its current train.py).
* nanoGPT decays only the weight matrices and embeddings (not biases and LayerNorm gains); the one loop's
  `make_optimizer` decays every parameter.
* nanoGPT's block: pre-LayerNorm without biases (bias=False), 4 x d_model GELU MLP, dropout 0 here, and
  the unembedding tied to the token embedding. TransformerLens' LayerNorm and linear maps carry biases and
  W_U is a separate matrix, so our model has more parameters (818,241 against nanoGPT's 795,904, which leaves the
  position embedding out, or 804,096 with it).
* nanoGPT evaluates on 20 random batches of 12 x 64 characters every 250 iterations; we evaluate on 128
  fixed, evenly spaced windows of 64 (`toylm.studies.N_EVAL_WINDOWS`) every 250 steps, and `full_val_loss`
  scores the final model on every character of the validation split.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from mechlab.core.io import write_json_atomic
from mechlab.core.model import ModelConfig, load_checkpoint
from mechlab.core.studies import QUICK_SERIES, Study, register_study
from mechlab.core.train import TrainConfig
from mechlab.toylm.data import SHAKESPEARE_VOCAB, export_validation_text, load_shakespeare
from mechlab.toylm.studies import ToyLMStudy, export_corpus
from mechlab.toylm.task import next_token_loss, windows

NANOGPT_CPU_VAL_LOSS = 1.8857  # nanoGPT's own train.py, CPU configuration, on this project's 2-core machine
NANOGPT_CPU_TRAIN_LOSS = 1.7648
NANOGPT_CPU_SECONDS = 129.0  # its wall time there, evaluations included
# nanoGPT's printed count ("0.80M", get_num_params: position embedding left out) for this shape, from its model.py:
# tied token embedding 65 x 128 + 4 blocks x (2 LayerNorm gains 128 + c_attn 128 x 384 + c_proj 128 x 128 + MLP
# 2 x 128 x 512, no biases) + final LayerNorm gain 128 = 795,904.
NANOGPT_CPU_PARAMETERS = 795_904
SEEDS = (0, 1, 2)
SNAPSHOT_EVERY = 100  # weights-only snapshots for the emergence of induction heads
EMERGENCE_POINTS = 21  # snapshots (evenly spaced) scored by `export_emergence`


def gpt_config(n_layers: int = 4, n_heads: int = 4, d_model: int = 128, n_ctx: int = 64, seed: int = 0) -> ModelConfig:
    """A GPT-2-style character model on Tiny Shakespeare: pre-LayerNorm, learned absolute positions, a
    4 x d_model GELU MLP, d_head = d_model / n_heads."""
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
    return ModelConfig(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_head=d_model // n_heads,
                       d_mlp=4 * d_model, d_vocab=len(SHAKESPEARE_VOCAB), n_ctx=n_ctx, act_fn="gelu",
                       normalization_type="LN", positional_embedding_type="standard", vocab=SHAKESPEARE_VOCAB,
                       seed=seed)


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of the `HookedTransformer` `build_model(cfg)` makes, from the config alone: token and
    position embeddings, per layer the Q/K/V/O weights and biases, the MLP and two LayerNorms (gain and
    bias), the final LayerNorm and the (untied) unembedding with its bias."""
    d, v = cfg.d_model, cfg.d_vocab
    attention = 4 * cfg.n_heads * cfg.d_head * d + 3 * cfg.n_heads * cfg.d_head + d
    mlp = 2 * d * cfg.d_mlp + cfg.d_mlp + d if cfg.d_mlp else 0
    norms = 2 * d if cfg.normalization_type == "LN" else 0
    positions = cfg.n_ctx * d if cfg.positional_embedding_type in ("standard", "shortformer") else 0
    return v * d + positions + cfg.n_layers * (attention + mlp + 2 * norms) + norms + d * v + v


# nanoGPT's CPU recipe (module docstring): 2,000 steps of 12 windows, evaluations every 250 like nanoGPT's.
NANOGPT_CPU_TRAIN = TrainConfig(max_steps=2000, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), warmup_steps=100,
                                schedule="cosine", min_lr_frac=0.1, decay_steps=2000, grad_clip=1.0, eval_every=250,
                                checkpoint_every=SNAPSHOT_EVERY, snapshot_every=SNAPSHOT_EVERY, seed=0)
# nanoGPT's default Shakespeare model (6 x 6 x 384, dropout 0.2 there, 0 here) at the seed document's context 128:
# 5,000 steps of 64 windows. For a GPU: on the 2-core CPU one step takes seconds.
GPU_TRAIN = dataclasses.replace(NANOGPT_CPU_TRAIN, max_steps=5000, decay_steps=5000, checkpoint_every=500,
                                snapshot_every=500)


def full_val_loss(model: torch.nn.Module, val: torch.Tensor, n_ctx: int, batch_size: int = 256) -> float:
    """Mean next-token loss over (almost) every character of `val` (n,): consecutive windows of n_ctx + 1
    tokens overlapping by one, so each target but the last few is predicted once, at every context length."""
    n_windows = (len(val) - 1) // n_ctx
    tokens = windows(val, torch.arange(n_windows) * n_ctx, n_ctx)
    device = next(model.parameters()).device
    total = 0.0
    with torch.no_grad():
        for chunk in tokens.split(batch_size):
            total += next_token_loss(model, chunk.to(device)).item() * len(chunk)
    return total / n_windows


def shakespeare_study(spec: ToyLMStudy) -> Study:
    """`spec` for the registry: exported with the corpus record (`toylm.studies.export_corpus`), the loss on
    the whole validation split (final_eval.json, `final_val_loss`) and the emergence series (`export_emergence`)."""
    def after_export(run_dir: Path, out_dir: Path, quick: bool) -> None:
        export_corpus(out_dir)
        export_validation_text(out_dir)
        write_json_atomic(Path(out_dir) / "final_eval.json", {"full_val_loss": final_val_loss(spec, out_dir)})
        from mechlab.shakespeare.findings import export_emergence
        export_emergence(spec, run_dir, out_dir, QUICK_SERIES if quick else EMERGENCE_POINTS)

    return Study(spec.name, spec.model_config, spec.train_config, make_task=spec.task, evaluate=spec.evaluate,
                 export_dir=Path("checkpoints") / spec.name, n_series=spec.n_series, record=spec.to_json,
                 after_export=after_export)


def final_val_loss(spec: ToyLMStudy, checkpoint_dir: Path | None = None, data_path: Path | None = None) -> float:
    """`full_val_loss` of the model exported in `checkpoint_dir` (default checkpoints/<name>)."""
    model = load_checkpoint(Path(checkpoint_dir or Path("checkpoints") / spec.name) / "model.pt",
                            expected=spec.model_config, device="cpu")
    model.eval()
    return full_val_loss(model, load_shakespeare(data_path).val, spec.model_config.n_ctx)


SHAKESPEARE_STUDIES: dict[str, ToyLMStudy] = {s.name: s for s in [
    *[ToyLMStudy(f"shakespeare_char_seed{seed}", gpt_config(seed=seed), dataclasses.replace(NANOGPT_CPU_TRAIN, seed=seed),
                 batch_size=12, note=f"nanoGPT's CPU configuration (4 layers, 4 heads, d_model 128, context 64, batch 12, "
                                     f"2,000 steps, lr 1e-3 cosine to 1e-4, dropout 0); initialisation and batch seed {seed}.")
      for seed in SEEDS],
    ToyLMStudy("shakespeare_char_gpu", gpt_config(n_layers=6, n_heads=6, d_model=384, n_ctx=128), GPU_TRAIN,
               batch_size=64, note="the seed document's 6 layers x 6 heads x 384, context 128 (nanoGPT's default width and "
                                   "depth); 5,000 steps of 64 windows. Train on a GPU."),
]}
for _spec in SHAKESPEARE_STUDIES.values():
    register_study(shakespeare_study(_spec))
