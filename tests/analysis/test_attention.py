"""Attention patterns read from any HookedTransformer."""
import torch

from mechlab.analysis.attention import attention_patterns


def test_patterns_are_causal_distributions_and_independent_of_batch_size(tiny_model, tiny_config):
    tokens = torch.randint(0, tiny_config.d_vocab, (5, 7), generator=torch.Generator().manual_seed(0))
    patterns = attention_patterns(tiny_model, tokens)  # [batch, layer, head, dest, src]
    assert patterns.shape == (5, tiny_config.n_layers, tiny_config.n_heads, 7, 7)
    assert torch.allclose(patterns.sum(-1), torch.ones(5, tiny_config.n_layers, tiny_config.n_heads, 7, dtype=patterns.dtype))
    assert patterns.triu(diagonal=1).abs().max().item() == 0.0  # no attention to later positions
    assert torch.allclose(attention_patterns(tiny_model, tokens, batch_size=2), patterns, atol=1e-12)
