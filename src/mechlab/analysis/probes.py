"""Linear probes on cached activations of any TransformerLens model, with control tasks, and the
causal test that goes with them: project the probe's subspace out of the residual stream.

Layout. Activations are cached once (`cache_activations`) and gathered at a few *slots* per
prompt (`gather_slots`: e.g. "the units digit of a", "="; a slot may be absent from a prompt, so
every gather comes with a valid mask). A probe set covers every (point, slot, feature) at once:
acts [n_points, n_rows, n_slots, d] and one row of feature values per prompt.

Features are any objects with `name`, `kind` and `n_classes` (e.g. `mechlab.arithmetic.features.FEATURES`):

* "scalar":  ridge regression on the standardised value; score R^2 on held-out rows;
* "class":   ridge regression on the one-hot code, prediction = argmax (a linear least-squares
             classifier); score held-out accuracy;
* "residue": the class probe above (target "class"), and for each frequency k = 1 .. (n-1)//2 a
             ridge regression onto the point (cos, sin)(2 pi k x / n) of the circle (target "k=<k>");
             score R^2 of the two coordinates together. A "clock" representation at frequency k
             gives R^2 near 1 at that k.

All probes of a (point, slot) share one ridge system (X^T X + lambda I) W = X^T Y (X centred on the
training rows, lambda = `ridge` x the mean eigenvalue of X^T X), solved in one batched call.
Rows are split once into training and held-out rows (`train_fraction`, seeded).

Control task (Hewitt & Liang 2019, in its simplest form): the same probe fitted and scored on
labels shuffled across prompts; `selectivity` = score - control. A feature is *linearly readable*
at a (point, slot) when its held-out score reaches `READABLE_R2` (R^2 targets) or its selectivity
reaches `READABLE_SELECTIVITY` (accuracy targets) -- see `readable`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from mechlab.analysis.fourier import n_frequencies

READABLE_R2 = 0.5  # R^2 (scalars, circles) at which a quantity counts as linearly readable
READABLE_SELECTIVITY = 0.5  # accuracy above the shuffled-label control at which a class counts as readable


@dataclass(frozen=True)
class Target:
    """One probe target: feature `feature`'s `target` ("value", "class" or "k=<k>") in columns
    `start:stop` of the target matrix, scored by `metric` ("R2" or "accuracy")."""

    feature: str
    target: str
    start: int
    stop: int
    metric: str


@dataclass
class ProbeSet:
    """Fitted probes for every (point, slot) and target column.

    weights [n_points, n_slots, d, n_columns]; bias [n_points, n_slots, n_columns]; patterns
    [n_points, n_slots, d, n_columns], the covariance of the activations with each target column on
    the training rows (the direction a target is *written* along, which `probe_directions`
    returns); the scalar targets' standardisation (`shift`, `scale`: [n_columns], 0 / 1 for other
    columns)."""

    points: list[str]
    slots: list[str]
    features: list
    targets: list[Target]
    weights: torch.Tensor
    bias: torch.Tensor
    patterns: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor


# ---- caching activations ------------------------------------------------------------------------

def residual_points(n_layers: int) -> dict[str, str]:
    """The distinct points of the residual stream, in order, by label -> hook name:
    "resid_pre 0", "resid_mid 0", "resid_pre 1", ..., "resid_mid L-1", "resid_post L-1"
    (resid_post l is resid_pre l+1, so only the last resid_post is listed)."""
    points = {}
    for layer in range(n_layers):
        points[f"resid_pre {layer}"] = f"blocks.{layer}.hook_resid_pre"
        points[f"resid_mid {layer}"] = f"blocks.{layer}.hook_resid_mid"
    points[f"resid_post {n_layers - 1}"] = f"blocks.{n_layers - 1}.hook_resid_post"
    return points



@torch.no_grad()
def cache_activations(model, tokens: torch.Tensor, hook_names: Sequence[str], batch_size: int = 512,
                      positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Activations at `hook_names` for tokens [n, pos]: {name: [n, pos, ...]} on the CPU, or, with
    `positions` [n, n_slots] (-1 = absent), only at those positions: {name: [n, n_slots, ...]}
    (zeros where absent)."""
    names = set(hook_names)
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in hook_names}
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start:start + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(chunk, names_filter=lambda n: n in names)
        for n in hook_names:
            act = cache[n].cpu()
            parts[n].append(act if positions is None else gather_slots(act, positions[start:start + batch_size])[0])
    return {n: torch.cat(v) for n, v in parts.items()}


