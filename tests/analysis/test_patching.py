"""Batched activation patching against transformer_lens.patching, pairs, metrics, attribution
patching, on a tiny random model (float64, so the comparison tests the algorithm, not rounding)."""
import pytest
import torch

from mechlab.arithmetic.data import read_jsonl
from mechlab.core.model import ModelConfig, build_model
from mechlab.analysis.patching import (SWEEPS, _plan_chunks, attribution_patch, batched_patch, correlation,
                                       patch_head_sets, run_cache, tl_patch)
from mechlab.arithmetic.pairs import ANSWER_POSITIONS, PAIR_KINDS, ExactMatchMetric, LogitDiffMetric, make_metrics, make_pairs
from mechlab.arithmetic.tokenizer import EQUALS_POS

TINY = ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=19, n_ctx=32)


def rows():
    out = []
    for a in (3, 12, 45, 78, 99, 150, 234, 431, 567, 800, 950):
        for b in (5, 30, 55, 103, 313, 640, 999):
            out.append({"a": a, "b": b, "m": 113, "prompt": f"{a} + {b} mod 113 =", "answer": str((a + b) % 113),
                        "bucket": "x"})
    return out


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, device="cpu").to(torch.float64)


@pytest.fixture(scope="module")
def setup(model):
    pairs = make_pairs(rows(), "a", 3, seed=1)
    metric = make_metrics(model, pairs)["logit_diff"]
    _, clean_cache = run_cache(model, pairs.clean_tokens)
    _, corrupted_cache = run_cache(model, pairs.corrupted_tokens)
    return pairs, metric, clean_cache, corrupted_cache


@pytest.mark.parametrize("kind", PAIR_KINDS)
def test_pairs_change_one_variable_and_keep_layout(kind):
    pairs = make_pairs(rows(), kind, 20, seed=0)
    assert len(pairs) > 0
    for c, r in zip(pairs.clean.rows, pairs.corrupted.rows):
        assert c["b"] == r["b"] if kind in ("a", "wrap") else c["a"] == r["a"]
        assert len(str(c["a"])) == len(str(r["a"])) and len(str(c["b"])) == len(str(r["b"]))
        assert len(c["answer"]) == len(r["answer"]) and c["answer"][0] != r["answer"][0]
        k_clean, k_corr = (c["a"] + c["b"]) // 113, (r["a"] + r["b"]) // 113
        if kind == "wrap":
            assert {k_clean, k_corr} == {0, 1}
        else:
            assert k_clean == k_corr
    # same layout: only operand digits differ; the clean answer is appended to both
    same = pairs.clean_tokens == pairs.corrupted_tokens
    assert same[:, EQUALS_POS:].all() and same[:, 0].all()


def test_metrics_are_normalized(model, setup):
    pairs, metric, _, _ = setup
    with torch.no_grad():
        assert metric(model(pairs.clean_tokens)).item() == pytest.approx(1.0)
        assert metric(model(pairs.corrupted_tokens)).item() == pytest.approx(0.0, abs=1e-9)
    em = ExactMatchMetric(pairs.clean_answers)
    perfect = torch.full((len(pairs), 25, 19), -10.0, dtype=torch.float64)
    answers = pairs.clean_answers
    for i, pos in enumerate(ANSWER_POSITIONS):
        perfect[torch.arange(len(pairs)), pos, answers[:, i]] = 10.0
    assert em.raw(perfect[:, ANSWER_POSITIONS]).item() == 1.0


@pytest.mark.parametrize("sweep", SWEEPS)
def test_batched_matches_transformer_lens(model, setup, sweep):
    pairs, metric, clean_cache, corrupted_cache = setup
    ref = tl_patch(model, pairs.corrupted_tokens, clean_cache, metric, sweep)
    got = batched_patch(model, pairs.corrupted_tokens, clean_cache, metric, sweep, corrupted_cache=corrupted_cache)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-5
    if sweep != "z_by_pos":
        return
    # many small chunks give the same answer
    small = batched_patch(model, pairs.corrupted_tokens, clean_cache, metric, sweep, token_budget=1, overhead_tokens=0)
    assert (small - ref).abs().max().item() < 1e-5


def test_batched_matches_with_exact_match_metric(model, setup):
    pairs, _, clean_cache, corrupted_cache = setup
    metric = ExactMatchMetric(pairs.clean_answers)
    metric.clean_value, metric.corrupted_value = 1.0, 0.0  # random weights: raw units
    ref = tl_patch(model, pairs.corrupted_tokens, clean_cache, metric, "z_by_pos")
    got = batched_patch(model, pairs.corrupted_tokens, clean_cache, metric, "z_by_pos")
    assert torch.equal(ref.double(), got.double())


def test_head_sets_match_hooked_run(model, setup):
    pairs, metric, clean_cache, _ = setup
    sets = [[(0, 1)], [(0, 0), (1, 1)], [(1, 0), (1, 1)]]
    got = patch_head_sets(model, pairs.corrupted_tokens, clean_cache, metric, sets)
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
            logits = model.run_with_hooks(pairs.corrupted_tokens, fwd_hooks=[(n, hook) for n in names])
        assert got[k].item() == pytest.approx(metric(logits).item(), abs=1e-5)
    single = batched_patch(model, pairs.corrupted_tokens, clean_cache, metric, "z_all_pos")
    assert got[0].item() == pytest.approx(single[0, 1].item(), abs=1e-5)


def test_plan_chunks_covers_everything_within_budget():
    starts = sorted([p for p in range(22) for _ in range(8)])
    for rows_per_patch, budget in [(1, 10_000), (64, 20_000), (512, 1)]:
        chunks = _plan_chunks(starts, rows_per_patch, 22, budget, 256)
        assert chunks[0][0] == 0 and chunks[-1][1] == len(starts)
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        for i, j in chunks:
            assert j - i == 1 or (j - i) * rows_per_patch * (22 - starts[i]) <= budget


def test_attribution_patching(model, setup):
    pairs, metric, clean_cache, corrupted_cache = setup
    attr = attribution_patch(model, pairs.clean_tokens, pairs.corrupted_tokens, metric)
    assert set(attr) == set(SWEEPS)
    assert torch.allclose(attr["z_all_pos"], attr["z_by_pos"].sum(1), atol=1e-9)
    exact = batched_patch(model, pairs.corrupted_tokens, clean_cache, metric, "z_by_pos")
    assert attr["z_by_pos"].shape == exact.shape
    # patching resid_pre at layer 0 at every position at once = the clean run; the linear
    # estimate of a tiny model is close to exact patching
    assert correlation(attr["z_by_pos"], exact) > 0.5
    # positions after the metric's position have exactly zero gradient
    assert attr["resid_pre"][:, EQUALS_POS + 1:].abs().max().item() == 0.0


def test_correlation():
    x = torch.arange(10.0)
    assert correlation(x, 2 * x + 1) == pytest.approx(1.0)
    assert correlation(x, -x) == pytest.approx(-1.0)
