"""Zero / mean / resample ablation on a tiny random model, scored by any score function; the
backup and group-specific rules on hand-made tables."""
from functools import partial

import pandas as pd
import pytest
import torch

from mechlab.analysis.ablation import (
    Component,
    ablation_hooks,
    ablation_sweep,
    all_components,
    at_positions,
    backup_pairs,
    evaluate_ablated,
    excess_matrix,
    group_ablation,
    group_drops,
    group_specific,
    heads,
    impact_class,
    pairwise_ablation,
    redundant_heads,
    reference_activations,
)
from mechlab.arithmetic.data import bucket_of
from mechlab.arithmetic.task import TOKENIZER, ArithmeticSplit, evaluate_split, greedy_answers
from mechlab.arithmetic.tokenizer import MODEL_INPUT_LEN


def split(pairs):
    return ArithmeticSplit.from_rows([{"a": a, "b": b, "m": 113, "prompt": f"{a} + {b} mod 113 =",
                                       "answer": str((a + b) % 113), "bucket": bucket_of(a, b)} for a, b in pairs])


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    ab = torch.randint(0, 1000, (40, 2), generator=g).tolist()
    return split(ab[:30]), split(ab[30:])


def mlp1_norm(model) -> dict[str, float]:
    """A score that only MLP 1 can change: the size of its output on a fixed input (a hand-made
    'accuracy' of 1.0 while MLP 1 writes anything at all)."""
    tokens = torch.arange(8)[None] % model.cfg.d_vocab
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_mlp_out")
    norm = cache["blocks.1.hook_mlp_out"].norm().item()
    return {"acc": float(norm > 0), "norm": norm}


class OracleGatedByMLP1(torch.nn.Module):
    """The arithmetic oracle's answers while MLP 1 of `base` writes anything on a row, and a wrong
    token everywhere once it writes nothing: a model that gets answers right, and whose score an
    ablation can break. Hooks, config and caching are `base`'s, so every ablation helper accepts it."""

    def __init__(self, base, oracle):
        super().__init__()
        self.base, self.oracle, self.cfg = base, oracle, base.cfg
        self.hooks, self.run_with_cache = base.hooks, base.run_with_cache

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [batch, pos] -> [batch, pos, d_vocab]
        _, cache = self.base.run_with_cache(tokens, names_filter="blocks.1.hook_mlp_out")
        writes = cache["blocks.1.hook_mlp_out"].flatten(1).norm(dim=1) > 0  # [batch]
        right = self.oracle(tokens)
        return torch.where(writes[:, None, None], right, right.roll(1, dims=-1))  # rolled: every argmax is wrong


@pytest.fixture
def gated(tiny_model, arithmetic_oracle):
    """Right on every row with (a + b) % 3 != 0 until MLP 1 is silenced."""
    return OracleGatedByMLP1(tiny_model, arithmetic_oracle(wrong=lambda a, b, m: (a + b) % 3 == 0))


