"""Fourier analysis over Z_p: the basis, frequency spectra of embeddings, 2-D spectra of neuron
activations over the (a, b) grid, and key-frequency selection.

Basis (orthonormal, p rows, p odd): row 0 the constant 1/sqrt(p); rows 2k-1 and 2k the
normalised cos(2 pi k x / p) and sin(2 pi k x / p), k = 1 .. (p-1)/2 (56 frequencies for p = 113).
"Variance" always means the non-constant part: the constant row (or the (0, 0) term in 2-D) is
left out of every fraction.
"""
from __future__ import annotations

import math

import pandas as pd
import torch


def n_frequencies(p: int) -> int:
    return (p - 1) // 2


def fourier_basis(p: int) -> tuple[torch.Tensor, list[str]]:
    """([p, p] orthonormal basis, one row per function; names "const", "cos 1", "sin 1", ...)."""
    if p % 2 == 0:
        raise ValueError("p must be odd")
    x = torch.arange(p, dtype=torch.float64)
    rows, names = [torch.ones(p, dtype=torch.float64)], ["const"]
    for k in range(1, n_frequencies(p) + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        names += [f"cos {k}", f"sin {k}"]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True), names


def _freq_of_row(p: int) -> torch.Tensor:
    """[p] frequency of each basis row (0 for the constant)."""
    return torch.tensor([0] + [k for k in range(1, n_frequencies(p) + 1) for _ in (0, 1)])


def frequency_power(W: torch.Tensor) -> torch.Tensor:
    """Fraction of the non-constant variance of W [p, d] (one row per residue) at each frequency:
    [K] for k = 1..K, sums to 1. Index i is frequency i + 1."""
    p = W.shape[0]
    coef = fourier_basis(p)[0] @ W.detach().double().reshape(p, -1)
    power = coef.pow(2).sum(dim=1)[1:].reshape(-1, 2).sum(dim=1)
    return (power / power.sum()).float()


def key_frequencies(power: torch.Tensor, factor: float = 4.0, max_keys: int | None = None) -> list[int]:
    """Frequencies (1-based) whose share of the variance is above `factor` times the uniform
    share 1/K, largest first (at most `max_keys`). With factor 4 and K = 56: share > 7.1%."""
    order = torch.argsort(power, descending=True)
    keys = [int(i) + 1 for i in order if power[i] > factor / len(power)]
    return keys[:max_keys] if max_keys else keys


def explained_fraction(power: torch.Tensor, freqs: list[int]) -> float:
    """Share of the non-constant variance carried by `freqs` (1-based) in a `frequency_power` spectrum."""
    return float(sum(power[k - 1] for k in freqs))


def fourier_2d(grid: torch.Tensor) -> torch.Tensor:
    """Coefficients of activations on the (a, b) grid: grid [p, p, n] -> [p, p, n] in the basis
    (rows: basis function of a, columns: of b)."""
    p = grid.shape[0]
    B = fourier_basis(p)[0]
    return torch.einsum("ia,abn,jb->ijn", B, grid.detach().double(), B)


def neuron_frequency_table(grid: torch.Tensor) -> torch.Tensor:
    """[n, K]: for each neuron, the share of its non-constant variance in the terms of frequency k
    alone: cos/sin(k a), cos/sin(k b) and their four products (Nanda et al.'s neuron clusters)."""
    p = grid.shape[0]
    coef2 = fourier_2d(grid).pow(2)  # [p, p, n]
    coef2[0, 0] = 0.0
    total = coef2.sum(dim=(0, 1)).clamp_min(1e-30)
    freq = _freq_of_row(p)
    table = []
    for k in range(1, n_frequencies(p) + 1):
        rows = (freq == k) | (freq == 0)
        table.append(coef2[rows][:, rows].sum(dim=(0, 1)))
    return (torch.stack(table, dim=1) / total[:, None]).float()


