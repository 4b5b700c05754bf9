"""Batched activation patching against transformer_lens.patching, head-pair interactions and
attribution patching, on the tiny random model (float64, so the comparison tests the algorithm,
not rounding). The clean/corrupted inputs are arithmetic pairs (`mechlab.arithmetic.pairs`)."""
import numpy as np
import pytest
import torch

from mechlab.analysis.patching import (
    SWEEPS,
    _plan_chunks,
    attribution_patch,
    batched_patch,
    correlation,
    head_pair_interactions,
    interaction_matrix,
    patch_head_sets,
    patch_sweeps,
    run_cache,
    tl_patch,
)
from mechlab.arithmetic.pairs import ExactMatchMetric, make_metrics, make_pairs
from mechlab.arithmetic.tokenizer import EQUALS_POS


@pytest.fixture
def setup(tiny_model, mixed_rows):
    pairs = make_pairs(mixed_rows, "a", 3, seed=1)
    metric = make_metrics(tiny_model, pairs)["logit_diff"]
    _, clean_cache = run_cache(tiny_model, pairs.clean_tokens)
    _, corrupted_cache = run_cache(tiny_model, pairs.corrupted_tokens)
    return pairs, metric, clean_cache, corrupted_cache


@pytest.mark.parametrize("sweep", SWEEPS)
def test_batched_matches_transformer_lens(tiny_model, setup, sweep):
    pairs, metric, clean_cache, corrupted_cache = setup
    ref = tl_patch(tiny_model, pairs.corrupted_tokens, clean_cache, metric, sweep)
    got = batched_patch(tiny_model, pairs.corrupted_tokens, clean_cache, metric, sweep, corrupted_cache=corrupted_cache)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-5
    if sweep != "z_by_pos":
        return
    # many small chunks give the same answer
    small = batched_patch(tiny_model, pairs.corrupted_tokens, clean_cache, metric, sweep, token_budget=1, overhead_tokens=0)
    assert (small - ref).abs().max().item() < 1e-5


def test_batched_matches_with_exact_match_metric(tiny_model, setup):
    pairs, _, clean_cache, _ = setup
    metric = ExactMatchMetric(pairs.clean_answers)
    metric.clean_value, metric.corrupted_value = 1.0, 0.0  # random weights: raw units
    ref = tl_patch(tiny_model, pairs.corrupted_tokens, clean_cache, metric, "z_by_pos")
    got = batched_patch(tiny_model, pairs.corrupted_tokens, clean_cache, metric, "z_by_pos")
    assert torch.equal(ref.double(), got.double())


def test_unknown_sweep_is_refused(tiny_model, setup):
    pairs, metric, clean_cache, _ = setup
    with pytest.raises(ValueError, match="unknown sweep 'z_by_layer'"):
        batched_patch(tiny_model, pairs.corrupted_tokens, clean_cache, metric, "z_by_layer")


def test_patch_sweeps_runs_every_metric_and_sweep(tiny_model, setup):
    pairs, metric, clean_cache, corrupted_cache = setup
    found = patch_sweeps(tiny_model, pairs.corrupted_tokens, clean_cache, {"ld": metric}, ["resid_pre", "z_all_pos"])
    assert set(found) == {("ld", "resid_pre"), ("ld", "z_all_pos")}
    alone = batched_patch(tiny_model, pairs.corrupted_tokens, clean_cache, metric, "z_all_pos",
                          corrupted_cache=corrupted_cache)
    assert torch.equal(found["ld", "z_all_pos"], alone)


def test_head_sets_match_hooked_run(tiny_model, setup):
    pairs, metric, clean_cache, _ = setup
    sets = [[(0, 1)], [(0, 0), (1, 1)], [(1, 0), (1, 1)]]
    got = patch_head_sets(tiny_model, pairs.corrupted_tokens, clean_cache, metric, sets)
    for k, heads in enumerate(sets):
        def hook(z, hook, heads=heads):
            layer = int(hook.name.split(".")[1])
            z = z.clone()
            for l, h in heads:
                if l == layer:
                    z[:, :, h] = clean_cache[hook.name][:, :, h]
            return z
        names = {f"blocks.{l}.attn.hook_z" for l, _ in heads}
        with torch.no_grad():
            logits = tiny_model.run_with_hooks(pairs.corrupted_tokens, fwd_hooks=[(n, hook) for n in names])
        assert got[k].item() == pytest.approx(metric(logits).item(), abs=1e-5)
    single = batched_patch(tiny_model, pairs.corrupted_tokens, clean_cache, metric, "z_all_pos")
    assert got[0].item() == pytest.approx(single[0, 1].item(), abs=1e-5)


def test_head_pair_interactions_by_hand():
    single = torch.tensor([[0.01, 0.30],   # L0H0 does nothing alone, L0H1 a lot
                           [0.02, 0.04]])  # L1H0, L1H1 little
    head_pairs = [((0, 0), (1, 0)), ((0, 1), (1, 1)), ((1, 0), (1, 1))]
    table = head_pair_interactions(single, head_pairs, [0.50, 0.40, 0.08])
    assert list(table["a"]) == ["L0H0", "L0H1", "L1H0"] and list(table["b"]) == ["L1H0", "L1H1", "L1H1"]
    assert table["interaction"].tolist() == pytest.approx([0.47, 0.06, 0.02])
    # only together: both alone < 0.05 and the pair >= 0.10; L0H1 alone is too strong, the last pair too weak
    assert table["only_together"].tolist() == [True, False, False]
    assert head_pair_interactions(single, head_pairs, [0.50, 0.40, 0.08], together_min=0.05)["only_together"].tolist() \
        == [True, False, True]


