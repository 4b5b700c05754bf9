"""Attention-head classification for the 3-layer `a + b =` model: where does each head, read
from the '=' position, put its attention mass?

Rule (`classify_heads`): with mass m_a, m_+, m_b, m_= on the four positions (averaged over a set
of inputs), a head is
    attends-a  if m_a >= threshold (default 0.6),
    attends-b  if m_b >= threshold,
    self       if m_= >= threshold,
    spread     otherwise (no position holds `threshold` of the mass; '+' is folded in here,
               and a head with m_+ >= threshold is labelled attends-+).
"""
from __future__ import annotations

import torch

from mechlab.analysis.ablation import Component
from mechlab.modular.task import encode

POSITIONS = ("a", "+", "b", "=")


def eq_attention(model, pairs: torch.Tensor, p: int) -> torch.Tensor:
    """[n, n_layers, n_heads, 4] attention pattern from the '=' (last) position for each pair."""
    x = encode(pairs, "three_layer", p).to(model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    return torch.stack([cache["pattern", layer][:, :, -1, :] for layer in range(model.cfg.n_layers)], dim=1).cpu()


def classify_pattern(mass: torch.Tensor, threshold: float = 0.6) -> str:
    """Class of one head from its mean attention mass [4] over (a, +, b, =)."""
    m = dict(zip(POSITIONS, mass.tolist()))
    if m["a"] >= threshold:
        return "attends-a"
    if m["b"] >= threshold:
        return "attends-b"
    if m["="] >= threshold:
        return "self"
    if m["+"] >= threshold:
        return "attends-+"
    return "spread"


def classify_heads(mass: torch.Tensor, threshold: float = 0.6) -> dict[tuple[int, int], str]:
    """{(layer, head): class} from mean attention mass [n_layers, n_heads, 4]."""
    return {(layer, head): classify_pattern(mass[layer, head], threshold)
            for layer in range(mass.shape[0]) for head in range(mass.shape[1])}



def heads_by_class(classes: dict[tuple[int, int], str]) -> dict[str, list[Component]]:
    """{class: its heads as ablation `Component`s}, classes in alphabetical order."""
    return {cls: [Component("head", layer, head) for (layer, head), c in classes.items() if c == cls]
            for cls in sorted(set(classes.values()))}


def label_agreement(patterns: torch.Tensor, classes: dict[tuple[int, int], str], threshold: float = 0.6,
                    every: int = 10) -> dict[tuple[int, int], float]:
    """{(layer, head): share of single inputs whose own pattern gets the head's class}, over every
    `every`-th input of `patterns` [n, n_layers, n_heads, 4] (how stable the averaged label is)."""
    per_input = [classify_heads(patterns[i], threshold) for i in range(0, len(patterns), every)]
    return {key: sum(c[key] == cls for c in per_input) / len(per_input) for key, cls in classes.items()}


def attention_entropy(mass: torch.Tensor) -> torch.Tensor:
    """[n_layers] mean entropy (nats) of the heads' attention mass [n_layers, n_heads, 4] from '='
    (ln 4 = 1.386 for uniform attention, 0 for one position)."""
    return -(mass * (mass + 1e-9).log()).sum(-1).mean(-1)
