"""The seed document's findings for a character-level GPT, measured: induction accuracy on repeated
random characters, layer localization by activation patching, the induction heads and the effect of
ablating them on the in-context-learning score, a head taxonomy, the logit-lens convergence point, the
emergence of induction heads over training, and which findings replicate across training seeds.

Repeated random characters: `analysis.induction.repeated_random_tokens(d_vocab, seq_len, n)`, a random
sequence of `seq_len` characters then the same again ([A][B]...[A] -> [B]). The *induction positions*
are the predictions of tokens seq_len + 1 .. 2 * seq_len - 1 (the first token of the repeat cannot be
predicted), i.e. logits at positions seq_len .. 2 * seq_len - 2.

Patching corrupts the first half (fresh random characters, same second half), so the targets of the
induction positions are the same in both runs and only the copy source differs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from mechlab.analysis.ablation import Component, evaluate_ablated, reference_activations
from mechlab.analysis.attention import attention_patterns
from mechlab.analysis.attribution import confidence_by_point, first_confident_point, logit_lens
from mechlab.analysis.induction import (
    INDUCTION_THRESHOLD,
    detector_scores,
    heads_above,
    icl_positions,
    in_context_learning_score,
    induction_score,
    loss_by_position,
    repeated_random_tokens,
)
from mechlab.analysis.patching import PatchingMetric, patch_head_sets, run_cache
from mechlab.core.io import load_torch_dict, write_json_atomic
from mechlab.core.model import head_labels
from mechlab.core.runs import evenly_spaced, snapshot_paths
from mechlab.toylm.data import load_shakespeare
from mechlab.toylm.task import window_starts, windows

CONFIDENT = 0.5  # the seed's "model becomes > 50% confident"
NO_HEADS = "n/a (no induction head)"
N_TOP = 2  # heads ablated when none scores above INDUCTION_THRESHOLD: the N_TOP best induction scores
ICL_SHARE = 0.5  # ablating the induction heads "removes the in-context learning" when it removes this share of it


def induction_positions(seq_len: int) -> list[int]:
    """Logit positions whose targets are the repeat's tokens 2..seq_len: seq_len .. 2 * seq_len - 2."""
    return list(range(seq_len, 2 * seq_len - 1))


