"""Circuits on the tiny float64 model: running a circuit = mean-ablating everything outside it."""
import pytest
import torch

from mechlab.analysis.ablation import Component, evaluate_ablated, heads, mlps, reference_activations
from mechlab.analysis.circuit import (
    circuit_edges,
    circuit_score,
    completeness,
    edge_effects,
    faithfulness,
    greedy_growth,
    knockout_sets,
    minimality,
    needed_where,
    outside,
    positional_mean_hooks,
    split_by_positions,
)
from mechlab.analysis.patching import LOGITS
from mechlab.arithmetic.task import ArithmeticSplit
from mechlab.arithmetic.tokenizer import EQUALS_POS, MODEL_INPUT_LEN


@pytest.fixture
def setup(tiny_model, mixed_rows):
    tokens = ArithmeticSplit.from_rows(mixed_rows).tokens[:, :MODEL_INPUT_LEN]
    reference = reference_activations(tiny_model, tokens[::2])

    def score(model):  # a smooth score of the tiny model: mean logit of token "7" at "="
        return {"logit7": model(tokens[1::2])[:, EQUALS_POS, 7].mean().item()}

    return score, reference, heads(tiny_model.cfg) + mlps(tiny_model.cfg), tokens


def test_the_full_component_set_reproduces_the_model_exactly(tiny_model, setup):
    score, reference, components, _ = setup
    assert circuit_score(tiny_model, score, components, components, reference, metric="logit7") == score(tiny_model)["logit7"]


def test_the_empty_circuit_is_every_output_replaced_by_its_reference_mean(tiny_model, setup):
    score, reference, components, _ = setup

    def mean_of(act, hook):  # by hand: every head's z and every MLP output at its per-position mean
        return reference[hook.name].mean(0)[:act.shape[1]].expand_as(act).clone()

    names = [f"blocks.{l}.{n}" for l in range(2) for n in ("attn.hook_z", "hook_mlp_out")]
    with torch.no_grad(), tiny_model.hooks(fwd_hooks=[(n, mean_of) for n in names]):
        by_hand = score(tiny_model)["logit7"]
    empty = circuit_score(tiny_model, score, [], components, reference, metric="logit7")
    assert empty == pytest.approx(by_hand, abs=1e-12)
    assert abs(empty - score(tiny_model)["logit7"]) > 1e-3  # ablating everything changes the score


def test_faithfulness_minimality_and_completeness_agree_with_circuit_scores(tiny_model, setup):
    score, reference, components, _ = setup
    circuit = [Component("head", 0, 1), Component("mlp", 0), Component("mlp", 1)]
    f = faithfulness(tiny_model, score, circuit, components, reference, metric="logit7")
    alone = circuit_score(tiny_model, score, circuit, components, reference, metric="logit7")
    assert f.faithfulness == pytest.approx(alone / score(tiny_model)["logit7"])
    assert f.normalized == pytest.approx((alone - f.empty) / (f.full - f.empty))
    table = minimality(tiny_model, score, circuit, components, reference, metric="logit7").set_index("component")
    without_mlp0 = circuit_score(tiny_model, score, [circuit[0], circuit[2]], components, reference, metric="logit7")
    assert table.loc["MLP0", "drop"] == pytest.approx(alone - without_mlp0)
    assert table.loc["MLP0", "needed"] == (alone - without_mlp0 > 0.01)
    one = minimality(tiny_model, score, circuit, components, reference, metric="logit7", only=[circuit[1]])
    assert one["component"].tolist() == ["MLP0"] and one["drop"][0] == pytest.approx(table.loc["MLP0", "drop"])
    sets = {"MLP1": [circuit[2]]}
    row = completeness(tiny_model, score, circuit, components, sets, reference, metric="logit7").iloc[0]
    full_minus = evaluate_ablated(tiny_model, score, [circuit[2]], "mean", reference)["logit7"]
    assert row["full"] == pytest.approx(full_minus) and row["gap"] == pytest.approx(abs(full_minus - row["circuit"]))
    with pytest.raises(ValueError, match="not inside the circuit"):
        completeness(tiny_model, score, circuit, components, {"x": [Component("head", 1, 0)]}, reference, metric="logit7")


