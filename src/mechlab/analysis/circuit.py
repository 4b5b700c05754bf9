"""Circuits of any `HookedTransformer`, verified by the criteria of Wang et al. (2022, IOI).

A *circuit* is a set of components (`mechlab.analysis.ablation.Component`: heads, MLPs) out of a
model's `components`. Running the circuit means running the model with every component *outside*
it mean-ablated (its output replaced by its per-position mean over reference prompts, through
`ablation.evaluate_ablated`, the one ablation path), and scoring it with a score function
(`score(model) -> dict`, as in `mechlab.analysis.ablation`; `metric` names the entry used).

* faithfulness: score(circuit) / score(full model); the goal is FAITHFULNESS_GOAL (0.95).
  `Faithfulness` also keeps score(nothing): every component ablated, the floor.
* completeness: for knock-out sets K inside the circuit, score(circuit - K) and score(full - K)
  should match; the gap is |score(full - K) - score(circuit - K)|.
* minimality: removing any one component from the circuit costs something measurable: its drop
  score(circuit) - score(circuit - c) exceeds MINIMAL_DROP (0.01).
* greedy growth: add, one at a time, the component whose addition raises score(circuit) most,
  until the faithfulness goal is met or nothing is left.
* by position: `split_by_positions` cuts every component into parts at groups of positions (e.g.
  the prompt and the answer-predicting positions; `ablation.at_positions`), so the same criteria
  say where a head is needed (`needed_where` reads a `minimality` table of the parts).

Path-patching results (`mechlab.analysis.patching.path_patch`) become an edge table with
`edge_effects`: effect = 1 - patched metric, the share of the clean-vs-corrupted difference that
flows along the edge.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from mechlab.analysis.ablation import Component, Score, _score_fn, at_positions, evaluate_ablated

FAITHFULNESS_GOAL = 0.95
MINIMAL_DROP = 0.01


def outside(circuit: Sequence[Component], components: Sequence[Component]) -> list[Component]:
    """The components not in the circuit (these are mean-ablated when the circuit runs)."""
    unknown = set(circuit) - set(components)
    if unknown:
        raise ValueError(f"circuit components not among the model's components: {sorted(c.name for c in unknown)}")
    inside = set(circuit)
    return [c for c in components if c not in inside]


def circuit_score(model, score: Score, circuit: Sequence[Component], components: Sequence[Component],
                  reference: dict[str, torch.Tensor], *, metric: str) -> float:
    """`metric` of `score` with everything outside `circuit` mean-ablated."""
    return evaluate_ablated(model, score, outside(circuit, components), "mean", reference)[metric]


@dataclass(frozen=True)
class Faithfulness:
    circuit: float  # score with only the circuit running
    full: float     # the unablated model
    empty: float    # every component mean-ablated

    @property
    def faithfulness(self) -> float:
        """score(circuit) / score(full)."""
        return self.circuit / self.full

    @property
    def normalized(self) -> float:
        """(score(circuit) - score(empty)) / (score(full) - score(empty)): 0 = nothing, 1 = the model."""
        return (self.circuit - self.empty) / (self.full - self.empty)


def faithfulness(model, score: Score, circuit: Sequence[Component], components: Sequence[Component],
                 reference: dict[str, torch.Tensor], *, metric: str) -> Faithfulness:
    with torch.no_grad():
        full = _score_fn(score)(model)[metric]
    return Faithfulness(circuit_score(model, score, circuit, components, reference, metric=metric), full,
                        circuit_score(model, score, [], components, reference, metric=metric))


def minimality(model, score: Score, circuit: Sequence[Component], components: Sequence[Component],
               reference: dict[str, torch.Tensor], *, metric: str, threshold: float = MINIMAL_DROP,
               only: Sequence[Component] | None = None) -> pd.DataFrame:
    """One row per circuit component (or per component of `only`, a part of the circuit):
    score(circuit without it), its drop from score(circuit), and `needed` = drop > `threshold`;
    largest drop first."""
    base = circuit_score(model, score, circuit, components, reference, metric=metric)
    rows = []
    for c in circuit if only is None else only:
        without = circuit_score(model, score, [x for x in circuit if x != c], components, reference, metric=metric)
        rows.append({"component": c.name, "without": without, "drop": base - without, "needed": base - without > threshold})
    return pd.DataFrame(rows).sort_values("drop", ascending=False, ignore_index=True)


def split_by_positions(components: Sequence[Component], groups: dict[str, Sequence[int]]) -> list[Component]:
    """Every component cut into one part per group of positions (name -> positions), in order:
    L0H0@prompt, L0H0@answer, L0H1@prompt, ... The groups should cover every position once, so
    that all the parts together are the whole model."""
    return [at_positions(c, positions, where) for c in components for where, positions in groups.items()]


def needed_where(minimal: pd.DataFrame, wheres: Sequence[str] | None = None) -> pd.DataFrame:
    """From a `minimality` table of position parts ("L0H0@prompt", ...): one row per component with
    each part's drop ("drop@<where>") and `needed at`, the groups where it is needed joined by " + "
    in the order of `wheres` (default: as they first appear) or "nowhere", in the order the
    components first appear in `minimal`."""
    parts = minimal.assign(base=minimal["component"].str.split("@").str[0], where=minimal["component"].str.split("@").str[1])
    drops = parts.pivot(index="base", columns="where", values="drop")
    needed = parts.pivot(index="base", columns="where", values="needed")
    order = list(dict.fromkeys(parts["base"]))
    wheres = list(wheres) if wheres is not None else list(dict.fromkeys(parts["where"]))
    table = drops.reindex(index=order, columns=wheres).add_prefix("drop@")
    table["needed at"] = [" + ".join(w for w in wheres if needed.loc[b, w]) or "nowhere" for b in order]
    return table.rename_axis("component").reset_index()


def knockout_sets(circuit: Sequence[Component], n_random: int = 5, size: int = 3, seed: int = 0) -> dict[str, list[Component]]:
    """Knock-out sets K for `completeness`: each component alone, each layer's circuit
    components together, and `n_random` seeded random sets of `size` components."""
    sets = {c.name: [c] for c in circuit}
    for layer in sorted({c.layer for c in circuit}):
        in_layer = [c for c in circuit if c.layer == layer]
        if len(in_layer) > 1:
            sets[f"layer {layer}"] = in_layer
    rng = random.Random(seed)
    for i in range(n_random if len(circuit) > size else 0):
        sample = rng.sample(list(circuit), size)
        sets[f"random {i}: " + "+".join(c.name for c in sample)] = sample
    return sets


def completeness(model, score: Score, circuit: Sequence[Component], components: Sequence[Component],
                 knockouts: dict[str, Sequence[Component]], reference: dict[str, torch.Tensor], *,
                 metric: str) -> pd.DataFrame:
    """One row per knock-out set K (name -> components, all inside the circuit): n, score of the
    circuit without K, score of the full model without K, and gap = |full - circuit|."""
    rows = []
    for name, knocked in knockouts.items():
        if set(knocked) - set(circuit):
            raise ValueError(f"knock-out set {name!r} is not inside the circuit")
        without = [c for c in circuit if c not in set(knocked)]
        in_circuit = circuit_score(model, score, without, components, reference, metric=metric)
        in_full = evaluate_ablated(model, score, list(knocked), "mean", reference)[metric]
        rows.append({"knocked out": name, "n": len(knocked), "circuit": in_circuit, "full": in_full,
                     "gap": abs(in_full - in_circuit)})
    return pd.DataFrame(rows)


def greedy_growth(model, score: Score, start: Sequence[Component], components: Sequence[Component],
                  reference: dict[str, torch.Tensor], *, metric: str, goal: float = FAITHFULNESS_GOAL,
                  max_added: int | None = None) -> tuple[list[Component], pd.DataFrame]:
    """Grow `start` by the component whose addition raises score(circuit) most, one at a time,
    until score(circuit) / score(full) >= `goal`, every component is in, or `max_added` were
    added. Returns the circuit and one row per step (added, size, score, faithfulness); step 0
    is `start`."""
    with torch.no_grad():
        full = _score_fn(score)(model)[metric]
    circuit = list(start)
    current = circuit_score(model, score, circuit, components, reference, metric=metric)
    steps = [{"added": "(start)", "size": len(circuit), "score": current, "faithfulness": current / full}]
    while current / full < goal and len(circuit) < len(components) and (max_added is None or len(steps) <= max_added):
        candidates = {c: circuit_score(model, score, circuit + [c], components, reference, metric=metric)
                      for c in outside(circuit, components)}
        best = max(candidates, key=candidates.get)
        circuit.append(best)
        current = candidates[best]
        steps.append({"added": best.name, "size": len(circuit), "score": current, "faithfulness": current / full})
    return circuit, pd.DataFrame(steps)


def node_name(node) -> str:
    """A component's name, or the string itself (e.g. `patching.LOGITS`)."""
    return node if isinstance(node, str) else node.name


