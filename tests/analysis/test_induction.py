import pytest
import torch

from mechlab.analysis.induction import (
    detector_scores,
    half_losses,
    head_kinds,
    heads_above,
    heads_of_kind,
    in_context_learning_score,
    induction_score,
    loss_by_position,
    repeated_random_tokens,
)

SEQ_LEN = 6
POS = 2 * SEQ_LEN


def induction_pattern() -> torch.Tensor:
    """(pos, pos): from position seq_len - 1 on, all attention on the token after the earlier copy."""
    pattern = torch.eye(POS)
    for q in range(SEQ_LEN - 1, POS):
        pattern[q] = 0
        pattern[q, q - SEQ_LEN + 1] = 1
    return pattern


def previous_token_pattern() -> torch.Tensor:
    pattern = torch.zeros(POS, POS)
    pattern[0, 0] = 1
    pattern[torch.arange(1, POS), torch.arange(POS - 1)] = 1
    return pattern


def uniform_pattern() -> torch.Tensor:
    causal = torch.tril(torch.ones(POS, POS))
    return causal / causal.sum(-1, keepdim=True)


def as_model_patterns(*heads: torch.Tensor, batch: int = 3) -> torch.Tensor:
    """(batch, 1 layer, n_heads, pos, pos)"""
    return torch.stack(heads)[None, None].expand(batch, 1, len(heads), POS, POS)


def test_repeated_tokens_repeat():
    tokens = repeated_random_tokens(65, SEQ_LEN, batch=4, seed=1)
    assert tokens.shape == (4, POS) and torch.equal(tokens[:, :SEQ_LEN], tokens[:, SEQ_LEN:])
    assert torch.equal(tokens, repeated_random_tokens(65, SEQ_LEN, batch=4, seed=1))


def test_induction_score_is_one_for_a_perfect_induction_head_and_near_zero_for_uniform_attention():
    scores = induction_score(as_model_patterns(induction_pattern(), uniform_pattern(), previous_token_pattern()), SEQ_LEN)
    assert scores.shape == (1, 3)
    assert scores[0, 0].item() == pytest.approx(1.0)
    assert scores[0, 1].item() < 0.15  # 1 / (query position + 1), averaged over the diagonal
    assert scores[0, 2].item() == pytest.approx(0.0)


def test_hand_built_heads_are_named_for_their_pattern():
    tokens = repeated_random_tokens(65, SEQ_LEN, batch=3, seed=0)
    patterns = as_model_patterns(induction_pattern(), previous_token_pattern(), uniform_pattern())
    scores = detector_scores(patterns, tokens)
    assert scores["previous_token"][0, 1].item() == pytest.approx((POS - 1) / POS)  # all but row 0's self-attention
    assert head_kinds(scores) == [["induction", "previous_token", "other"]]


def test_half_losses_compare_the_first_and_the_repeated_half(tiny_model):
    tokens = repeated_random_tokens(tiny_model.cfg.d_vocab, SEQ_LEN, batch=2)
    losses = half_losses(tiny_model, tokens, SEQ_LEN)
    per_token = tiny_model(tokens, return_type="loss", loss_per_token=True)
    assert losses["loss_first_half"] == pytest.approx(per_token[:, :SEQ_LEN - 1].mean().item())
    assert losses["loss_repeated_half"] == pytest.approx(per_token[:, SEQ_LEN:].mean().item())


def test_heads_are_picked_by_score_and_by_kind():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.3]])
    assert heads_above(scores) == [(0, 1), (1, 0)]
    assert heads_above(scores, threshold=0.95) == []
    assert heads_of_kind([["previous_token", "other"], ["induction", "previous_token"]], "previous_token") == [(0, 0), (1, 1)]


def test_loss_by_position_averages_each_position_over_the_batch(tiny_model):
    tokens = repeated_random_tokens(tiny_model.cfg.d_vocab, SEQ_LEN, batch=3)
    per_token = tiny_model(tokens, return_type="loss", loss_per_token=True)
    by_position = loss_by_position(tiny_model, tokens)
    assert by_position.shape == (POS - 1,)
    assert by_position[4].item() == pytest.approx(per_token[:, 4].mean().item())


def test_in_context_learning_score_is_late_loss_minus_early_loss():
    losses = torch.tensor([4.0, 3.5, 3.0, 2.0, 1.0])
    assert in_context_learning_score(losses, early=1, late=4) == pytest.approx(1.0 - 3.5)
    batch = torch.stack([losses, losses + 2.0])  # (batch, pos - 1): averaged over the batch first
    assert in_context_learning_score(batch, early=0, late=3) == pytest.approx(2.0 - 4.0)
    with pytest.raises(ValueError, match="early < late"):
        in_context_learning_score(losses, early=3, late=1)
    with pytest.raises(ValueError, match="early < late"):
        in_context_learning_score(losses, early=0, late=5)