def induction_targets(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(batch, seq_len - 1) the tokens predicted at `induction_positions`; tokens (batch, 2 * seq_len)."""
    return tokens[:, seq_len + 1:2 * seq_len]


@torch.no_grad()
def induction_accuracy(model, tokens: torch.Tensor, seq_len: int) -> float:
    """Share of induction positions of repeated sequences (batch, 2 * seq_len) whose top prediction is the
    token that followed the earlier copy of the current token ([A][B]...[A] -> [B])."""
    logits = model(tokens.to(model.cfg.device))[:, induction_positions(seq_len)]
    return (logits.argmax(-1).cpu() == induction_targets(tokens, seq_len)).float().mean().item()


def corrupted_first_half(tokens: torch.Tensor, seq_len: int, seed: int = 1) -> torch.Tensor:
    """`tokens` (batch, 2 * seq_len) with the first half replaced by fresh random tokens: the second half
    (and so every induction target) is unchanged, but it no longer repeats anything."""
    fresh = repeated_random_tokens(int(tokens.max()) + 1, seq_len, len(tokens), seed=seed)[:, :seq_len]
    return torch.cat([fresh, tokens[:, seq_len:]], dim=1)


class InductionLogProb(PatchingMetric):
    """Mean log-probability of the induction targets at the induction positions, over the batch."""

    def __init__(self, targets: torch.Tensor, seq_len: int):
        self.positions = induction_positions(seq_len)
        self.targets = targets  # (batch, seq_len - 1)

    def raw(self, logits_at_positions: torch.Tensor) -> torch.Tensor:  # [..., batch, P, V] -> [...]
        log_probs = logits_at_positions.log_softmax(-1)
        targets = self.targets.to(log_probs.device).expand(*log_probs.shape[:-1])
        return log_probs.gather(-1, targets[..., None])[..., 0].mean(dim=(-1, -2))


@torch.no_grad()
def layer_patching(model, tokens: torch.Tensor, seq_len: int) -> pd.DataFrame:
    """Layer localization: the normalized induction log-probability (0 = first half corrupted, 1 = clean)
    after patching, from the clean run into the corrupted one at every position, the attention output of
    each layer (all its heads together, `patch_head_sets`) and each head alone. Columns: component,
    layer, head (-1 for a whole layer), effect."""
    corrupted = corrupted_first_half(tokens, seq_len)
    clean_logits, clean_cache = run_cache(model, tokens)
    corrupted_logits, corrupted_cache = run_cache(model, corrupted)
    metric = InductionLogProb(induction_targets(tokens, seq_len), seq_len).calibrate(clean_logits, corrupted_logits)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    layer_sets = [[(layer, head) for head in range(n_heads)] for layer in range(n_layers)]
    head_sets = [[(layer, head)] for layer in range(n_layers) for head in range(n_heads)]
    effects = patch_head_sets(model, corrupted, clean_cache, metric, layer_sets + head_sets,
                              corrupted_cache=corrupted_cache).cpu()
    rows = [{"component": f"layer {l} attention", "layer": l, "head": -1, "effect": effects[l].item()} for l in range(n_layers)]
    rows += [{"component": label, "layer": l, "head": h, "effect": effects[n_layers + i].item()}
             for i, ((l, h), label) in enumerate(zip([s[0] for s in head_sets], head_labels(n_layers, n_heads)))]
    return pd.DataFrame(rows)


def val_windows(val: torch.Tensor, n_ctx: int, n: int) -> torch.Tensor:
    """(n, n_ctx) evenly spaced windows of the validation text (model inputs, no target column)."""
    return windows(val, window_starts(len(val), n_ctx, n), n_ctx)[:, :-1]


def lm_scores(model, text: torch.Tensor, tokens: torch.Tensor, seq_len: int) -> dict[str, float]:
    """The scores ablations are measured by: `icl_score` (late minus early loss on the text windows
    (batch, n_ctx), `icl_positions`), `text_loss` on them, and `induction_acc` / `induction_loss` on
    repeated sequences `tokens`."""
    by_position = loss_by_position(model, text.to(model.cfg.device)).cpu()
    early, late = icl_positions(model.cfg.n_ctx)
    repeated = model(tokens.to(model.cfg.device), return_type="loss", loss_per_token=True)[:, seq_len:].mean().item()
    return {"icl_score": in_context_learning_score(by_position, early, late), "text_loss": by_position.mean().item(),
            "induction_acc": induction_accuracy(model, tokens, seq_len), "induction_loss": repeated}


def head_ablations(model, text: torch.Tensor, tokens: torch.Tensor, seq_len: int,
                   head_sets: dict[str, list[tuple[int, int]]]) -> pd.DataFrame:
    """`lm_scores` with each named set of heads mean-ablated (means per position over the text windows),
    one row per set, the unablated model first ("none")."""
    reference = reference_activations(model, text)
    score = lambda m: lm_scores(m, text, tokens, seq_len)  # noqa: E731
    with torch.no_grad():
        rows = {"none": score(model)}
    for name, heads in head_sets.items():
        rows[name] = evaluate_ablated(model, score, [Component("head", l, h) for l, h in heads], "mean", reference)
    return pd.DataFrame(rows).T


def ablated_name(induction_heads: list[tuple[int, int]]) -> str:
    """The ablation row of the induction heads, or of the N_TOP best-scoring heads when there are none."""
    return "induction heads" if induction_heads else f"top-{N_TOP} induction-score heads"


def control_heads(candidates: list[tuple[int, int]], exclude: list[tuple[int, int]], n: int, seed: int = 0) -> list[tuple[int, int]]:
    """`n` heads drawn at random from `candidates` outside `exclude`: the control set for an ablation."""
    pool = [c for c in candidates if c not in exclude]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]
    return [pool[i] for i in order.tolist()]


def first_token_score(patterns: torch.Tensor) -> torch.Tensor:
    """(n_layers, n_heads) mean attention on the first position, over queries after it and the batch: a
    positional head parks its attention there. patterns (batch, n_layers, n_heads, pos, pos)."""
    return patterns[..., 1:, 0].mean(dim=(0, -1))


def head_taxonomy_scores(model, tokens: torch.Tensor, text: torch.Tensor, seq_len: int) -> dict[str, torch.Tensor]:
    """{kind: (n_layers, n_heads)}: TransformerLens' head-detector scores (previous-token, duplicate-token,
    induction) on repeated sequences `tokens`, and `first_token_score` ("first_token") on text windows."""
    return {**detector_scores(attention_patterns(model, tokens), tokens),
            "first_token": first_token_score(attention_patterns(model, text))}


def lens_convergence(model, tokens: torch.Tensor, seq_len: int) -> tuple[pd.Series, str]:
    """(mean probability of the induction target at every logit-lens point, the first point where it
    exceeds CONFIDENT) on repeated sequences."""
    lens = logit_lens(model, tokens, induction_positions(seq_len), induction_targets(tokens, seq_len))
    return confidence_by_point(lens), first_confident_point(lens, CONFIDENT)


def text_lens_convergence(model, text: torch.Tensor) -> tuple[pd.Series, str]:
    """As `lens_convergence` for the next character of Shakespeare text windows (batch, n_ctx)."""
    positions = list(range(text.shape[1] - 1))
    lens = logit_lens(model, text, positions, text[:, 1:])
    return confidence_by_point(lens), first_confident_point(lens, CONFIDENT)


@torch.no_grad()
def emergence_row(model, tokens: torch.Tensor, text: torch.Tensor, seq_len: int) -> dict:
    """One point of the emergence series: induction score of every head, the best head and its layer,
    `lm_scores` (in-context-learning score, induction accuracy and loss)."""
    scores = induction_score(attention_patterns(model, tokens), seq_len)
    best = int(scores.argmax())
    layer, head = divmod(best, scores.shape[1])
    return {"induction_scores": scores.tolist(), "max_induction_score": scores.max().item(), "best_head": f"L{layer}H{head}",
            "best_layer": layer, **lm_scores(model, text, tokens, seq_len)}


def export_emergence(spec, run_dir: Path, out_dir: Path, n_points: int, n_sequences: int = 100,
                     n_windows: int = 1024, data_path: Path | None = None) -> Path:
    """emergence.json in `out_dir`: `emergence_row` at `n_points` evenly spaced snapshots of the run in
    `run_dir` (the series is committed this way, not as weights), plus the seq_len used."""
    cfg = spec.model_config
    seq_len = cfg.n_ctx // 2
    tokens = repeated_random_tokens(cfg.d_vocab, seq_len, n_sequences, seed=0)
    text = val_windows(load_shakespeare(data_path).val, cfg.n_ctx, n_windows)
    from mechlab.core.model import build
    rows = []
    for path in evenly_spaced(snapshot_paths(run_dir), n_points):
        snap = load_torch_dict(path, "snapshot")
        model = build(cfg, "cpu")
        model.load_state_dict(snap["state_dict"])
        model.eval()
        rows.append({"step": snap["step"], **emergence_row(model, tokens, text, seq_len)})
    write_json_atomic(Path(out_dir) / "emergence.json", {"seq_len": seq_len, "n_sequences": n_sequences,
                                                         "n_windows": n_windows, "rows": rows})
    return Path(out_dir) / "emergence.json"


def load_emergence(checkpoint_dir: Path) -> pd.DataFrame:
    """The emergence series of an export, one row per snapshot (step, max_induction_score, ...)."""
    return pd.DataFrame(json.loads((Path(checkpoint_dir) / "emergence.json").read_text())["rows"])


def emergence_point(series: pd.DataFrame, threshold: float = INDUCTION_THRESHOLD) -> dict:
    """The first snapshot whose best head scores above `threshold`: {step, head, layer}, or step None."""
    above = series[series["max_induction_score"] > threshold]
    if above.empty:
        return {"step": None, "head": None, "layer": None}
    first = above.iloc[0]
    return {"step": int(first["step"]), "head": first["best_head"], "layer": int(first["best_layer"])}


@dataclass
class SeedFindings:
    """Everything the findings table reports for one trained model (see `seed_findings`)."""

    induction_scores: torch.Tensor  # (n_layers, n_heads)
    induction_heads: list[tuple[int, int]]
    induction_acc: float
    patching: pd.DataFrame
    ablations: pd.DataFrame
    taxonomy: dict[str, torch.Tensor]
    lens_confidence: pd.Series
    lens_point: str
    text_lens_point: str
    emergence: dict
    val_loss: float

    def summary(self) -> dict[str, object]:
        """The findings as comparable values, for `replication_table` (head indices are arbitrary across
        seeds, so heads are compared by count and layer, not by name)."""
        from mechlab.analysis.induction import head_kinds
        layers = self.patching[self.patching["head"] == -1]
        ablated = self.ablations
        icl = ablated.loc["none", "icl_score"]
        kinds = head_kinds(self.taxonomy)
        has_heads = bool(self.induction_heads)
        return {
            "val loss <= nanoGPT's 1.8857": self.val_loss <= 1.8857,
            "induction heads (score > 0.4)": len(self.induction_heads),
            "layers of the induction heads": ", ".join(str(l) for l in sorted({l for l, _ in self.induction_heads})) or "none",
            "induction accuracy > 10 x chance (1/65)": self.induction_acc > 10 / 65,
            "patching: attention layer restoring most": int(layers.loc[layers["effect"].idxmax(), "layer"]),
            "ablating induction heads removes >= half the ICL score":
                bool(icl < 0 and ablated.loc["induction heads", "icl_score"] - icl >= -ICL_SHARE * icl)
                if has_heads else NO_HEADS,
            "ablating induction heads hurts induction accuracy more than a control set":
                bool(ablated.loc["induction heads", "induction_acc"] < ablated.loc["control heads", "induction_acc"])
                if has_heads else NO_HEADS,
            "previous-token heads (layers)": ", ".join(str(l) for l, row in enumerate(kinds) if "previous_token" in row) or "none",
            "logit-lens point > 50% on induction": self.lens_point,
            "logit-lens point > 50% on text": self.text_lens_point,
            "emergence layer (first snapshot with a head > 0.4)": self.emergence["layer"],
        }


def seed_findings(model, val: torch.Tensor, checkpoint_dir: Path, n_sequences: int = 100, n_windows: int = 1024,
                  seed: int = 0) -> SeedFindings:
    """Every finding for one exported model (`checkpoint_dir` holds its emergence.json): repeated random
    sequences of n_ctx // 2 characters (`n_sequences`, generator `seed`) and `n_windows` validation windows
    (the loss at one position is noisy: 1,024 windows put the standard error of the in-context-learning
    score near 0.07 nats). The ablations remove the induction heads or, when no head scores above
    INDUCTION_THRESHOLD, the N_TOP best-scoring heads, and as many random other heads (the control)."""
    from mechlab.shakespeare.studies import full_val_loss
    cfg = model.cfg
    seq_len = cfg.n_ctx // 2
    tokens = repeated_random_tokens(cfg.d_vocab, seq_len, n_sequences, seed=seed)
    text = val_windows(val, cfg.n_ctx, n_windows)
    scores = induction_score(attention_patterns(model, tokens), seq_len)
    found = heads_above(scores, INDUCTION_THRESHOLD)
    all_heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    ablated = found or heads_above(scores, float("-inf"))[:N_TOP]  # without induction heads: the best-scoring ones
    sets = {ablated_name(found): ablated, "control heads": control_heads(all_heads, ablated, len(ablated), seed)}
    confidence, point = lens_convergence(model, tokens, seq_len)
    return SeedFindings(
        induction_scores=scores, induction_heads=found, induction_acc=induction_accuracy(model, tokens, seq_len),
        patching=layer_patching(model, tokens, seq_len), ablations=head_ablations(model, text, tokens, seq_len, sets),
        taxonomy=head_taxonomy_scores(model, tokens, text, seq_len), lens_confidence=confidence, lens_point=point,
        text_lens_point=text_lens_convergence(model, text)[1],
        emergence=emergence_point(load_emergence(checkpoint_dir)), val_loss=full_val_loss(model, val, cfg.n_ctx))


def replication_table(summaries: dict[str, dict[str, object]]) -> pd.DataFrame:
    """One row per finding, one column per seed, and `replicates`: whether every seed found the same."""
    table = pd.DataFrame(summaries)
    table["replicates"] = [len({str(value) for value in row}) == 1 for row in table.itertuples(index=False)]
    return table


def replication_share(table: pd.DataFrame) -> float:
    """Share of the findings (rows of `replication_table`) that replicate across every seed."""
    return float(table["replicates"].mean())


@torch.no_grad()
def sample_text(model, vocab: tuple[str, ...], prompt: str, n_chars: int, temperature: float = 1.0, seed: int = 0) -> str:
    """`prompt` continued by `n_chars` characters sampled from `model` (softmax at `temperature`, generator
    `seed`), reading at most the last n_ctx characters at each step."""
    from mechlab.toylm.data import decode, encode
    gen = torch.Generator().manual_seed(seed)
    tokens = encode(prompt, vocab).tolist()
    for _ in range(n_chars):
        context = torch.tensor(tokens[-model.cfg.n_ctx:])[None].to(model.cfg.device)
        probs = (model(context)[0, -1].float().cpu() / temperature).softmax(-1)
        tokens.append(int(torch.multinomial(probs, 1, generator=gen)))
    return decode(tokens, vocab)


def template_table(found: SeedFindings, replication: pd.DataFrame, parameters: int, steps: int) -> pd.DataFrame:
    """The seed document's findings template, each "TBD" answered from the measurements of one model
    (`found`, trained for `steps` steps, `parameters` parameters) and the seeds' `replication_table`."""
    from collections import Counter

    from mechlab.analysis.induction import head_kinds
    layers = found.patching[found.patching["head"] == -1].sort_values("effect", ascending=False)
    best = divmod(int(found.induction_scores.argmax()), found.induction_scores.shape[1])
    heads = ", ".join(f"L{l}H{h} ({found.induction_scores[l, h]:.2f})" for l, h in found.induction_heads)
    kinds = Counter(sum(head_kinds(found.taxonomy), []))
    name = ablated_name(found.induction_heads)
    ablation = found.ablations
    rows = [
        ("Models analyzed", "Total parameters", f"{parameters:,}"),
        ("Models analyzed", "Final loss", f"{found.val_loss:.4f} (validation, every character of the split)"),
        ("Induction capability", "Accuracy on [A][B]...[A] -> [B]",
         f"{found.induction_acc:.1%} against chance 1/65 = {1 / 65:.1%} ({65 * found.induction_acc:.1f} x chance)"),
        ("Layer localization", "Key layers (patching one layer's attention)",
         "; ".join(f"{r.component}: {r.effect:.2f}" for r in layers.head(2).itertuples())),
        ("Attention head analysis", "Induction heads (score > 0.4)",
         heads or f"none (best: L{best[0]}H{best[1]} at {found.induction_scores[best]:.3f})"),
        ("Attention head analysis", f"Ablating the {name}: ICL score",
         f"{ablation.loc['none', 'icl_score']:+.3f} -> {ablation.loc[name, 'icl_score']:+.3f} nats "
         f"(control: {ablation.loc['control heads', 'icl_score']:+.3f})"),
        ("Prediction formation", "Logit-lens convergence point (> 50%) on the repeat", found.lens_point),
        ("Prediction formation", "Logit-lens convergence point (> 50%) on Shakespeare", found.text_lens_point),
        ("Comparison to literature", "Emergence iteration",
         found.emergence["step"] if found.emergence["step"] is not None else f"none in {steps:,} steps"),
        ("Comparison to literature", "Layer location",
         found.emergence["layer"] if found.emergence["layer"] is not None else "n/a (no induction head)"),
        ("Comparison to literature", "Number of heads", len(found.induction_heads)),
        ("Attention head specialization", "Head taxonomy (head-detector kinds)",
         ", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items()))),
        ("Reproducibility", "Findings that replicate across seeds",
         f"{int(replication['replicates'].sum())} of {len(replication)} ({replication_share(replication):.0%})"),
        ("Implications for AI safety", "-", "not a measurement: left to the discussion"),
    ]
    return pd.DataFrame(rows, columns=["section", "entry", "measured"]).set_index(["section", "entry"])
