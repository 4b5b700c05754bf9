"""Grokking: an automatic detector on accuracy curves, and Nanda et al.'s progress measures
(restricted and excluded loss) for the 1-layer modular-addition transformer.

Detector rule (`detect_grokking`):
    T   = first epoch with train accuracy >= 99%
    G50 = first epoch with test accuracy >= 50%, G95 = first epoch with test accuracy >= 95%
    The run *grokked* iff T, G50 and G95 all exist and G50 >= min_delay_ratio * T (default 2:
    on a log-epoch axis, test accuracy crosses 50% at least a factor two later than train
    accuracy reached 99%). Otherwise `detect_grokking` returns None (never generalised, or
    generalised together with memorisation: no grokking). `crossings` reports T, G50, G95 in
    every case.

Progress measures (`progress_measures`), over all p*p pairs at the '=' position:
    neuron activations N [p*p, d_mlp] are split into the part in the key-frequency directions
    cos(w_k(a+b)), sin(w_k(a+b)) (plus the mean over pairs) and the rest.
    restricted loss: logits from the key-frequency part alone, N_key @ W_out @ W_U, shifted to
        the full model's mean logits; cross-entropy on the TEST pairs. Falls when the
        generalising circuit alone can do the task.
    excluded loss: the full model's logits with the key-frequency part of the neurons removed;
        cross-entropy on the TRAIN pairs. Rises when the training set is fitted through the
        key frequencies rather than memorised.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from mechlab.analysis.fourier import (
    explained_by_frequencies_2d,
    explained_fraction,
    frequency_power,
    key_frequencies,
    neuron_clusters,
    sum_directions,
)
from mechlab.core.runs import first_reaching
from mechlab.modular.task import all_pairs, encode, labels


def first_step(history: list[dict], metric: str, target: float) -> float | None:
    """The step of the first row of `history` with `metric` >= `target`, or None."""
    row = first_reaching(history, metric, target)
    return None if row is None else row["step"]


@dataclass(frozen=True)
class Crossings:
    train_99: float | None  # first step (epoch) with train accuracy >= train_threshold
    test_50: float | None
    test_95: float | None

    @property
    def delay_ratio(self) -> float | None:
        if self.train_99 is None or self.test_50 is None:
            return None
        return self.test_50 / max(self.train_99, 1)

    def to_json(self) -> dict:
        return {**asdict(self), "delay_ratio": self.delay_ratio}


def crossings(history: list[dict], train_threshold: float = 0.99,
              test_thresholds: tuple[float, float] = (0.5, 0.95)) -> Crossings:
    """T, G50, G95 (module docstring) of a training history (rows with step, train_acc, test_acc)."""
    return Crossings(first_step(history, "train_acc", train_threshold),
                     first_step(history, "test_acc", test_thresholds[0]),
                     first_step(history, "test_acc", test_thresholds[1]))


def detect_grokking(history: list[dict], train_threshold: float = 0.99,
                    test_thresholds: tuple[float, float] = (0.5, 0.95), min_delay_ratio: float = 2.0) -> Crossings | None:
    """The crossings if the history shows grokking by the rule in the module docstring, else None."""
    c = crossings(history, train_threshold, test_thresholds)
    if c.train_99 is None or c.test_50 is None or c.test_95 is None:
        return None
    return c if c.test_50 >= min_delay_ratio * max(c.train_99, 1) else None


def detect_from_history(history: list[dict], min_delay_ratio: float = 2.0) -> tuple[Crossings, Crossings | None]:
    """(crossings, detection) of a training history (rows with step, train_acc, test_acc)."""
    return crossings(history), detect_grokking(history, min_delay_ratio=min_delay_ratio)


def circuit_before_test_loss(progress: list[dict], level: float = 1.0) -> dict[str, float | None]:
    """Nanda et al.'s ordering check on progress-measure rows (step, restricted_loss, test_loss,
    excluded_loss): the first step with restricted loss < `level`, the first with test loss < `level`,
    whether the first came strictly before the second (None if either never happened), and the step
    of the peak excluded loss."""
    circuit = first_reaching(progress, "restricted_loss", level, below=True)
    test = first_reaching(progress, "test_loss", level, below=True)
    circuit_step = None if circuit is None else circuit["step"]
    test_step = None if test is None else test["step"]
    return {"circuit_step": circuit_step, "test_step": test_step,
            "circuit_first": None if circuit_step is None or test_step is None else circuit_step < test_step,
            "peak_excluded_step": max(progress, key=lambda row: row["excluded_loss"])["step"]}


def grokking_record(history: list[dict], progress: list[dict], level: float = 1.0) -> dict:
    """One run's grokking in a row: the crossings T, G50, G95 and G50 / T, whether the 2x rule calls it
    grokking, the epochs at which restricted and test loss first fall below `level`
    (`circuit_before_test_loss`) and how many epochs apart they are (the circuit's lead), whether the
    circuit came first *and* after memorisation (T <= circuit epoch < test epoch: it formed during the
    plateau), and the final accuracies.

    history: the training rows (step, train_acc, test_acc); progress: progress-measure rows
    (step, restricted_loss, test_loss, excluded_loss), as `export_progress` writes them."""
    cross, grokked = detect_from_history(history)
    order = circuit_before_test_loss(progress, level)
    circuit, test = order["circuit_step"], order["test_step"]
    in_plateau = (None if cross.train_99 is None or circuit is None or test is None
                  else cross.train_99 <= circuit < test)
    return {"T": cross.train_99, "G50": cross.test_50, "G95": cross.test_95, "G50 / T": cross.delay_ratio,
            "grokked": grokked is not None, "circuit epoch": circuit, "test loss epoch": test,
            "circuit lead": None if circuit is None or test is None else test - circuit,
            "circuit during plateau": in_plateau, "peak excluded loss epoch": order["peak_excluded_step"],
            "epochs trained": history[-1]["step"], "final train acc": history[-1]["train_acc"],
            "final test acc": history[-1]["test_acc"]}


# --- Fourier structure of the grokking MLP (input (a, b), separate embeddings) ---

ONE_FREQUENCY_SHARE = 0.5  # a neuron "is" frequency k when k carries at least this share of its variance
TOP_NEURONS = 10  # how many of the most important neurons `mlp_fourier_summary` lists


def embedding_key_frequencies(mlp) -> tuple[list[int], list[int]]:
    """Key frequencies (`fourier.key_frequencies`) of the a- and of the b-embedding."""
    return (key_frequencies(frequency_power(mlp.embed_a.weight)),
            key_frequencies(frequency_power(mlp.embed_b.weight)))


def mlp_fourier_summary(mlp, grid: torch.Tensor, order: torch.Tensor,
                        min_share: float = ONE_FREQUENCY_SHARE, n_top: int = TOP_NEURONS) -> dict:
    """How Fourier-shaped the grokking MLP is.

    grid: [p, p, d_hidden] hidden activations over all (a, b); order: [d_hidden] neurons, most
    important first. Returns the key frequencies of each embedding and the share of its variance
    they carry (and the top-5 frequencies' share, for comparison); among the active neurons (std > 0
    over the grid), the fraction with one frequency carrying >= `min_share` of their variance; the
    pooled neuron variance in the key frequencies; and the best frequency of the `n_top` most
    important neurons (0: none reaches `min_share`).
    """
    power_a, power_b = frequency_power(mlp.embed_a.weight), frequency_power(mlp.embed_b.weight)
    keys_a, keys_b = key_frequencies(power_a), key_frequencies(power_b)
    keys = sorted(set(keys_a) | set(keys_b))
    top5_a = [int(i) + 1 for i in torch.argsort(power_a, descending=True)[:5]]
    alive = grid.reshape(-1, grid.shape[-1]).std(0) > 1e-6
    best, _ = neuron_clusters(grid, min_fraction=min_share)
    return {"key frequencies, embed a": keys_a, "key frequencies, embed b": keys_b,
            "embed a variance in its key frequencies": explained_fraction(power_a, keys_a),
            "embed b variance in its key frequencies": explained_fraction(power_b, keys_b),
            "embed a variance in the top-5 frequencies": explained_fraction(power_a, top5_a),
            "active neurons": int(alive.sum()),
            f"neurons with one frequency >= {min_share:.0%} of variance": float((best[alive] > 0).float().mean()),
            "pooled neuron variance in the key frequencies":
                explained_by_frequencies_2d(grid[:, :, alive], keys) if keys else 0.0,
            f"top-{n_top} neurons' frequencies": [int(best[i]) for i in order[:n_top]]}


def key_share_over_series(series: list[tuple[int, torch.nn.Module]], keys_a: list[int],
                          keys_b: list[int]) -> list[dict]:
    """For each (step, model) snapshot: the share of each embedding's variance in the final
    model's key frequencies `keys_a`, `keys_b` (does the Fourier structure form before test
    accuracy rises?)."""
    return [{"step": step,
             "embed a variance in key freqs": explained_fraction(frequency_power(m.embed_a.weight), keys_a),
             "embed b variance in key freqs": explained_fraction(frequency_power(m.embed_b.weight), keys_b)}
            for step, m in series]


# --- progress measures for the 1-layer transformer (input [a, b, =]) ---


def neuron_acts_and_logits(model, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(neuron acts [p*p, d_mlp], resid_mid [p*p, d_model], logits [p*p, p]) at the last position."""
    x = encode(all_pairs(p), "one_layer", p).to(model.cfg.device)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x, names_filter=lambda n: n in ("blocks.0.mlp.hook_post",
                                                                               "blocks.0.hook_resid_mid"))
    return cache["blocks.0.mlp.hook_post"][:, -1], cache["blocks.0.hook_resid_mid"][:, -1], logits[:, -1, :p]