def test_components(tiny_config):
    comps = all_components(tiny_config)
    assert [c.name for c in comps] == ["L0H0", "L0H1", "L1H0", "L1H1", "MLP0", "MLP1", "layer0", "layer1"]
    assert Component("layer", 1).hook_names() == ["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]


def test_hooks_set_the_right_values(tiny_model, data):
    test, ref_split = data
    ref = reference_activations(tiny_model, ref_split.tokens[:, :MODEL_INPUT_LEN])
    tokens = test.tokens[:, :MODEL_INPUT_LEN]
    comp = Component("head", 1, 0)
    for method in ("zero", "mean", "resample"):
        seen = {}

        def grab(z, hook):
            seen["z"] = z.clone()

        hooks = ablation_hooks([comp], method, ref) + [("blocks.1.attn.hook_z", grab)]
        with torch.no_grad():
            tiny_model.run_with_hooks(tokens, fwd_hooks=hooks)
        z = seen["z"]
        if method == "zero":
            assert (z[:, :, 0] == 0).all()
        elif method == "mean":
            assert torch.allclose(z[:, :, 0], ref["blocks.1.attn.hook_z"].mean(0)[:, 0].expand_as(z[:, :, 0]))
        else:  # every row is some reference row's value
            r = ref["blocks.1.attn.hook_z"][:, :, 0]
            assert all(any(torch.equal(row, rr) for rr in r) for row in z[:, :, 0])
        _, cache = tiny_model.run_with_cache(tokens)
        assert torch.allclose(z[:, :, 1], cache["blocks.1.attn.hook_z"][:, :, 1])  # other head untouched


def test_a_component_at_some_positions_is_ablated_there_only(tiny_model, data):
    test, _ = data
    tokens = test.tokens[:, :MODEL_INPUT_LEN]
    head_at_end = at_positions(Component("head", 1, 0), [MODEL_INPUT_LEN - 2, MODEL_INPUT_LEN - 1], "end")
    mlp_at_start = at_positions(Component("mlp", 0), [0, 1], "start")
    assert (head_at_end.name, mlp_at_start.name) == ("L1H0@end", "MLP0@start")
    with torch.no_grad():
        _, clean = tiny_model.run_with_cache(tokens)
        with tiny_model.hooks(fwd_hooks=ablation_hooks([head_at_end], "zero")):
            _, cache = tiny_model.run_with_cache(tokens)
        z, clean_z = cache["blocks.1.attn.hook_z"], clean["blocks.1.attn.hook_z"]
        assert (z[:, -2:, 0] == 0).all() and not (clean_z[:, -2:, 0] == 0).all()
        assert torch.equal(z[:, :-2, 0], clean_z[:, :-2, 0]) and torch.equal(z[:, :, 1], clean_z[:, :, 1])
        with tiny_model.hooks(fwd_hooks=ablation_hooks([mlp_at_start], "zero")):
            _, cache = tiny_model.run_with_cache(tokens)
        mlp, clean_mlp = cache["blocks.0.hook_mlp_out"], clean["blocks.0.hook_mlp_out"]
        assert (mlp[:, :2] == 0).all() and torch.equal(mlp[:, 2:], clean_mlp[:, 2:])


def test_whole_layer_zero_ablation_removes_its_writes(tiny_model, data):
    test, _ = data
    tokens = test.tokens[:, :MODEL_INPUT_LEN]
    with torch.no_grad(), tiny_model.hooks(fwd_hooks=ablation_hooks([Component("layer", 1)], "zero")):
        logits, cache = tiny_model.run_with_cache(tokens)
    assert torch.allclose(cache["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_pre"])


def test_resample_is_the_same_on_every_call(tiny_model, data):
    test, ref_split = data
    ref = reference_activations(tiny_model, ref_split.tokens[:, :MODEL_INPUT_LEN])
    score = partial(evaluate_split, split=test, prefix="ablated")
    a = evaluate_ablated(tiny_model, score, [Component("mlp", 0)], "resample", ref, seed=3)
    b = evaluate_ablated(tiny_model, score, [Component("mlp", 0)], "resample", ref, seed=3)
    assert a == b
    other_seed = evaluate_ablated(tiny_model, score, [Component("mlp", 0)], "resample", ref, seed=4)
    assert other_seed["ablated_loss"] != a["ablated_loss"]  # the seed picks the draws


def decoded_exact(model, split: ArithmeticSplit) -> dict[str, float]:
    """Exact match of every row decoded token by token (greedy), as a score."""
    decoded = [TOKENIZER.decode_answer(ids) for ids in greedy_answers(model, split.prompts)]
    return {"ablated_exact": sum(d == r["answer"] for d, r in zip(decoded, split.rows)) / len(split)}


def test_teacher_forced_and_greedy_exact_match_agree_under_ablation(gated, data):
    test, ref_split = data
    ref = reference_activations(gated.base, ref_split.tokens[:, :MODEL_INPUT_LEN])
    expected = sum((r["a"] + r["b"]) % 3 != 0 for r in test.rows) / len(test)
    both = (partial(evaluate_split, split=test, prefix="ablated"), partial(decoded_exact, split=test))
    for components, exact in (([Component("mlp", 0)], expected), ([Component("mlp", 1)], expected), ([], expected)):
        for method in ("resample", "mean"):
            scores = [evaluate_ablated(gated, score, components, method, ref, seed=3)["ablated_exact"] for score in both]
            assert scores == [pytest.approx(exact)] * 2
    silenced = [evaluate_ablated(gated, score, [Component("mlp", 1)], "zero")["ablated_exact"] for score in both]
    assert silenced == [0.0, 0.0] and 0.5 < expected < 0.9


def test_the_score_sees_the_ablation_and_only_while_it_lasts(tiny_model):
    assert mlp1_norm(tiny_model)["acc"] == 1.0
    assert evaluate_ablated(tiny_model, mlp1_norm, [Component("mlp", 0)], "zero")["acc"] == 1.0
    assert evaluate_ablated(tiny_model, mlp1_norm, [Component("mlp", 1)], "zero")["acc"] == 0.0
    assert evaluate_ablated(tiny_model, mlp1_norm, [Component("layer", 1)], "zero")["acc"] == 0.0
    assert mlp1_norm(tiny_model)["acc"] == 1.0  # hooks removed afterwards


def test_sweep_drops_exactly_where_the_score_depends(tiny_model):
    comps = all_components(tiny_model.cfg)
    df = ablation_sweep(tiny_model, mlp1_norm, comps, ("zero",), metric="acc").set_index("component")
    assert df.loc["none", "score"] == 1.0 and df.loc["none", "drop"] == 0.0
    assert df.loc["MLP1", "drop"] == 1.0 and df.loc["layer1", "drop"] == 1.0
    assert df.loc["MLP1", "impact"] == "critical"
    others = df.drop(index=["none", "MLP1", "layer1"])
    assert (others["drop"] == 0.0).all() and (others["impact"] == "redundant").all()


def test_a_task_object_is_a_score(tiny_model):
    class Task:
        def evaluate(self, model):
            return mlp1_norm(model)

    groups = {"MLP 1": [Component("mlp", 1)], "both heads of layer 0": heads(tiny_model.cfg)[:2]}
    table = group_ablation(tiny_model, Task(), groups, "zero", metric="acc")
    assert table["ablated"].tolist() == ["MLP 1", "both heads of layer 0"] and table["n"].tolist() == [1, 2]
    assert table["score"].tolist() == [0.0, 1.0] and table["relative drop"].tolist() == [1.0, 0.0]


def test_sweep_and_pairs_on_the_arithmetic_score(gated, tiny_config, data):
    test, ref_split = data
    ref = reference_activations(gated.base, ref_split.tokens[:, :MODEL_INPUT_LEN])
    score = partial(evaluate_split, split=test, prefix="ablated")
    buckets = sorted({r["bucket"] for r in test.rows})
    components = heads(tiny_config) + [Component("mlp", 0), Component("mlp", 1)]
    df = ablation_sweep(gated, score, components, ("zero", "mean"), ref, metric="ablated_exact",
                        groups=buckets).set_index(["component", "method"])
    assert len(df) == 1 + 2 * 6
    base = evaluate_split(gated, test, "x")
    assert 0.5 < base["x_exact"] < 0.9  # partly right: a score that can drop, and not only to itself
    assert df.loc[("none", "none"), "score"] == base["x_exact"]
    assert [c for c in df.columns if c.startswith("drop/")] == [f"drop/{b}" for b in buckets]
    for bucket in buckets:
        assert df.loc[("none", "none"), f"score/{bucket}"] == base[f"x_exact/{bucket}"]
        assert df.loc[("MLP1", "zero"), f"drop/{bucket}"] == base[f"x_exact/{bucket}"]  # silenced: all wrong
    assert df.loc[("MLP1", "zero"), "drop"] == base["x_exact"] and df.loc[("MLP1", "zero"), "impact"] == "critical"
    others = df.drop(index=[("none", "none"), ("MLP1", "zero")])
    assert (others["drop"] == 0.0).all()  # MLP 1 still writes something under every other ablation
    pairs = pairwise_ablation(gated, score, [Component("head", 0, 0), Component("mlp", 1)], "zero", ref,
                              metric="ablated_exact")
    assert pairs[["drop_a", "drop_b", "drop_pair"]].iloc[0].tolist() == [0.0, base["x_exact"], base["x_exact"]]
    assert pairs["excess"].iloc[0] == 0.0


def test_impact_class():
    assert impact_class(0.5) == "critical" and impact_class(0.05) == "moderate" and impact_class(0.0) == "redundant"


def test_unknown_method_and_missing_reference():
    with pytest.raises(ValueError, match="unknown method 'noise'"):
        ablation_hooks([Component("mlp", 0)], "noise")
    with pytest.raises(ValueError, match="mean ablation needs reference activations"):
        ablation_hooks([Component("mlp", 0)], "mean")


def sweep_table():
    """A hand-made mean-ablation sweep of four heads over two buckets."""
    return pd.DataFrame([
        {"component": "L0H0", "kind": "head", "method": "mean", "drop": 0.30, "impact": "critical",
         "drop/wrap": 0.30, "drop/no_wrap": 0.30},
        {"component": "L0H1", "kind": "head", "method": "mean", "drop": 0.015, "impact": "redundant",
         "drop/wrap": 0.05, "drop/no_wrap": 0.0},
        {"component": "L1H0", "kind": "head", "method": "mean", "drop": 0.001, "impact": "redundant",
         "drop/wrap": 0.0, "drop/no_wrap": 0.0},
        {"component": "L1H1", "kind": "head", "method": "mean", "drop": 0.01, "impact": "redundant",
         "drop/wrap": 0.019, "drop/no_wrap": 0.0},
        {"component": "MLP0", "kind": "mlp", "method": "mean", "drop": 0.0, "impact": "redundant",
         "drop/wrap": 0.5, "drop/no_wrap": 0.0},
    ])


def test_redundant_heads_largest_drop_first():
    assert redundant_heads(sweep_table(), "mean", max_heads=2) == ["L0H1", "L1H1"]
    assert redundant_heads(sweep_table(), "zero", max_heads=2) == []


def test_group_specific_heads_hurt_a_group_but_spare_the_control():
    drops = group_drops(sweep_table(), ["wrap", "no_wrap"])
    assert list(drops.index) == ["L0H0", "L0H1", "L1H0", "L1H1"]  # heads only
    assert group_specific(drops, ["wrap"], control="no_wrap", threshold=0.02) == ["L0H1"]
    assert group_specific(drops, ["wrap"], control="no_wrap", threshold=0.01) == ["L0H1", "L1H1"]


def test_backup_pairs_and_excess_matrix():
    pairs = pd.DataFrame([{"a": "L0H1", "b": "L1H0", "excess": 0.01}, {"a": "L0H1", "b": "L1H1", "excess": 0.03},
                          {"a": "L1H0", "b": "L1H1", "excess": 0.20}])
    backups = backup_pairs(pairs, threshold=0.02)
    assert list(zip(backups["a"], backups["b"])) == [("L1H0", "L1H1"), ("L0H1", "L1H1")]
    mat = excess_matrix(pairs, ["L0H1", "L1H0", "L1H1"])
    assert mat.loc["L1H1", "L1H0"] == mat.loc["L1H0", "L1H1"] == 0.20 and mat.loc["L0H1", "L0H1"] == 0.0


def test_mean_ablation_of_a_head_works_in_an_attention_only_model():
    from mechlab.analysis.ablation import Component, evaluate_ablated, reference_activations
    from mechlab.core.model import ModelConfig, build_model

    model = build_model(ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=None, d_vocab=7, n_ctx=8), "cpu")
    tokens = torch.randint(0, 7, (4, 8))
    reference = reference_activations(model, tokens)
    assert "blocks.1.attn.hook_z" in reference and not any("mlp" in name for name in reference)
    logits = lambda m: {"logit": m(tokens)[0, -1, 0].item()}  # noqa: E731
    ablated = evaluate_ablated(model, logits, [Component("head", 1, 0)], "mean", reference)
    assert ablated["logit"] != logits(model)["logit"]
