"""Fourier helpers over Z_p: basis, spectra and key frequencies on synthetic data (milliseconds)."""
from __future__ import annotations

import math

import pytest
import torch

from mechlab.analysis.fourier import (
    explained_by_frequencies_2d,
    explained_fraction,
    fourier_basis,
    frequency_power,
    frequency_share_table,
    frequency_shares_2d,
    key_frequencies,
    key_frequency_summary,
    neuron_clusters,
    sum_directions,
    wave_directions,
    waves,
)

P = 113


def test_basis_is_orthonormal_with_named_rows():
    basis, names = fourier_basis(P)
    assert basis.shape == (P, P)
    assert torch.allclose(basis @ basis.T, torch.eye(P, dtype=basis.dtype), atol=1e-10)
    assert names[:3] == ["const", "cos 1", "sin 1"] and names[-1] == "sin 56"


def synthetic_embedding(freqs, d=128, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(P, dtype=torch.float64)
    cols = []
    for k in freqs:
        cols += [torch.cos(2 * math.pi * k * x / P), torch.sin(2 * math.pi * k * x / P)]
    waves = torch.stack(cols, dim=1)  # [P, 2K]
    mix = torch.randn(len(cols), d, generator=g, dtype=torch.float64)
    return waves @ mix + noise * torch.randn(P, d, generator=g, dtype=torch.float64)


def test_synthetic_embedding_frequencies_are_recovered():
    true = [14, 35, 41, 52]
    W = synthetic_embedding(true)
    power = frequency_power(W)
    assert power.shape == (56,) and abs(power.sum().item() - 1) < 1e-5
    assert sorted(key_frequencies(power)) == true
    assert explained_fraction(power, true) > 0.98


def test_pure_noise_has_no_key_frequencies():
    W = torch.randn(P, 128, generator=torch.Generator().manual_seed(1))
    assert key_frequencies(frequency_power(W)) == []


def test_neuron_clusters_find_each_neurons_frequency():
    a = torch.arange(P, dtype=torch.float64)[:, None]
    b = torch.arange(P, dtype=torch.float64)[None, :]
    w = lambda k: 2 * math.pi * k / P  # noqa: E731
    grid = torch.stack([torch.relu(torch.cos(w(7) * a) + torch.cos(w(7) * b)),  # ReLU makes harmonics
                        torch.cos(w(20) * (a + b)),
                        torch.sin(w(3) * a) * torch.cos(w(3) * b)], dim=2)
    best, share = neuron_clusters(grid)
    assert best[1:].tolist() == [20, 3] and (share[1:] > 0.99).all()
    assert best[0].item() == 7 or share[0] < 0.5  # ReLU leaks into harmonics 14, 21, ...
    assert explained_by_frequencies_2d(grid[:, :, 1:], [20, 3]) > 0.99


def test_sum_directions_are_unit_and_match_cos_a_plus_b():
    dirs = sum_directions(P, [5])
    assert dirs.shape == (2, P * P)
    assert torch.allclose(dirs.norm(dim=1), torch.ones(2, dtype=dirs.dtype))
    a, b = 3, 110
    ratio = dirs[0, a * P + b] / dirs[0, 0]
    assert abs(ratio - math.cos(2 * math.pi * 5 * (a + b) / P)) < 1e-9


def test_frequency_shares_tell_a_clock_for_a_plus_b_from_one_for_a():
    a = torch.arange(P, dtype=torch.float64)[:, None]
    b = torch.arange(P, dtype=torch.float64)[None, :]
    w = 2 * math.pi * 4 / P
    clock = torch.stack([torch.cos(w * (a + b)), torch.sin(w * (a + b))], dim=2)
    shares = frequency_shares_2d(clock).set_index("k")
    assert shares.loc[4, "a+b wave"] == pytest.approx(1.0) and shares.loc[4, "a and b"] == pytest.approx(1.0)
    assert shares.drop(index=4)["total"].max() < 1e-12
    only_a = torch.cos(w * a).expand(P, P)[:, :, None] + 0.0
    shares = frequency_shares_2d(only_a).set_index("k")
    assert shares.loc[4, "a only"] == pytest.approx(1.0) and shares.loc[4, "a+b wave"] < 1e-12


def test_wave_directions_find_the_direction_a_wave_is_written_along():
    a = torch.arange(P, dtype=torch.float64)[:, None]
    b = torch.arange(P, dtype=torch.float64)[None, :]
    v = torch.tensor([0.0, 3.0, 4.0], dtype=torch.float64)
    grid = torch.cos(2 * math.pi * 9 * (a + b) / P)[:, :, None] * v
    grid = grid + 0.01 * torch.randn(P, P, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dirs = wave_directions(grid, [9])  # [3, 2]: along cos and sin of 9(a+b)
    assert dirs.shape == (3, 2)
    cos_dir = dirs[:, 0] / dirs[:, 0].norm()
    assert torch.allclose(cos_dir, v / v.norm(), atol=1e-3) and dirs[:, 1].norm() < 0.02 * dirs[:, 0].norm()
    assert torch.allclose(waves(P, [9], "a+b"), sum_directions(P, [9]))


def test_key_frequency_summary_names_each_grids_key_frequencies():
    a = torch.arange(P, dtype=torch.float64)[:, None]
    b = torch.arange(P, dtype=torch.float64)[None, :]
    w = lambda k: 2 * math.pi * k / P  # noqa: E731
    grids = {"clock": torch.stack([torch.cos(w(5) * (a + b)), torch.sin(w(5) * (a + b))], dim=2),
             "operands": torch.stack([torch.cos(w(2) * a).expand(P, P), torch.cos(w(7) * b).expand(P, P)], dim=2)}
    shares = frequency_share_table(grids)
    assert list(shares.point.unique()) == ["clock", "operands"] and len(shares) == 2 * 56
    keys = key_frequency_summary(shares).set_index("point")
    assert keys.loc["clock", "key frequencies"] == [5] and keys.loc["clock", "a+b wave"] == pytest.approx(1.0)
    assert sorted(keys.loc["operands", "key frequencies"]) == [2, 7]
    assert keys.loc["operands", "a only"] == pytest.approx(0.5) and keys.loc["operands", "a+b wave"] < 1e-12
