"""Linear probes on planted features (recovered where planted, at chance elsewhere and under
shuffled labels), and projecting a subspace out of an activation."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mechlab.analysis.probes import (
    cache_activations,
    first_readable,
    fit_probes,
    gather_slots,
    orthogonal_to,
    probe_directions,
    probe_transfer,
    project_out_hook,
    projection_effect,
    projection_sweep,
    residual_points,
    score_grid,
)


@dataclass(frozen=True)
class F:
    name: str
    kind: str
    n_classes: int = 0


FEATURES = [F("x", "scalar"), F("c", "class", 3), F("r", "residue", 7)]
D = 8


def planted(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """acts [2 points, n, 2 slots, D] of noise; at point 1, slot 0 only: x along e0, class c as
    offsets along e1/e2, residue r on the k=2 circle in e3/e4. Returns (acts, valid, values)."""
    g = torch.Generator().manual_seed(seed)
    values = torch.stack([torch.randint(0, 100, (n,), generator=g), torch.randint(0, 3, (n,), generator=g),
                          torch.randint(0, 7, (n,), generator=g)], dim=1)
    acts = torch.randn(2, n, 2, D, generator=g, dtype=torch.float64)
    signal = torch.zeros(n, D, dtype=torch.float64)
    signal[:, 0] = values[:, 0] / 5.0  # variance 33 against noise 1: best R^2 0.97
    signal[:, 1:3] = 6 * torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)[values[:, 1]]
    angle = 2 * math.pi * 2 * values[:, 2] / 7
    signal[:, 3], signal[:, 4] = 5 * angle.cos(), 5 * angle.sin()
    acts[1, :, 0] += signal
    return acts, torch.ones(n, 2, dtype=torch.bool), values


@pytest.fixture(scope="module")
def fitted():
    acts, valid, values = planted(1200, seed=0)
    return fit_probes(acts, valid, values, FEATURES, ["p0", "p1"], ["s0", "s1"], seed=0)


def score(table: pd.DataFrame, point: str, slot: str, feature: str, target: str, column: str = "score") -> float:
    row = table[(table.point == point) & (table.slot == slot) & (table.feature == feature) & (table.target == target)]
    return float(row[column].iloc[0])


def test_a_planted_linear_feature_is_recovered_only_where_planted(fitted):
    _, table = fitted
    assert score(table, "p1", "s0", "x", "value") > 0.9
    assert score(table, "p1", "s0", "c", "class") > 0.95
    assert score(table, "p1", "s0", "r", "k=2") > 0.9
    assert score(table, "p1", "s0", "r", "k=1") < 0.1  # the circle is at frequency 2 only
    for point, slot in (("p0", "s0"), ("p0", "s1"), ("p1", "s1")):
        assert score(table, point, slot, "x", "value") < 0.05
        assert score(table, point, slot, "c", "class") < 0.45  # chance: 1/3


def test_shuffled_labels_stay_at_chance(fitted):
    _, table = fitted
    assert abs(score(table, "p1", "s0", "x", "value", "control")) < 0.05
    assert score(table, "p1", "s0", "c", "class", "control") < 0.45
    assert score(table, "p1", "s0", "r", "class", "control") < 0.3  # chance: 1/7
    assert score(table, "p1", "s0", "c", "class", "selectivity") > 0.5


def test_first_readable_names_the_planted_point(fitted):
    _, table = fitted
    baseline = table[(table.point == "p0") & (table.slot == "s0")]
    first = first_readable(table, ["p0", "p1"], baseline).set_index(["feature", "target"])
    assert first.loc[("x", "value"), "baseline"] == score(table, "p0", "s0", "x", "value")
    assert first.loc[("x", "value"), "first point"] == "p1" and first.loc[("x", "value"), "first slot"] == "s0"
    assert first.loc[("r", "k=1"), "first point"] == "never"


def test_probes_transfer_to_new_prompts_of_the_same_kind(fitted):
    probes, _ = fitted
    acts, valid, values = planted(300, seed=5)
    table = probe_transfer(probes, acts, valid, values)
    assert score(table, "p1", "s0", "x", "value") > 0.9 and score(table, "p0", "s0", "x", "value") < 0.05


def test_probe_directions_point_along_the_planted_direction(fitted):
    probes, _ = fitted
    u = probe_directions(probes, "p1", "s0", "x", "value")
    assert u.shape == (D, 1) and abs(u[0, 0].item()) > 0.95
    circle = probe_directions(probes, "p1", "s0", "r", "k=2")
    assert circle.shape == (D, 2) and circle[3:5].norm(dim=0).min() > 0.95


def test_gather_slots_marks_absent_slots():
    acts = torch.arange(2 * 4 * 3, dtype=torch.float64).reshape(2, 4, 3)
    out, valid = gather_slots(acts, torch.tensor([[1, -1], [3, 0]]))
    assert valid.tolist() == [[True, False], [True, True]]
    assert torch.equal(out[0, 0], acts[0, 1]) and torch.equal(out[1, 0], acts[1, 3]) and (out[0, 1] == 0).all()


def test_cache_activations_at_positions_matches_run_with_cache(tiny_model):
    tokens = torch.randint(0, 16, (5, 10), generator=torch.Generator().manual_seed(0))
    names = list(residual_points(tiny_model.cfg.n_layers).values())
    assert names == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre",
                     "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]
    positions = torch.tensor([[9, 2]] * 5)
    cached = cache_activations(tiny_model, tokens, names, batch_size=2, positions=positions)
    _, reference = tiny_model.run_with_cache(tokens)
    for name in names:
        assert torch.allclose(cached[name], reference[name][:, [9, 2]])


def test_projecting_out_a_direction_removes_exactly_it():
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(D, 1, generator=g, dtype=torch.float64), dim=0)
    act = torch.randn(3, 4, D, generator=g, dtype=torch.float64)
    out = project_out_hook(u)(act)
    assert torch.allclose(out @ u, torch.zeros(3, 4, 1, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out - act, -(act @ u) @ u.T)  # nothing orthogonal to u changes
    mean = torch.randn(4, D, generator=g, dtype=torch.float64)
    kept = project_out_hook(u, mean, from_position=2)(act)
    assert torch.equal(kept[:, :2], act[:, :2])
    assert torch.allclose(kept[:, 2:] @ u, (mean[2:] @ u).expand(3, 2, 1))  # set to the mean's component


class ReadsOneDirection(HookedRootModule):
    """Output = mean over rows of x . u, read through `hook_x` (x: fixed inputs along u plus noise)."""

    def __init__(self, u: torch.Tensor, x: torch.Tensor):
        super().__init__()
        self.u, self.x = u, x
        self.hook_x = HookPoint()
        self.setup()

    def forward(self, tokens=None):
        return (self.hook_x(self.x) @ self.u).mean()


def test_projection_effect_of_the_read_direction_against_random_ones():
    g = torch.Generator().manual_seed(1)
    u = torch.zeros(64, dtype=torch.float64)
    u[0] = 1.0
    x = torch.randn(10, 3, 64, generator=g, dtype=torch.float64) + 5 * u
    model = ReadsOneDirection(u, x)
    effect = projection_effect(model, lambda m: {"out": m().item()}, "out", "hook_x", u[:, None], n_random=4)
    assert effect.what.tolist() == ["none", "directions"] + ["random"] * 4
    direct = effect[effect.what == "directions"].iloc[0]
    assert direct["dim"] == 1 and direct["score"] == pytest.approx(0.0, abs=1e-12)  # zeroed along u
    assert effect[effect.what == "random"]["drop"].abs().max() < 0.5 * direct["drop"]
    sweep = projection_sweep(model, lambda m: {"out": m().item()}, "out", {"u": ("hook_x", u[:, None])}, n_random=4)
    assert sweep.loc[0, "drop"] == pytest.approx(direct["drop"]) and sweep.loc[0, "dim"] == 1


def test_score_grid_lays_the_table_out_by_point_and_slot(fitted):
    _, table = fitted
    grid = score_grid(table, [("x", "value"), ("c", "class")], ["p0", "p1"], ["s0", "s1"])
    assert grid.shape == (2, 2, 2)
    assert grid[0, 1, 0] == pytest.approx(score(table, "p1", "s0", "x", "value"))
    assert grid[1, 0, 1] == pytest.approx(score(table, "p0", "s1", "c", "class"))


def test_orthogonal_to_removes_a_known_subspace():
    e = torch.eye(4, dtype=torch.float64)
    dirs = torch.stack([e[0] + e[1], e[2]], dim=1)  # [4, 2]
    left = orthogonal_to(dirs, 3 * e[:, :1])
    assert torch.allclose(left, torch.stack([e[1], e[2]], dim=1))