def neuron_clusters(grid: torch.Tensor, min_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(best frequency [n] (0 = no single frequency explains >= min_fraction), its share [n])."""
    table = neuron_frequency_table(grid)
    share, idx = table.max(dim=1)
    best = torch.where(share >= min_fraction, idx + 1, torch.zeros_like(idx))
    return best, share


def explained_by_frequencies_2d(grid: torch.Tensor, freqs: list[int]) -> float:
    """Share of all neurons' non-constant variance (pooled) carried by terms whose a- and
    b-frequencies are both in `freqs` or constant."""
    p = grid.shape[0]
    coef2 = fourier_2d(grid).pow(2).sum(dim=2)
    coef2[0, 0] = 0.0
    freq = _freq_of_row(p)
    keep = (freq == 0) | torch.isin(freq, torch.tensor(freqs, dtype=freq.dtype))
    return float(coef2[keep][:, keep].sum() / coef2.sum())


def sum_directions(p: int, freqs: list[int]) -> torch.Tensor:
    """[2 * len(freqs), p*p] unit vectors cos(w(a+b)), sin(w(a+b)) over the grid (row a*p+b),
    w = 2 pi k / p: the directions the modular-addition circuit reads its answer from."""
    return waves(p, freqs, "a+b")

def waves(p: int, freqs: list[int], of: str = "a+b") -> torch.Tensor:
    """[2 * len(freqs), p*p] unit vectors cos(w x), sin(w x) over the grid (row a*p+b), w = 2 pi k / p,
    with x = a, b or a + b (`of`)."""
    a = torch.arange(p, dtype=torch.float64)[:, None].expand(p, p)
    b = torch.arange(p, dtype=torch.float64)[None, :].expand(p, p)
    x = {"a": a, "b": b, "a+b": a + b}[of]
    vecs = []
    for k in freqs:
        for fn in (torch.cos, torch.sin):
            v = fn(2 * math.pi * k * x / p).reshape(-1)
            vecs.append(v / v.norm())
    return torch.stack(vecs) if vecs else torch.zeros(0, p * p, dtype=torch.float64)


def frequency_shares_2d(grid: torch.Tensor) -> pd.DataFrame:
    """Where the variance of activations on the (a, b) grid [p, p, n] lies, pooled over the n
    units (neurons or residual dimensions), per frequency k = 1 .. (p-1)/2, as shares of the total
    non-constant variance. Columns: k; "a only" (cos/sin(k a) terms), "b only", "a and b" (the four
    products of a- and b-waves of frequency k), their sum "total"; and "a+b wave", the part of
    "a and b" along cos/sin(k (a + b)) (what a clock for (a + b) mod p at frequency k carries).
    Terms that mix two different frequencies belong to no row."""

    p = grid.shape[0]
    coef2 = fourier_2d(grid).pow(2).sum(dim=2)  # [p, p]
    coef2[0, 0] = 0.0
    total = coef2.sum()
    freq = _freq_of_row(p)
    centred = grid.detach().double().reshape(p * p, -1)
    centred = centred - centred.mean(0)
    rows = []
    for k in range(1, n_frequencies(p) + 1):
        rk = freq == k
        a_only, b_only = coef2[rk][:, 0].sum(), coef2[0][rk].sum()
        both = coef2[rk][:, rk].sum()
        wave = (waves(p, [k]) @ centred).pow(2).sum()
        rows.append({"k": k, "a only": float(a_only / total), "b only": float(b_only / total),
                     "a and b": float(both / total), "total": float((a_only + b_only + both) / total),
                     "a+b wave": float(wave / total)})
    return pd.DataFrame(rows)


def wave_directions(grid: torch.Tensor, freqs: list[int], of: str = "a+b") -> torch.Tensor:
    """[d, 2 len(freqs)]: the directions along which activations on the grid [p, p, d] follow
    cos(k x) and sin(k x) (x = a, b or a + b; k in `freqs`): the centred activations projected
    onto each unit wave (not orthonormalised; `mechlab.analysis.probes.orthonormal_basis` does that)."""
    p = grid.shape[0]
    flat = grid.detach().double().reshape(p * p, -1)
    return (waves(p, freqs, of) @ (flat - flat.mean(0))).T


def frequency_share_table(grids: dict[str, torch.Tensor]) -> pd.DataFrame:
    """`frequency_shares_2d` of each named grid [p, p, n] (e.g. one per residual-stream point),
    with a "point" column, in the order given."""
    return pd.concat([frequency_shares_2d(g).assign(point=name) for name, g in grids.items()], ignore_index=True)


def key_frequency_summary(shares: pd.DataFrame, factor: float = 4.0) -> pd.DataFrame:
    """Per point of a `frequency_share_table`: its key frequencies (`key_frequencies` of the
    "total" shares: above `factor` times the uniform share) and the shares of all variance they
    carry in total, as a-only, b-only and a+b-wave terms."""
    rows = []
    for point, g in shares.groupby("point", sort=False):
        keys = key_frequencies(torch.tensor(g["total"].to_numpy()), factor)
        sel = g[g["k"].isin(keys)]
        rows.append({"point": point, "key frequencies": keys, "share": sel["total"].sum(),
                     "a only": sel["a only"].sum(), "b only": sel["b only"].sum(), "a+b wave": sel["a+b wave"].sum()})
    return pd.DataFrame(rows)