def edge_effects(edges: Sequence[tuple], patched: torch.Tensor) -> pd.DataFrame:
    """One row per path-patched edge: sender, receiver (names) and effect = 1 - the patched
    metric (`path_patch`'s output [len(edges)]), largest effect first."""
    rows = [{"sender": node_name(s), "receiver": node_name(r), "effect": 1 - float(v)} for (s, r), v in zip(edges, patched, strict=True)]
    return pd.DataFrame(rows).sort_values("effect", ascending=False, ignore_index=True)


def circuit_edges(circuit: Sequence[Component], receivers_too: Sequence = ()) -> list[tuple]:
    """Every edge sender -> receiver inside `circuit` along which a path can run (receiver a head
    of a later layer, or an MLP of the same or a later layer after a head, of a later layer after
    an MLP), plus every circuit component -> each of `receivers_too` (e.g. `patching.LOGITS`)."""
    edges = []
    for s in circuit:
        for r in circuit:
            if r.layer > s.layer or (r.kind == "mlp" and s.kind == "head" and r.layer == s.layer):
                edges.append((s, r))
        edges += [(s, r) for r in receivers_too]
    return edges


def positional_mean_hooks() -> list[tuple[str, callable]]:
    """A forward hook that replaces the positional embedding at every position by its mean over
    the positions of the input: the model keeps its tokens but loses where they are."""
    def hook(pos_embed, hook):  # [batch, pos, d_model]
        return pos_embed.mean(1, keepdim=True).expand_as(pos_embed).clone()
    return [("hook_pos_embed", hook)]
