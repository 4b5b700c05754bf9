"""Attention patterns of any `HookedTransformer`."""
from __future__ import annotations

import torch


@torch.no_grad()
def attention_patterns(model, tokens: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """[batch, n_layers, n_heads, pos, pos] attention patterns of `model` on `tokens`."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    out = []
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk.to(model.cfg.device), names_filter=lambda n: n in names)
        out.append(torch.stack([cache[n] for n in names], dim=1).cpu())
    return torch.cat(out)