def gather_slots(acts: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """acts [n, pos, ...] at positions [n, n_slots] (-1 = the slot is absent from that prompt):
    ([n, n_slots, ...] with zeros where absent, valid [n, n_slots] bool)."""
    valid = positions >= 0
    index = positions.clamp_min(0)
    gathered = acts[torch.arange(len(acts))[:, None], index]
    return gathered * valid.reshape(*valid.shape, *([1] * (gathered.ndim - 2))).to(gathered.dtype), valid


# ---- targets ------------------------------------------------------------------------------------

def probe_targets(values: torch.Tensor, features: Sequence, shift: torch.Tensor | None = None,
                  scale: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Target], torch.Tensor, torch.Tensor]:
    """The target matrix for feature values [n, n_features] (one column per feature, integers):
    (Y [n, n_columns] float64, its targets, shift, scale). Scalar columns are standardised with
    `shift`/`scale` when given (to score fitted probes on other prompts), else with their own
    mean and standard deviation."""
    columns, targets, start = [], [], 0

    def add(block: torch.Tensor, feature: str, target: str, metric: str) -> None:
        nonlocal start
        columns.append(block)
        targets.append(Target(feature, target, start, start + block.shape[1], metric))
        start += block.shape[1]

    values = values.long()
    for i, f in enumerate(features):
        x = values[:, i]
        if f.kind == "scalar":
            add(x.double()[:, None], f.name, "value", "R2")
        elif f.kind in ("class", "residue"):
            add(torch.nn.functional.one_hot(x, f.n_classes).double(), f.name, "class", "accuracy")
        else:
            raise ValueError(f"unknown feature kind {f.kind!r} of {f.name!r}")
        if f.kind == "residue":
            for k in range(1, n_frequencies(f.n_classes) + 1):
                angle = 2 * math.pi * k * x.double() / f.n_classes
                add(torch.stack([angle.cos(), angle.sin()], dim=1), f.name, f"k={k}", "R2")
    Y = torch.cat(columns, dim=1)
    if shift is None:
        scalar = torch.zeros(Y.shape[1], dtype=torch.bool)
        for t in targets:
            scalar[t.start:t.stop] = t.target == "value"
        shift = torch.where(scalar, Y.mean(0), torch.zeros(()))
        scale = torch.where(scalar, Y.std(0).clamp_min(1e-12), torch.ones(()))
    return (Y - shift) / scale, targets, shift, scale


# ---- fitting and scoring -----------------------------------------------------------------------

def split_rows(n: int, train_fraction: float, seed: int) -> torch.Tensor:
    """[n] bool, True for training rows: a random `train_fraction` of the rows (seeded)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train = torch.zeros(n, dtype=torch.bool)
    train[order[: int(round(train_fraction * n))]] = True
    return train


def _ridge(acts: torch.Tensor, rows: torch.Tensor, Y: torch.Tensor,
           ridge: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge fits for every (point, slot): acts [P, n, S, d], rows [n, S] bool (rows used),
    Y [n, C] -> (weights [P, S, d, C], bias [P, S, C], covariance of X with Y [P, S, d, C])."""
    X = acts.double()
    w = rows.double()  # [n, S]
    count = w.sum(0).clamp_min(1)  # [S]
    mean_x = torch.einsum("pnsd,ns->psd", X, w) / count[:, None]
    mean_y = torch.einsum("nc,ns->sc", Y, w) / count[:, None]
    Xc = (X - mean_x[:, None]) * w[None, :, :, None]
    gram = torch.einsum("pnsd,pnse->psde", Xc, Xc)
    d = gram.shape[-1]
    lam = ridge * gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    gram = gram + lam[..., None, None] * torch.eye(d, dtype=gram.dtype)
    cross = torch.einsum("pnsd,nc->psdc", Xc, Y)
    weights = torch.linalg.solve(gram, cross)
    bias = mean_y[None] - torch.einsum("psd,psdc->psc", mean_x, weights)
    return weights, bias, cross / count[None, :, None, None]