def test_greedy_growth_adds_the_best_component_first(tiny_model, setup):
    score, reference, components, _ = setup
    components = components[:3] + components[-1:]  # L0H0, L0H1, L1H0, MLP1: a short run
    # a goal above anything reachable before the end: growth runs until every component is in
    circuit, steps = greedy_growth(tiny_model, score, [], components, reference, metric="logit7", goal=float("inf"))
    assert len(circuit) == len(components) and len(steps) == len(components) + 1
    singles = {c.name: circuit_score(tiny_model, score, [c], components, reference, metric="logit7") for c in components}
    assert steps["added"][1] == max(singles, key=singles.get)
    assert steps["score"].iloc[-1] == pytest.approx(score(tiny_model)["logit7"])
    short, two = greedy_growth(tiny_model, score, [], components, reference, metric="logit7", goal=float("inf"), max_added=2)
    assert len(short) == 2 and two["added"].tolist()[1:] == steps["added"].tolist()[1:3]


def test_outside_refuses_unknown_components(tiny_model, setup):
    _, _, components, _ = setup
    assert outside(components[:2], components) == components[2:]
    with pytest.raises(ValueError, match="L5H0"):
        outside([Component("head", 5, 0)], components)


def test_knockout_sets_and_edges():
    circuit = [Component("head", 0, 0), Component("head", 0, 1), Component("mlp", 0), Component("head", 1, 0)]
    sets = knockout_sets(circuit, n_random=2, size=2, seed=0)
    assert list(sets)[:4] == ["L0H0", "L0H1", "MLP0", "L1H0"] and sets["layer 0"] == circuit[:3]
    assert sum(name.startswith("random") for name in sets) == 2
    edges = circuit_edges(circuit, [LOGITS])
    names = {(s.name, r if r == LOGITS else r.name) for s, r in edges}
    assert ("L0H0", "MLP0") in names and ("MLP0", "L1H0") in names and ("L0H0", "L0H1") not in names
    assert ("MLP0", "L0H0") not in names and len([e for e in names if e[1] == LOGITS]) == 4
    table = edge_effects(edges[:2], torch.tensor([0.9, 0.25]))
    assert table["effect"].tolist() == pytest.approx([0.75, 0.1])


def test_positional_mean_hooks_remove_position_information(tiny_model, setup):
    _, _, _, tokens = setup
    with torch.no_grad(), tiny_model.hooks(fwd_hooks=positional_mean_hooks()):
        _, cache = tiny_model.run_with_cache(tokens[:2], names_filter="hook_pos_embed")
    pos = cache["hook_pos_embed"]
    assert torch.allclose(pos[:, 0], pos[:, -1]) and not torch.allclose(tiny_model.W_pos[0], tiny_model.W_pos[1])


def test_position_parts_together_are_the_whole_components(tiny_model, setup):
    score, reference, components, _ = setup
    parts = split_by_positions(components, {"upto=": range(EQUALS_POS + 1), "after": range(EQUALS_POS + 1, MODEL_INPUT_LEN)})
    assert [p.name for p in parts[:2]] == ["L0H0@upto=", "L0H0@after"]
    assert circuit_score(tiny_model, score, parts, parts, reference, metric="logit7") == score(tiny_model)["logit7"]
    empty_parts = circuit_score(tiny_model, score, [], parts, reference, metric="logit7")
    assert empty_parts == pytest.approx(circuit_score(tiny_model, score, [], components, reference, metric="logit7"), abs=1e-12)


def test_parts_after_the_scored_position_are_never_needed(tiny_model, setup):
    score, reference, components, _ = setup  # the score reads the logits at "=" only
    parts = split_by_positions(components, {"upto=": range(EQUALS_POS + 1), "after": range(EQUALS_POS + 1, MODEL_INPUT_LEN)})
    table = needed_where(minimality(tiny_model, score, parts, parts, reference, metric="logit7", threshold=1e-9), ["upto=", "after"])
    assert sorted(table.component) == sorted(c.name for c in components)  # one row per component
    assert (table["drop@after"].abs() < 1e-12).all()
    assert table["drop@upto="].abs().max() > 1e-3
    assert set(table["needed at"]) <= {"upto=", "nowhere"}
