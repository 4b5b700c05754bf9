import dataclasses

import pandas as pd
import pytest
import torch

from mechlab.analysis.attention import attention_patterns
from mechlab.analysis.induction import (
    attention_disagreement,
    composition_baseline,
    composition_scores,
    copying_score,
    detector_scores,
    half_losses,
    head_kinds,
    heads_above,
    heads_of_kind,
    icl_positions,
    in_context_learning_score,
    induction_score,
    jump_step,
    loss_by_position,
    norm_based_attention,
    phase_change_steps,
    prefix_matching_score,
    previous_token_score,
    repeated_random_tokens,
    row_normalised,
    series_measures,
    skip_trigrams,
)
from mechlab.core.model import ModelConfig, build_model

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


def distinct_repeated_tokens(batch: int = 3) -> torch.Tensor:
    """(batch, POS) a sequence of SEQ_LEN distinct tokens, then the same again: each token's only earlier copy is
    the one seq_len back."""
    first = torch.stack([torch.randperm(65, generator=torch.Generator().manual_seed(row))[:SEQ_LEN] for row in range(batch)])
    return torch.cat([first, first], dim=1)


def test_prefix_matching_scores_one_for_an_induction_head_and_zero_for_a_previous_token_head():
    scores = prefix_matching_score(as_model_patterns(induction_pattern(), previous_token_pattern(), uniform_pattern()),
                                   distinct_repeated_tokens())
    assert scores[0, 0].item() == pytest.approx(1.0)
    assert scores[0, 1].item() == pytest.approx(0.0)
    assert 0 < scores[0, 2].item() < 0.15  # one matching key among q + 1


def attn_only(n_layers: int, d_vocab: int = 4, d_model: int = 8, d_head: int = 4, n_heads: int = 2):
    """A tiny attention-only model without LayerNorm whose weights the tests set by hand; W_E embeds token t
    as the unit vector e_t and W_U reads the same dimensions back."""
    model = build_model(ModelConfig(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_head=d_head, d_mlp=None,
                                    d_vocab=d_vocab, n_ctx=16, normalization_type=None), device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[:, :d_vocab] = torch.eye(d_vocab)
        model.W_U[:d_vocab] = torch.eye(d_vocab)
    return model


def selector(rows: range, d_model: int = 8) -> torch.Tensor:
    """(d_model, len(rows)) reads (or, transposed, writes) the residual dimensions `rows`."""
    out = torch.zeros(d_model, len(rows))
    out[list(rows), torch.arange(len(rows))] = 1.0
    return out


def test_copying_score_is_one_for_a_copying_head_and_minus_one_for_an_anti_copying_head():
    model = attn_only(1)
    with torch.no_grad():
        model.blocks[0].attn.W_V[:] = selector(range(4))
        model.blocks[0].attn.W_O[0] = 2.0 * selector(range(4)).T  # raises the logit of the token attended to
        model.blocks[0].attn.W_O[1] = -selector(range(4)).T  # lowers it
    assert copying_score(model)[0].tolist() == pytest.approx([1.0, -1.0])


def test_k_composition_is_high_where_a_layer_1_key_reads_what_a_layer_0_head_writes():
    model = attn_only(2)
    with torch.no_grad():
        model.blocks[0].attn.W_V[0], model.blocks[0].attn.W_O[0] = selector(range(4)), selector(range(4, 8)).T  # writes dims 4-7
        model.blocks[0].attn.W_V[1], model.blocks[0].attn.W_O[1] = selector(range(4)), selector(range(4)).T  # writes dims 0-3
        model.blocks[1].attn.W_Q[:] = selector(range(4, 8))
        model.blocks[1].attn.W_K[0] = selector(range(4, 8))  # keys read dims 4-7
        model.blocks[1].attn.W_K[1] = selector(range(4))  # keys read dims 0-3
    k = composition_scores(model, "k")  # (layer-0 head, layer-1 head)
    assert k.shape == (2, 2)
    assert k[0, 0].item() == pytest.approx(0.5)  # ||OV QK^T|| = 2 over ||OV|| ||QK|| = 2 * 2
    assert k[0, 1].item() == pytest.approx(0.0)
    assert k[1, 0].item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="kind must be"):
        composition_scores(model, "x")


def test_skip_trigrams_are_read_from_the_ov_and_qk_circuits():
    model = attn_only(1, n_heads=1)
    shift = torch.roll(torch.eye(4), 1, dims=1)  # shift[a, a + 1] = 1
    with torch.no_grad():
        model.blocks[0].attn.W_V[0], model.blocks[0].attn.W_O[0] = selector(range(4)), shift @ selector(range(4)).T  # source a raises output a + 1
        model.blocks[0].attn.W_Q[0] = selector(range(4))
        model.blocks[0].attn.W_K[0] = selector(range(4)) @ shift.T @ shift.T  # query b scores key b + 2 highest
    table = skip_trigrams(model, 0, 0, tuple("abcd"), k=4)
    assert set(map(tuple, table[["source", "query", "output"]].values)) == {
        ("a", "c", "b"), ("b", "d", "c"), ("c", "a", "d"), ("d", "b", "a")}
    assert table["ov"].tolist() == pytest.approx([0.75] * 4)
    among = skip_trigrams(model, 0, 0, tuple("abcd"), among=[0, 1, 2])  # d left out: b -> c kept, c's output d gone
    assert ("b", "d", "c") not in set(map(tuple, among[["source", "query", "output"]].values))
    assert set(among["source"]) == {"a", "b", "c"} and "d" not in set(among["output"]) | set(among["query"])