def test_interaction_matrix_is_symmetric_with_heads_in_label_order():
    matrix = interaction_matrix([((0, 0), (1, 1)), ((0, 1), (1, 0))], [0.5, -0.2], n_layers=2, n_heads=2)
    expected = np.zeros((4, 4))
    expected[0, 3] = expected[3, 0] = 0.5
    expected[1, 2] = expected[2, 1] = -0.2
    assert np.array_equal(matrix, expected)


def test_plan_chunks_covers_everything_within_budget():
    starts = sorted([p for p in range(22) for _ in range(8)])
    for rows_per_patch, budget in [(1, 10_000), (64, 20_000), (512, 1)]:
        chunks = _plan_chunks(starts, rows_per_patch, 22, budget, 256)
        assert chunks[0][0] == 0 and chunks[-1][1] == len(starts)
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        for i, j in chunks:
            assert j - i == 1 or (j - i) * rows_per_patch * (22 - starts[i]) <= budget


def test_attribution_patching(tiny_model, setup):
    pairs, metric, clean_cache, _ = setup
    attr = attribution_patch(tiny_model, pairs.clean_tokens, pairs.corrupted_tokens, metric)
    assert set(attr) == set(SWEEPS)
    assert torch.allclose(attr["z_all_pos"], attr["z_by_pos"].sum(1), atol=1e-9)
    exact = batched_patch(tiny_model, pairs.corrupted_tokens, clean_cache, metric, "z_by_pos")
    assert attr["z_by_pos"].shape == exact.shape
    # the linear estimate of a tiny model is close to exact patching
    assert correlation(attr["z_by_pos"], exact) > 0.5
    # positions after the metric's position have exactly zero gradient
    assert attr["resid_pre"][:, EQUALS_POS + 1:].abs().max().item() == 0.0


def test_correlation():
    x = torch.arange(10.0)
    assert correlation(x, 2 * x + 1) == pytest.approx(1.0)
    assert correlation(x, -x) == pytest.approx(-1.0)


# --- path patching ----------------------------------------------------------------------------------

def _all_edges(cfg):
    from mechlab.analysis.ablation import heads, mlps
    from mechlab.analysis.patching import LOGITS
    components = heads(cfg) + mlps(cfg)
    edges = [(s, LOGITS) for s in components]
    for s in components:
        for r in components:
            if r.layer > s.layer or (r.kind == "mlp" and s.kind == "head" and r.layer == s.layer):
                edges.append((s, r))
    return edges


@pytest.mark.parametrize("receiver_input", ["qkv", "k"])
def test_path_patching_matches_the_naive_reference(tiny_model, setup, receiver_input):
    from mechlab.analysis.patching import path_patch, path_patch_reference
    pairs, metric, clean_cache, corrupted_cache = setup
    edges = _all_edges(tiny_model.cfg)  # every head/MLP -> every later head/MLP and the logits
    got = path_patch(tiny_model, clean_cache, corrupted_cache, metric, edges, receiver_input=receiver_input,
                     token_budget=200)  # small chunks: several per receiver layer
    ref = torch.tensor([path_patch_reference(tiny_model, pairs.clean_tokens, pairs.corrupted_tokens, metric, s, r,
                                             receiver_input) for s, r in edges], dtype=got.dtype)
    assert (got - ref).abs().max().item() < 1e-5
    assert (1 - ref).abs().max().item() > 1e-3  # the edges carry something: the comparison is not 1 == 1


def test_path_patching_to_the_logits_is_the_direct_effect(tiny_model, setup):
    from mechlab.analysis.ablation import Component
    from mechlab.analysis.patching import LOGITS, path_patch
    pairs, metric, clean_cache, corrupted_cache = setup
    mlp = Component("mlp", 1)
    got = path_patch(tiny_model, clean_cache, corrupted_cache, metric, [(mlp, LOGITS)])
    name = "blocks.1.hook_mlp_out"
    final = clean_cache["blocks.1.hook_resid_post"] + corrupted_cache[name] - clean_cache[name]
    by_hand = metric(tiny_model.unembed(tiny_model.ln_final(final))).item()
    assert got[0].item() == pytest.approx(by_hand, abs=1e-9)


def test_path_patching_refuses_an_edge_that_runs_backwards(tiny_model, setup):
    from mechlab.analysis.ablation import Component
    from mechlab.analysis.patching import path_patch
    _, metric, clean_cache, corrupted_cache = setup
    with pytest.raises(ValueError, match="MLP0 does not read L1H0's output"):
        path_patch(tiny_model, clean_cache, corrupted_cache, metric, [(Component("head", 1, 0), Component("mlp", 0))])
    with pytest.raises(ValueError, match="receiver_input must be made of"):
        path_patch(tiny_model, clean_cache, corrupted_cache, metric, [], receiver_input="x")