def _scores(probes: ProbeSet, acts: torch.Tensor, Y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[P, S, n_targets] score of each of `probes`' targets on `rows` [n, S] (bool) of
    acts [P, n, S, d] against Y [n, C]; one point at a time, on the scored rows only (memory)."""
    keep = rows.any(1)
    acts, Y, w = acts[:, keep], Y[keep], rows[keep].double()
    count = w.sum(0).clamp_min(1)  # [S]
    scores = []
    for p in range(len(acts)):
        pred = torch.einsum("nsd,sdc->nsc", acts[p].double(), probes.weights[p]) + probes.bias[p]
        out = []
        for t in probes.targets:
            q, y = pred[..., t.start:t.stop], Y[:, t.start:t.stop]
            if t.metric == "accuracy":
                hit = (q.argmax(-1) == y.argmax(-1)[:, None]).double()  # [n, S]
                out.append((hit * w).sum(0) / count)
            else:
                mean = torch.einsum("nc,ns->sc", y, w) / count[:, None]  # [S, c]
                sst = torch.einsum("nsc,ns->s", (y[:, None] - mean[None]) ** 2, w)
                sse = torch.einsum("nsc,ns->s", (q - y[:, None]) ** 2, w)
                out.append(1 - sse / sst.clamp_min(1e-12))
        scores.append(torch.stack(out, dim=-1))
    return torch.stack(scores)


def fit_probes(acts: torch.Tensor, valid: torch.Tensor, values: torch.Tensor, features: Sequence,
               points: Sequence[str], slots: Sequence[str], train_fraction: float = 0.75, ridge: float = 1e-3,
               seed: int = 0) -> tuple[ProbeSet, pd.DataFrame]:
    """Fit every probe (see the module docstring) and score it on held-out rows, with its control.

    acts [n_points, n, n_slots, d]; valid [n, n_slots] (the slot exists in that prompt); values
    [n, n_features]. Returns (the fitted probes, a table with one row per (point, slot, feature,
    target): metric, score, control, selectivity, n_train, n_test)."""
    Y, targets, shift, scale = probe_targets(values, features)
    train = split_rows(len(Y), train_fraction, seed)
    shuffled = Y[torch.randperm(len(Y), generator=torch.Generator().manual_seed(seed + 1))]
    fit_rows, test_rows = valid & train[:, None], valid & ~train[:, None]
    weights, bias, cov = _ridge(acts, fit_rows, torch.cat([Y, shuffled], dim=1), ridge)  # one solve for both
    C = Y.shape[1]
    probes = ProbeSet(list(points), list(slots), list(features), targets, weights[..., :C], bias[..., :C],
                      cov[..., :C], shift, scale)
    control = ProbeSet(list(points), list(slots), list(features), targets, weights[..., C:], bias[..., C:],
                       cov[..., C:], shift, scale)
    score = _scores(probes, acts, Y, test_rows)
    control_score = _scores(control, acts, shuffled, test_rows)
    return probes, _table(probes, score, control_score, fit_rows.sum(0), test_rows.sum(0))


def _table(probes: ProbeSet, score: torch.Tensor, control: torch.Tensor | None, n_train: torch.Tensor,
           n_test: torch.Tensor) -> pd.DataFrame:
    rows = []
    for p, point in enumerate(probes.points):
        for s, slot in enumerate(probes.slots):
            for t, target in enumerate(probes.targets):
                row = {"point": point, "slot": slot, "feature": target.feature, "target": target.target,
                       "metric": target.metric, "score": float(score[p, s, t])}
                if control is not None:
                    row |= {"control": float(control[p, s, t]), "selectivity": float(score[p, s, t] - control[p, s, t]),
                            "n_train": int(n_train[s])}
                rows.append(row | {"n_test": int(n_test[s])})
    return pd.DataFrame(rows)


def probe_transfer(probes: ProbeSet, acts: torch.Tensor, valid: torch.Tensor, values: torch.Tensor) -> pd.DataFrame:
    """Score fitted probes, unchanged, on other prompts (e.g. an out-of-distribution set): acts
    [n_points, n, n_slots, d] at the same points and slots, valid [n, n_slots], values [n,
    n_features] of the same features. One row per (point, slot, feature, target): metric,
    score, n_test (no control: nothing is refitted)."""
    Y, targets, _, _ = probe_targets(values, probes.features, probes.shift, probes.scale)
    score = _scores(probes, acts, Y, valid)
    return _table(probes, score, None, valid.sum(0), valid.sum(0))


def readable(table: pd.DataFrame, r2: float = READABLE_R2, selectivity: float = READABLE_SELECTIVITY) -> pd.Series:
    """[rows of a `fit_probes` table] bool: R^2 >= `r2` (R^2 targets) or selectivity >=
    `selectivity` (accuracy targets)."""
    return ((table["metric"] == "R2") & (table["score"] >= r2)) | \
        ((table["metric"] == "accuracy") & (table["selectivity"] >= selectivity))


def first_readable(table: pd.DataFrame, points: Sequence[str], baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (feature, target): the first point (in the order of `points`) at which it is linearly
    readable at some slot (`readable`), that slot, and the best score anywhere with its point and
    slot. `first point` is "never" when it is readable nowhere. With `baseline` (a `fit_probes`
    table of the same targets from other inputs, e.g. the operand digits alone, one point and
    slot) its score is added as column "baseline": what is readable without the model."""
    order = {p: i for i, p in enumerate(points)}
    table = table.assign(readable=readable(table), order=table["point"].map(order))
    rows = []
    for (feature, target), g in table.groupby(["feature", "target"], sort=False):
        best = g.loc[g["score"].idxmax()]
        hits = g[g["readable"]].sort_values(["order", "score"], ascending=[True, False])
        first = hits.iloc[0] if len(hits) else None
        rows.append({"feature": feature, "target": target, "metric": best["metric"],
                     "first point": first["point"] if first is not None else "never",
                     "first slot": first["slot"] if first is not None else "",
                     "best score": best["score"], "best selectivity": best["selectivity"],
                     "best point": best["point"], "best slot": best["slot"]})
    out = pd.DataFrame(rows)
    if baseline is not None:
        out = out.merge(baseline[["feature", "target", "score"]].rename(columns={"score": "baseline"}),
                        on=["feature", "target"], how="left")
    return out


# ---- directions and projecting them out --------------------------------------------------------

def orthonormal_basis(vectors: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """[d, r] orthonormal basis of the span of the columns of vectors [d, m] (r = its numerical rank)."""
    U, S, _ = torch.linalg.svd(vectors.double(), full_matrices=False)
    return U[:, S > tol * S.max()]


def probe_directions(probes: ProbeSet, point: str, slot: str, feature: str, target: str) -> torch.Tensor:
    """[d, r]: orthonormal basis of the directions along which a probe's target is written in
    the activations: the span of the target columns' covariance with the activations (the
    "activation patterns" of Haufe et al. 2014, not the probe's weights, which also cancel noise
    and so need not point along the signal; for a projection test the pattern is what to remove)."""
    t = next(t for t in probes.targets if t.feature == feature and t.target == target)
    cov = probes.patterns[probes.points.index(point), probes.slots.index(slot), :, t.start:t.stop]
    return orthonormal_basis(cov)


def orthogonal_to(directions: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """directions [d, m] minus their component in the span of other [d, k]: what is left of a
    probe's subspace once a known one (e.g. the key-frequency directions) is taken out."""
    basis = orthonormal_basis(other)
    directions = directions.double()
    return directions - basis @ (basis.T @ directions)


def random_directions(d: int, r: int, generator: torch.Generator) -> torch.Tensor:
    """[d, r] orthonormal basis of a random r-dimensional subspace (Haar distributed)."""
    return torch.linalg.qr(torch.randn(d, r, generator=generator, dtype=torch.float64))[0]


def project_out_hook(directions: torch.Tensor, mean: torch.Tensor | None = None, from_position: int = 0) -> Callable:
    """A forward hook on a [batch, pos, d] activation that removes its component in the span of
    directions [d, r] (orthonormal) at positions >= `from_position`: x - ((x - mean) U) U^T. With
    `mean` [pos, d] (e.g. the activation's mean over reference prompts) the component is set to
    the mean's, i.e. the subspace is mean-ablated; without it the component is zeroed."""
    U = directions.double()

    def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
        x = act[:, from_position:].double()
        centred = x if mean is None else x - mean[from_position:act.shape[1]].to(x)
        out = act.clone()
        out[:, from_position:] = (x - (centred @ U.to(x.device)) @ U.T.to(x.device)).to(act.dtype)
        return out

    return hook


@torch.no_grad()
def projection_effect(model, score: Callable, metric: str, hook_name: str, directions: torch.Tensor,
                      mean: torch.Tensor | None = None, n_random: int = 5, seed: int = 0,
                      from_position: int = 0) -> pd.DataFrame:
    """`score(model)[metric]` with the span of `directions` [d, m] (any vectors; r = their rank)
    projected out at `hook_name` (`project_out_hook`, from `from_position` on), against random
    subspaces of the same dimension (`n_random` draws from a generator seeded with `seed`).
    Rows: what ("none", "directions", "random"), draw, dim, score, drop (from the unprojected score)."""
    base = score(model)[metric]
    generator = torch.Generator().manual_seed(seed)
    directions = orthonormal_basis(directions)
    d, r = directions.shape
    runs = [("directions", 0, directions)] + [("random", i, random_directions(d, r, generator)) for i in range(n_random)]
    rows = [{"what": "none", "draw": 0, "dim": 0, "score": base, "drop": 0.0}]
    for what, draw, dirs in runs:
        with model.hooks(fwd_hooks=[(hook_name, project_out_hook(dirs, mean, from_position))]):
            value = score(model)[metric]
        rows.append({"what": what, "draw": draw, "dim": r, "score": value, "drop": base - value})
    return pd.DataFrame(rows)


def projection_sweep(model, score: Callable, metric: str, experiments: dict[str, tuple[str, torch.Tensor]],
                     means: dict[str, torch.Tensor] | None = None, n_random: int = 5, seed: int = 0,
                     from_position: int = 0) -> pd.DataFrame:
    """`projection_effect` for each named experiment {name: (hook_name, directions [d, m])}, with
    the mean [pos, d] of `means[hook_name]` when given. One row per experiment: hook, dim, score,
    drop, and the mean and largest drop over the random subspaces."""
    rows = []
    for name, (hook_name, directions) in experiments.items():
        mean = None if means is None else means[hook_name]
        effect = projection_effect(model, score, metric, hook_name, directions, mean, n_random, seed, from_position)
        probe, rand = effect[effect.what == "directions"].iloc[0], effect[effect.what == "random"]
        rows.append({"experiment": name, "hook": hook_name, "dim": int(probe["dim"]), "base": effect["score"].iloc[0],
                     "score": probe["score"], "drop": probe["drop"], "random drop (mean)": rand["drop"].mean(),
                     "random drop (max)": rand["drop"].max()})
    return pd.DataFrame(rows)


def score_grid(table: pd.DataFrame, targets: Sequence[tuple[str, str]], points: Sequence[str], slots: Sequence[str],
               column: str = "score") -> torch.Tensor:
    """[len(targets), len(points), len(slots)] `column` of a `fit_probes` table for each
    (feature, target) in `targets`, by point and slot (NaN where missing): one heatmap facet each."""
    out = torch.full((len(targets), len(points)), float("nan")).unsqueeze(-1).repeat(1, 1, len(slots))
    for i, (feature, target) in enumerate(targets):
        g = table[(table.feature == feature) & (table.target == target)]
        wide = g.pivot(index="point", columns="slot", values=column).reindex(index=list(points), columns=list(slots))
        out[i] = torch.tensor(wide.to_numpy(dtype=float))
    return out