def test_norm_based_attention_weights_each_key_by_the_size_of_its_transformed_value():
    model = attn_only(1, n_heads=2)
    with torch.no_grad():
        torch.manual_seed(0)
        for w in (model.blocks[0].attn.W_Q, model.blocks[0].attn.W_K, model.blocks[0].attn.W_V):
            w.normal_()
        model.blocks[0].attn.W_V[:, :2] = 0.0  # tokens 0 and 1 have no value: what they are attended for adds nothing
        model.blocks[0].attn.W_O[0] = selector(range(4)).T
        model.blocks[0].attn.W_O[1] = 3.0 * selector(range(4)).T
    tokens = torch.tensor([[0, 2, 1, 3, 0, 2]])
    raw = attention_patterns(model, tokens)
    norm = norm_based_attention(model, tokens)
    assert norm.shape == raw.shape
    assert torch.all(norm[..., [0, 2, 4]] == 0) and torch.all(raw[0, 0, :, 4, [0, 2, 4]] > 0)
    attn = model.blocks[0].attn
    for head in range(2):  # by hand: alpha_ij ||x_j W_V W_O|| (no biases, no positions in this model)
        f_norm = (model.W_E[tokens[0]] @ attn.W_V[head] @ attn.W_O[head]).norm(dim=-1)  # (key,)
        assert torch.allclose(norm[0, 0, head], raw[0, 0, head] * f_norm, atol=1e-6)
    assert attention_disagreement(raw, norm).min().item() > 0.1
    assert attention_disagreement(raw, raw).max().item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(row_normalised(norm).sum(-1)[..., 1:], torch.ones(1, 1, 2, 5))  # rows with a value


def test_a_measure_jumps_at_the_first_checkpoint_halfway_to_its_extreme():
    rows = [{"step": s, "rise": r, "fall": f} for s, r, f in [(0, 0.0, 1.0), (100, 0.1, 0.9), (200, 0.6, 0.2), (300, 0.8, 0.1)]]
    assert jump_step(rows, "rise") == 200  # past 0.4
    assert jump_step(rows, "fall", decreasing=True) == 200  # below 0.55
    assert jump_step(rows, "fall", decreasing=True, fraction=0.05) == 100
    assert jump_step([{"step": 0, "flat": 1.0}, {"step": 1, "flat": 1.0}], "flat") is None
    assert jump_step(rows, "rise", min_change=0.9) is None  # a rise of 0.8 is too small to count
    assert jump_step(rows, "rise", min_change=0.5) == 200


def test_phase_change_steps_names_the_measures_that_jump_and_ignores_small_moves():
    measures = pd.DataFrame({"step": [0, 100, 200, 300], "previous_token_score": [0.1, 0.7, 0.7, 0.7], "induction_score": [0.02, 0.03, 0.6, 0.7],
                             "k_composition": [0.10, 0.11, 0.12, 0.11], "icl_score": [0.0, -0.05, -0.4, -0.5]})
    assert phase_change_steps(measures) == {"previous_token_score": 100, "induction_score": 200, "k_composition": None,
                                            "icl_score": 200}


def test_series_measures_and_phase_change_steps_on_a_two_checkpoint_series():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=None, d_vocab=10, n_ctx=16, normalization_type=None)
    series = [(0, build_model(cfg, device="cpu")), (50, build_model(dataclasses.replace(cfg, seed=1), device="cpu"))]
    repeated = repeated_random_tokens(10, SEQ_LEN, batch=2)
    text = torch.randint(0, 10, (2, 16))
    measures = series_measures(series, repeated, SEQ_LEN, text, early=2, late=13)
    assert measures.columns.tolist() == ["step", "previous_token_score", "induction_score", "k_composition", "icl_score"]
    last = series[1][1]
    assert measures.iloc[1]["k_composition"] == pytest.approx(composition_scores(last, "k").max().item())
    assert measures.iloc[1]["icl_score"] == pytest.approx(in_context_learning_score(loss_by_position(last, text), 2, 13))
    assert set(phase_change_steps(measures)) == set(measures.columns) - {"step"}


def test_the_composition_baseline_of_random_heads_is_small_and_shrinks_with_width():
    narrow, wide = composition_baseline(16, 4, n_samples=50), composition_baseline(128, 4, n_samples=50)
    assert 0 < wide < narrow < 0.5


def test_icl_positions_scale_olssons_50th_and_500th_token_to_the_context():
    assert icl_positions(512) == (48, 498)
    assert icl_positions(128) == (10, 123)
    early, late = icl_positions(64)
    assert 0 <= early < late <= 64 - 2  # a position with a loss in a 64-token window


def test_previous_token_score_is_one_for_a_previous_token_head():
    scores = previous_token_score(as_model_patterns(previous_token_pattern(), induction_pattern(), uniform_pattern()))
    assert scores[0, 0].item() == pytest.approx(1.0)
    assert scores[0, 1].item() == pytest.approx(0.0)
    assert 0 < scores[0, 2].item() < 0.5