def progress_measures(model, p: int, key_freqs: list[int], train_idx: torch.Tensor,
                      test_idx: torch.Tensor) -> dict[str, float]:
    """train/test loss and the restricted / excluded losses (module docstring) for one model."""
    acts, resid_mid, logits = neuron_acts_and_logits(model, p)
    acts, logits = acts.double(), logits.double()
    y = labels(p).to(logits.device)
    dirs = sum_directions(p, key_freqs).to(acts.device)  # [2K, p*p]
    key_part = dirs.T @ (dirs @ acts)  # projection of each neuron's pattern on the key directions
    W_out = model.W_out[0].double()
    W_U = model.W_U[:, :p].double()
    restricted = (acts.mean(0, keepdim=True) + key_part) @ W_out @ W_U
    restricted = restricted + logits.mean(0, keepdim=True) - restricted.mean(0, keepdim=True)
    excluded = logits - key_part @ W_out @ W_U
    ce = lambda lg, idx: F.cross_entropy(lg[idx], y[idx]).item()  # noqa: E731
    return {"train_loss": ce(logits, train_idx), "test_loss": ce(logits, test_idx),
            "restricted_loss": ce(restricted, test_idx), "excluded_loss": ce(excluded, train_idx),
            "test_acc": (logits[test_idx].argmax(-1) == y[test_idx]).double().mean().item()}


def weight_norm(model) -> float:
    """Sum of squared parameters (the quantity weight decay shrinks)."""
    return float(sum(p.detach().double().pow(2).sum() for p in model.parameters()))
