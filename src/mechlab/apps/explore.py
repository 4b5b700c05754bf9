"""The interactive explorer: a Gradio app over the committed HookedTransformer checkpoints.

    python -m mechlab.explore [--checkpoint PATH] [--port N]      (or `make explore`)

Serves on 127.0.0.1 only, with Gradio's analytics off and no share link; the page loads only
Gradio's own, locally served assets. What the page shows, per prompt (`Explorer.update`):

* the greedily generated answer (`arithmetic.task.greedy_answers`), each answer token's probability
  and the top alternatives at its position;
* attention: all heads at once (one heatmap, heads in a grid) or one head, over this prompt's tokens
  (left padding included: heads do attend to it);
* the logit lens (`analysis.attribution.logit_lens`): the top prediction at each answer position
  after each sublayer, coloured by the probability of the final answer token there;
* live intervention: zero-, mean- or resample-ablation of any set of heads and MLPs
  (`analysis.ablation.ablation_hooks`, reference activations from validation prompts), or patching
  them from a second prompt: resample ablation whose reference set is that one prompt, so every
  chosen component writes what it writes on the second prompt. Answer, probabilities, attention and
  lens are then those of the intervened model, beside the clean answer.

A component's role (`Explorer.role`) is read from tables measured when the model is first asked
about (`component_table`): for the main model, the circuit notebook's measurements on a sample of the
test split (mean-ablation exact-match drop, patching restore on a-, b- and wrap-pairs, mean direct
logit attribution, head-role-table label and attention masses; `arithmetic.circuit`); for the
single-token modular models, the accuracy drop under mean ablation over every (a, b) pair.

Bad input (`InputError`) is answered with a message in the page; the app keeps serving.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import torch

from mechlab.analysis.ablation import (
    METHODS,
    Component,
    ablation_hooks,
    ablation_sweep,
    heads,
    impact_class,
    mlps,
    reference_activations,
)
from mechlab.analysis.attention import attention_patterns
from mechlab.analysis.attribution import direct_logit_attribution, logit_lens, point_names
from mechlab.analysis.patching import batched_patch, run_cache
from mechlab.arithmetic import circuit as arith_circuit
from mechlab.arithmetic.pairs import DEFAULT_LAYOUTS, PAIR_KINDS, make_metrics, make_pairs
from mechlab.arithmetic.roles import head_role_table
from mechlab.arithmetic.task import TOKENIZER, ArithmeticSplit, evaluate_split, greedy_answers
from mechlab.arithmetic.tokenizer import (
    ANSWER_START,
    DIGIT_IDS,
    EQUALS_POS,
    MAX_ANSWER_DIGITS,
    MODEL_INPUT_LEN,
    PROMPT_WIDTH,
    VOCAB,
    TokenizerError,
)
from mechlab.core.io import load_torch_dict
from mechlab.core.model import load_checkpoint
from mechlab.core.plotting import REPO_ROOT, SEQUENTIAL_SCALE, TEMPLATE
from mechlab.modular import task as modular_task

CHECKPOINTS_DIR = REPO_ROOT / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINTS_DIR / "main" / "model.pt"
DEFAULT_PORT = 7860
HOST = "127.0.0.1"
PATCH = "patch from second prompt"  # the intervention beside the ablation METHODS
INTERVENTIONS = ("none", *METHODS, PATCH)
N_ALTERNATIVES = 3  # top alternatives shown per answer token
CHARS_FORMAT = "chars"  # the main study's character tokenizer; modular formats: modular_task.FORMATS
EXAMPLE_PROMPT = "999 + 1 mod 113 ="
# The house template (core/plotting), merged once: plotly validates an explicitly given template, or
# re-merges a "plotly_white+mechlab" default, on every figure (~40 ms each), but takes a registered
# default as is (~4 ms): the app makes this its default (`Explorer`).
APP_TEMPLATE = "mechlab_app"
TORCH_THREADS = 1  # one prompt through a small model: a second thread does not help, and on a shared CPU it stalls


class InputError(ValueError):
    """Input the model cannot read; the message is shown in the page as is."""


@dataclass(frozen=True)
class TableSizes:
    """How many rows the measured role tables use (the notebooks use more; see `component_table`)."""

    n_eval: int = 500       # test rows scored under each mean ablation
    n_reference: int = 512  # validation prompts for mean / resample values
    n_pairs: int = 32       # patching pairs per kind
    n_dla: int = 256        # test rows for direct logit attribution
    n_roles: int = 256      # test prompts for the head-role table


QUICK_TABLE = TableSizes(n_eval=100, n_reference=64, n_pairs=4, n_dla=32, n_roles=32)  # tests, quick notebooks


# --- models -----------------------------------------------------------------------------------------

def model_format(vocab: tuple[str, ...] | list[str]) -> str | None:
    """The input format of a checkpoint's vocabulary: "chars" (the main study's tokenizer), a modular
    format ("one_layer", "three_layer": single-token operands) or None (a model the app cannot drive,
    e.g. a toy language model)."""
    vocab = tuple(vocab)
    if vocab == tuple(VOCAB):
        return CHARS_FORMAT
    for fmt in ("one_layer", "three_layer"):
        if vocab == modular_task.vocab(fmt, len(vocab) - len(modular_task.vocab(fmt, 0))):
            return fmt
    return None


def find_checkpoints(root: Path = CHECKPOINTS_DIR) -> dict[str, Path]:
    """name -> model.pt of every HookedTransformer checkpoint under `root` whose tokenizer the app
    knows, named by its folder relative to `root` ("main", "three_layer/wd01"); "main" first."""
    found = {}
    for config in sorted(Path(root).glob("**/config.json")):
        cfg = json.loads(config.read_text())
        weights = config.parent / "model.pt"
        if cfg.get("kind", "transformer") == "transformer" and weights.exists() and model_format(cfg.get("vocab", ())):
            found[config.parent.relative_to(root).as_posix()] = weights
    return dict(sorted(found.items(), key=lambda item: item[0] != "main"))


@dataclass
class ExplorerModel:
    """A loaded model with what the app computes once for it (reference activations, role table)."""

    name: str
    model: torch.nn.Module
    fmt: str
    reference: dict[str, torch.Tensor] | None = None
    table: pd.DataFrame | None = None
    table_note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def p(self) -> int:
        """The modulus of a single-token model (its number tokens)."""
        return self.model.cfg.d_vocab - len(modular_task.vocab(self.fmt, 0))

    def components(self) -> list[Component]:
        return heads(self.model.cfg) + mlps(self.model.cfg)

    def component(self, name: str) -> Component:
        by_name = {c.name: c for c in self.components()}
        if name not in by_name:
            raise InputError(f"{name!r} is not a component of {self.name} (it has {', '.join(by_name)})")
        return by_name[name]

    def token_strings(self) -> list[str]:
        return list(VOCAB) if self.fmt == CHARS_FORMAT else list(modular_task.vocab(self.fmt, self.p))


def load_explorer_model(path: Path, name: str | None = None) -> ExplorerModel:
    """The checkpoint at `path` (config and vocabulary checked by `load_checkpoint`), in eval mode."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: `make train` writes checkpoints/main/model.pt")
    vocab = load_torch_dict(path, "model checkpoint")["config"].get("vocab", ())
    fmt = model_format(vocab)
    if fmt is None:
        raise ValueError(f"{path}: the explorer reads the arithmetic tokenizer and single-token modular models only")
    model = load_checkpoint(path, device="cpu").eval()
    return ExplorerModel(name or path.parent.name, model, fmt)


# --- inputs -----------------------------------------------------------------------------------------

def prompt_tokens(em: ExplorerModel, prompt: str | None = None, a: float | None = None,
                  b: float | None = None) -> torch.Tensor:
    """[1, pos] model input for a prompt: text for the character tokenizer (" =" added when missing),
    operands `a`, `b` for a single-token model. Raises InputError naming what is wrong."""
    if em.fmt == CHARS_FORMAT:
        text = (prompt or "").strip()
        if not text:
            raise InputError(f"Empty prompt: type one like '{EXAMPLE_PROMPT}'.")
        if not text.endswith("="):
            text += " ="
        if len(text) > PROMPT_WIDTH:
            raise InputError(f"Operands too long for this model: {text!r} has {len(text)} characters, the model reads "
                             f"at most {PROMPT_WIDTH} ('1999 + 1999 mod 113 =').")
        try:
            return torch.tensor([TOKENIZER.encode_prompt(text)])
        except TokenizerError as err:
            raise InputError(f"Cannot read the prompt: {err}.") from None
    operands = []
    for name, value in (("a", a), ("b", b)):
        if value is None or value == "":
            raise InputError(f"Operand {name} is empty: give an integer from 0 to {em.p - 1}.")
        if float(value) != int(value) or not 0 <= int(value) < em.p:
            raise InputError(f"Operand {name} = {value} is not an integer from 0 to {em.p - 1}.")
        operands.append(int(value))
    return modular_task.encode(torch.tensor([operands]), em.fmt, em.p)


def problem_text(em: ExplorerModel, tokens: torch.Tensor) -> str:
    """The prompt a [1, pos] input spells, e.g. "999 + 1 mod 113 =" or "5 + 7 =" (mod p)."""
    if em.fmt == CHARS_FORMAT:
        return TOKENIZER.decode(tokens[0, :ANSWER_START])
    a, b = tokens[0, 0].item(), tokens[0, -2].item()
    return f"{a} + {b} mod {em.p} ="


# --- one run ----------------------------------------------------------------------------------------

@dataclass
class Run:
    """A prompt through the model (with any intervention hooks): what the page shows."""

    problem: str
    tokens: torch.Tensor        # [1, pos] model input: prompt and generated answer
    answer: str                 # generated answer text (up to <eos>)
    steps: list[dict]           # per answer token: position, token, prob, alternatives [(token, prob)]
    patterns: torch.Tensor      # [n_layers, n_heads, pos, pos] attention on `tokens`
    lens_top: list[list[str]]   # [point][answer position] top prediction after each sublayer
    lens_prob: np.ndarray       # [point, answer position] probability of the final answer token there
    lens_points: list[str]      # readable lens points ("embeddings", "layer 0 attention", ...)
    answer_positions: list[int] # positions whose logits give the answer tokens
    decoded: torch.Tensor       # [1, pos] everything greedy decoding read (the reference when patching from it)


def _answer_steps(em: ExplorerModel, logits: torch.Tensor, chosen: list[int], candidates: torch.Tensor) -> list[dict]:
    """Probability of each chosen answer token and the top alternatives among `candidates`.
    logits: [k, d_vocab] at the positions that predict them."""
    names = em.token_strings()
    steps = []
    for k, token in enumerate(chosen):
        probs = torch.zeros(logits.shape[-1])
        probs[candidates] = logits[k, candidates].softmax(-1)
        order = [i for i in probs.argsort(descending=True).tolist() if i != token][:N_ALTERNATIVES]
        steps.append({"position": k, "token": names[token], "prob": probs[token].item(),
                      "alternatives": [(names[i], probs[i].item()) for i in order]})
    return steps


@torch.no_grad()
def run_prompt(em: ExplorerModel, tokens: torch.Tensor, hooks: list | tuple = ()) -> Run:
    """Generate the answer to `tokens` [1, pos] with `hooks` on, then read probabilities, attention and
    the logit lens from the same (hooked) model on the prompt and its generated answer."""
    model = em.model
    with model.hooks(fwd_hooks=list(hooks)):
        if em.fmt == CHARS_FORMAT:
            generated = greedy_answers(model, tokens)[0].tolist()  # digits, <eos>, then whatever follows
            n_answer = generated.index(TOKENIZER.eos_id) + 1 if TOKENIZER.eos_id in generated else len(generated)
            chosen = generated[:n_answer]
            seq = torch.cat([tokens, torch.tensor([chosen[:-1]], dtype=tokens.dtype)], dim=1)
            decoded = torch.cat([tokens, torch.tensor([generated[:-1]], dtype=tokens.dtype)], dim=1)
            positions = list(range(EQUALS_POS, EQUALS_POS + n_answer))
            candidates = torch.arange(model.cfg.d_vocab)
            answer = TOKENIZER.decode_answer(chosen)
        else:
            seq = decoded = tokens
            positions = [tokens.shape[1] - 1]
            candidates = torch.arange(em.p)
            chosen = [int(model(seq)[0, -1, :em.p].argmax())]
            answer = str(chosen[0])
        logits, cache = model.run_with_cache(seq, names_filter=lambda n: n.endswith("hook_pattern"))
        patterns = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0] for l in range(model.cfg.n_layers)])
        lens = logit_lens(model, seq, positions, torch.tensor([chosen]),
                          candidate_ids=None if em.fmt == CHARS_FORMAT else candidates)
    names = em.token_strings()
    return Run(problem=problem_text(em, tokens), tokens=seq, answer=answer,
               steps=_answer_steps(em, logits[0, positions], chosen, candidates), patterns=patterns,
               lens_top=[[names[t] for t in row] for row in lens.top[0].tolist()],
               lens_prob=lens.correct_logprob[0].exp().numpy(), lens_points=point_names(lens.labels),
               answer_positions=positions, decoded=decoded)


# --- interventions ----------------------------------------------------------------------------------

def reference_for(em: ExplorerModel, data_dir: Path, n_reference: int) -> dict[str, torch.Tensor]:
    """Reference activations for mean / resample ablation (computed once per model): validation
    prompts teacher-forced with their answers (as notebooks 04 and 07), or every (a, b) pair of a
    single-token model."""
    if em.reference is None:
        if em.fmt == CHARS_FORMAT:
            inputs = ArithmeticSplit.load(Path(data_dir), "val", limit=n_reference).tokens[:, :MODEL_INPUT_LEN]
        else:
            inputs = modular_task.encode(modular_task.all_pairs(em.p), em.fmt, em.p)
        em.reference = reference_activations(em.model, inputs)
    return em.reference


def intervention_hooks(em: ExplorerModel, components: list[str], method: str, second: Run | None = None,
                       data_dir: Path = REPO_ROOT / "data", n_reference: int = TableSizes.n_reference) -> list:
    """Forward hooks for `method` ("none", "zero", "mean", "resample" or PATCH) on the named components,
    all from `analysis.ablation.ablation_hooks`. PATCH is resample ablation whose reference set is the
    second prompt's run (`second`, its prompt and generated answer) alone."""
    if method not in INTERVENTIONS:
        raise InputError(f"Unknown intervention {method!r}: choose one of {', '.join(INTERVENTIONS)}.")
    chosen = [em.component(name) for name in components or []]
    if method == "none" or not chosen:
        return []
    if method == PATCH:
        if second is None:
            raise InputError("Patching needs a second prompt: type one in 'patch from'.")
        return ablation_hooks(chosen, "resample", reference_activations(em.model, second.decoded))
    reference = reference_for(em, data_dir, n_reference) if method != "zero" else None
    return ablation_hooks(chosen, method, reference)


# --- measured roles ---------------------------------------------------------------------------------

@torch.no_grad()
def arithmetic_component_table(model, data_dir: Path, reference: dict[str, torch.Tensor],
                               sizes: TableSizes = TableSizes()) -> pd.DataFrame:
    """Notebook 07's measurements of every head and MLP on a sample of the test split
    (`arithmetic.circuit.component_measurements`), with the choice rule's verdict (`choose_circuit`),
    the measured role text (`node_roles`) and, for heads, the head-role table's label and masses."""
    components = heads(model.cfg) + mlps(model.cfg)
    test_rows = ArithmeticSplit.load(Path(data_dir), "test")
    test = ArithmeticSplit(test_rows.rows[:sizes.n_eval], test_rows.tokens[:sizes.n_eval])
    sweep = ablation_sweep(model, partial(evaluate_split, split=test, prefix="ablated"), components, ["mean"],
                           reference, metric="ablated_exact")
    head_restore, mlp_restore = {}, {}
    for kind in PAIR_KINDS:
        pairs = make_pairs(test_rows.rows, kind, sizes.n_pairs, seed=0, digits=DEFAULT_LAYOUTS[kind])
        metric = make_metrics(model, pairs)["logit_diff"]
        _, clean_cache = run_cache(model, pairs.clean_tokens)
        _, corrupted_cache = run_cache(model, pairs.corrupted_tokens)
        head_restore[kind] = batched_patch(model, pairs.corrupted_tokens, clean_cache, metric, "z_all_pos",
                                           corrupted_cache=corrupted_cache)
        mlp_restore[kind] = batched_patch(model, pairs.corrupted_tokens, clean_cache, metric, "mlp_out",
                                          corrupted_cache=corrupted_cache)
    dla_tokens = test_rows.tokens[:sizes.n_dla]
    digits = dla_tokens[:, ANSWER_START:ANSWER_START + MAX_ANSWER_DIGITS]
    dla = direct_logit_attribution(model, dla_tokens[:, :MODEL_INPUT_LEN], range(EQUALS_POS, EQUALS_POS + MAX_ANSWER_DIGITS),
                                   digits, candidate_ids=DIGIT_IDS, valid=torch.isin(digits, DIGIT_IDS))
    dla_mean = dla.table().groupby("component")["value"].mean()
    role_inputs = test_rows.tokens[:sizes.n_roles, :MODEL_INPUT_LEN]
    role_table = head_role_table(attention_patterns(model, role_inputs), role_inputs)
    measured = arith_circuit.component_measurements(components, sweep, head_restore, mlp_restore, dla_mean)
    table = arith_circuit.choose_circuit(measured)
    table["role"] = pd.Series(arith_circuit.node_roles(measured, role_table))
    table["impact"] = [impact_class(d) for d in table["drop"]]
    labels = role_table.set_index("head")
    table = table.join(labels.drop(columns=["layer"]), how="left")
    table.attrs["note"] = (f"measured on {len(test)} test rows (ablation), {sizes.n_pairs} pairs per kind (patching), "
                           f"{len(dla_tokens)} rows (DLA), {len(role_inputs)} prompts (head-role table); "
                           f"unablated exact match {sweep.loc[sweep.component == 'none', 'score'].item():.3f}")
    return table


@torch.no_grad()
def modular_component_table(em: ExplorerModel, reference: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Accuracy drop of every head and MLP of a single-token model under mean ablation, over every pair."""
    pairs = modular_task.all_pairs(em.p)
    score = partial(modular_task.evaluate_pairs, pairs=pairs, fmt=em.fmt, prefix="all", p=em.p)
    sweep = ablation_sweep(em.model, score, em.components(), ["mean"], reference, metric="all_acc")
    table = sweep[sweep.component != "none"].set_index("component")[["kind", "layer", "drop", "impact"]]
    table["role"] = [f"mean-ablation accuracy drop {d:.3f} ({i})" for d, i in zip(table["drop"], table["impact"])]
    table.attrs["note"] = (f"measured on all {len(pairs):,} pairs; unablated accuracy "
                           f"{sweep.loc[sweep.component == 'none', 'score'].item():.3f}")
    return table


def component_table(em: ExplorerModel, data_dir: Path, sizes: TableSizes = TableSizes()) -> pd.DataFrame:
    """The measured role table of `em` (computed on first use, then kept)."""
    if em.table is None:
        reference = reference_for(em, data_dir, sizes.n_reference)
        em.table = (arithmetic_component_table(em.model, data_dir, reference, sizes) if em.fmt == CHARS_FORMAT
                    else modular_component_table(em, reference))
    return em.table


def describe_component(table: pd.DataFrame, name: str) -> str:
    """Markdown: a component's measured role and the numbers behind it, from a `component_table`."""
    if name not in table.index:
        raise InputError(f"{name!r} is not in the role table (components: {', '.join(table.index)})")
    row = table.loc[name]
    lines = [f"### {name}: {row['role']}", "",
             f"* mean-ablation drop: **{row['drop']:.3f}** ({row['impact']})"]
    restores = [c for c in table.columns if c.startswith("restore:")]
    if restores:
        lines.append("* patching restore (normalized logit difference, all positions): "
                     + ", ".join(f"{c.removeprefix('restore:')}-pairs {row[c]:.2f}" for c in restores))
    if "dla" in table.columns:
        lines.append(f"* mean direct logit attribution to the answer digit: {row['dla']:.2f}")
    if "chosen_by" in table.columns:
        lines.append(f"* circuit choice rule: {'in the circuit, by ' + row['chosen_by'] if row['in_circuit'] else 'not chosen'}")
    if isinstance(row.get("label"), str):
        masses = {c.removeprefix("mass:"): row[c] for c in table.columns if c.startswith("mass:")}
        top = sorted(masses.items(), key=lambda kv: -kv[1])[:3]
        lines.append(f"* attention label: {row['label']} (from answer positions: "
                     + ", ".join(f"{k} {v:.2f}" for k, v in top)
                     + f"; previous-token {row['prev_token']:.2f}, self {row['self']:.2f})")
    lines += ["", f"_{table.attrs.get('note', '')}_"]
    return "\n".join(lines)


# --- what the page shows ----------------------------------------------------------------------------

def token_labels(em: ExplorerModel, run: Run) -> list[str]:
    names = em.token_strings()
    shown = {" ": "␣", "<pad>": "_"}
    return [f"{i}:{shown.get(names[t], names[t])}" for i, t in enumerate(run.tokens[0].tolist())]


def sequential_heatmap(z: np.ndarray, x: list[str] | None = None, y: list[str] | None = None, title: str = "",
                       colorbar: str = "", text: list[list[str]] | None = None) -> go.Figure:
    """A [rows, cols] heatmap of values in [0, 1] on the house sequential scale, row 0 on top (as
    `core.plotting.heatmap` draws it; built from `go.Heatmap` rather than `px.imshow`, which alone
    takes most of the app's time budget)."""
    trace = go.Heatmap(z=z, x=x, y=y, colorscale=SEQUENTIAL_SCALE, zmin=0, zmax=1, colorbar=dict(title=colorbar))
    if text is not None:
        trace.update(text=text, texttemplate="%{text}", textfont=dict(size=14))
    return go.Figure(trace, layout=dict(title=title, yaxis=dict(autorange="reversed")))


def attention_figure(em: ExplorerModel, run: Run, head: str = "all") -> go.Figure:
    """One head's attention over the prompt's tokens, or every head at once ("all"): one heatmap
    with the heads in a grid (a row per layer), separated by gaps."""
    labels = token_labels(em, run)
    pat = run.patterns.numpy()  # [L, H, pos, pos]
    if head != "all":
        comp = em.component(head)
        if comp.kind != "head":
            raise InputError(f"{head} is not a head")
        fig = sequential_heatmap(pat[comp.layer, comp.head], x=labels, y=labels, colorbar="attention",
                                 title=f"{head} attention on {run.problem} {run.answer} (rows: destination, columns: source)")
        return fig.update_layout(height=650)
    n_layers, n_heads, n, _ = pat.shape
    gap = 1
    grid = np.full((n_layers * (n + gap) - gap, n_heads * (n + gap) - gap), np.nan)
    for l in range(n_layers):
        for h in range(n_heads):
            grid[l * (n + gap):l * (n + gap) + n, h * (n + gap):h * (n + gap) + n] = pat[l, h]
    fig = sequential_heatmap(grid, colorbar="attention",
                             title=f"Attention of every head on {run.problem} {run.answer} (rows: layers; columns: heads)")
    fig.update_xaxes(tickvals=[h * (n + gap) + n / 2 for h in range(n_heads)], ticktext=[f"H{h}" for h in range(n_heads)])
    fig.update_yaxes(tickvals=[l * (n + gap) + n / 2 for l in range(n_layers)], ticktext=[f"L{l}" for l in range(n_layers)])
    return fig.update_layout(height=140 * n_layers + 120)


def lens_figure(em: ExplorerModel, run: Run) -> go.Figure:
    """The logit lens: rows = residual-stream points, columns = answer positions; each cell shows the
    top prediction there, coloured by the probability of the final answer token."""
    cols = [f"{k + 1}: {step['token']}" for k, step in enumerate(run.steps)]  # numbered: tokens repeat
    fig = sequential_heatmap(run.lens_prob, x=cols, y=run.lens_points, colorbar="p(final)", text=run.lens_top,
                             title="Logit lens: top prediction after each sublayer (colour: probability of the final answer)")
    return fig.update_layout(height=60 + 40 * len(run.lens_points))


def _steps_table(run: Run, title: str) -> list[str]:
    """Markdown rows: each answer token of `run`, its probability and the top alternatives."""
    def esc(token: str) -> str:
        return token.replace("<", "&lt;").replace(">", "&gt;")
    lines = ["", f"| {title} | probability | top alternatives |", "|---|---|---|"]
    for step in run.steps:
        alts = ", ".join(f"{esc(t)} {p:.3f}" for t, p in step["alternatives"])
        lines.append(f"| {esc(step['token'])} | {step['prob']:.3f} | {alts} |")
    return lines


def answer_markdown(clean: Run, intervened: Run | None = None, what: str = "") -> str:
    """The answer line and a table of each answer token's probability and top alternatives; with an
    intervention, both answers and both tables (intervened first)."""
    if intervened is None:
        return "\n".join([f"## {clean.problem} **{clean.answer}**", *_steps_table(clean, "answer token")])
    changed = "changed" if intervened.answer != clean.answer else "unchanged"
    return "\n".join([f"## {clean.problem} **{clean.answer}** → with {what}: **{intervened.answer}** ({changed})",
                      *_steps_table(intervened, "with the intervention"), *_steps_table(clean, "clean model")])


def error_markdown(message: str) -> str:
    return f"### ⚠ {message}"


# --- the callbacks ----------------------------------------------------------------------------------

class Explorer:
    """The app's callbacks as plain functions over the checkpoints (name -> model.pt), loaded on first
    use. `update` is the whole page for one prompt; `role` one component's measured role."""

    def __init__(self, checkpoints: dict[str, Path], data_dir: Path = REPO_ROOT / "data",
                 sizes: TableSizes = TableSizes()):
        if not checkpoints:
            raise ValueError("no checkpoints to explore")
        self.checkpoints, self.data_dir, self.sizes = dict(checkpoints), Path(data_dir), sizes
        self.models: dict[str, ExplorerModel] = {}
        pio.templates[APP_TEMPLATE] = pio.templates[TEMPLATE]
        pio.templates.default = APP_TEMPLATE  # the house look, at the cost of a default (see APP_TEMPLATE)
        self._lock = threading.Lock()  # one role table measured at a time (the page may ask while warm() runs)

    @property
    def default(self) -> str:
        return next(iter(self.checkpoints))

    def model(self, name: str) -> ExplorerModel:
        if name not in self.checkpoints:
            raise InputError(f"Unknown model {name!r}: choose one of {', '.join(self.checkpoints)}.")
        if name not in self.models:
            self.models[name] = load_explorer_model(self.checkpoints[name], name)
        return self.models[name]

    def widgets(self, name: str) -> dict:
        """What the page's inputs show for model `name`: which input widget (text or two operands), the
        operand range, the component and head choices."""
        em = self.model(name)
        comps = [c.name for c in em.components()]
        return {"text_input": em.fmt == CHARS_FORMAT, "max_operand": em.p - 1 if em.fmt != CHARS_FORMAT else None,
                "components": comps, "heads": ["all"] + [c for c in comps if c.startswith("L")]}

    def run(self, name: str, prompt: str | None = None, a: float | None = None, b: float | None = None,
            components: list[str] | None = None, method: str = "none", second_prompt: str | None = None,
            second_a: float | None = None, second_b: float | None = None) -> tuple[Run, Run | None, str]:
        """(clean run, intervened run or None, description of the intervention). Raises InputError."""
        em = self.model(name)
        tokens = prompt_tokens(em, prompt, a, b)
        clean = run_prompt(em, tokens)
        if method == "none" or not components:
            return clean, None, ""
        second = None
        if method == PATCH:
            try:
                second = run_prompt(em, prompt_tokens(em, second_prompt, second_a, second_b))
            except InputError as err:
                raise InputError(f"Second prompt (patch from): {err}") from None
        hooks = intervention_hooks(em, components, method, second, self.data_dir, self.sizes.n_reference)
        what = (f"{', '.join(components)} patched from {second.problem} {second.answer}" if second
                else f"{', '.join(components)} {method}-ablated")
        return clean, run_prompt(em, tokens, hooks), what

    def update(self, name: str, prompt: str | None = None, a: float | None = None, b: float | None = None,
               components: list[str] | None = None, method: str = "none", second_prompt: str | None = None,
               head: str = "all", second_a: float | None = None,
               second_b: float | None = None) -> tuple[str, go.Figure | None, go.Figure | None]:
        """The page for one prompt: (answer markdown, attention figure, logit-lens figure). Figures are of
        the intervened model when there is an intervention. Bad input: (message, None, None)."""
        try:
            clean, intervened, what = self.run(name, prompt, a, b, components, method, second_prompt, second_a, second_b)
            shown = intervened or clean
            em = self.model(name)
            return answer_markdown(clean, intervened, what), attention_figure(em, shown, head), lens_figure(em, shown)
        except InputError as err:
            return error_markdown(str(err)), None, None

    def role(self, name: str, component: str) -> str:
        """Markdown: the component's measured role (the role table is measured on first use)."""
        try:
            em = self.model(name)
            em.component(component)
            with self._lock:
                table = component_table(em, self.data_dir, self.sizes)
            return describe_component(table, component)
        except InputError as err:
            return error_markdown(str(err))

    def warm(self, name: str | None = None) -> threading.Thread:
        """Measure model `name`'s role table (default: the first model) in a background thread, so the
        first click on the role panel does not wait for it."""
        em = self.model(name or self.default)

        def measure():
            with self._lock:
                component_table(em, self.data_dir, self.sizes)

        thread = threading.Thread(target=measure, daemon=True, name="explorer-roles")
        thread.start()
        return thread


# --- the app ----------------------------------------------------------------------------------------

def build_app(explorer: Explorer):
    """The Gradio Blocks page over `explorer`'s callbacks (gradio imported here: the `explorer` extra)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    start = explorer.widgets(explorer.default)
    with gr.Blocks(title="mechlab explorer", analytics_enabled=False) as app:
        gr.Markdown("# mechlab explorer\nType a prompt, read the answer, the attention of every head and the "
                    "logit lens; ablate or patch heads and MLPs and watch the answer change. Roles are measured, "
                    "not hand-written (see the role panel).")
        with gr.Row():
            model_name = gr.Dropdown(list(explorer.checkpoints), value=explorer.default, label="model", elem_id="model")
            prompt = gr.Textbox(EXAMPLE_PROMPT, label="prompt", elem_id="prompt", visible=start["text_input"])
            a = gr.Number(5, label="a", precision=0, elem_id="a", visible=not start["text_input"])
            b = gr.Number(7, label="b", precision=0, elem_id="b", visible=not start["text_input"])
        with gr.Row():
            components = gr.CheckboxGroup(start["components"], label="components to intervene on", elem_id="components")
        with gr.Row():
            method = gr.Radio(list(INTERVENTIONS), value="none", label="intervention", elem_id="method")
            second = gr.Textbox("123 + 456 mod 113 =", label="patch from (second prompt)", elem_id="second",
                                visible=start["text_input"])
            second_a = gr.Number(1, label="patch from a", precision=0, visible=not start["text_input"])
            second_b = gr.Number(2, label="patch from b", precision=0, visible=not start["text_input"])
            head = gr.Dropdown(start["heads"], value="all", label="attention: all heads or one", elem_id="head")
        go_button = gr.Button("Run", variant="primary", elem_id="run")
        answer = gr.Markdown(elem_id="answer")
        attention = gr.Plot(label="attention", elem_id="attention")
        lens = gr.Plot(label="logit lens", elem_id="lens")
        with gr.Row():
            role_of = gr.Dropdown(start["components"], value=start["components"][0], label="measured role of",
                                  elem_id="role_of")
            role_button = gr.Button("Show role (measured on first use: a few seconds)", elem_id="role_button")
        role = gr.Markdown(elem_id="role")

        inputs = [model_name, prompt, a, b, components, method, second, head, second_a, second_b]
        for trigger in (go_button.click, prompt.submit):
            trigger(explorer.update, inputs, [answer, attention, lens], api_name="update" if trigger == go_button.click else False)
        role_button.click(explorer.role, [model_name, role_of], role, api_name="role")

        def pick(name):
            w = explorer.widgets(name)
            text, bounds = w["text_input"], dict(minimum=0, maximum=w["max_operand"])
            return (gr.update(visible=text), gr.update(visible=not text, **bounds), gr.update(visible=not text, **bounds),
                    gr.update(visible=text), gr.update(visible=not text, **bounds), gr.update(visible=not text, **bounds),
                    gr.update(choices=w["components"], value=[]), gr.update(choices=w["heads"], value="all"),
                    gr.update(choices=w["components"], value=w["components"][0]))

        model_name.change(pick, model_name, [prompt, a, b, second, second_a, second_b, components, head, role_of],
                          api_name=False)
        app.load(explorer.update, inputs, [answer, attention, lens], api_name=False)
    return app


def launch(explorer: Explorer, port: int = DEFAULT_PORT, block: bool = True):
    """Serve the app on 127.0.0.1:`port`, analytics off, no share link. Returns gradio's (app, url, _)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    app = build_app(explorer)
    return app, app.launch(server_name=HOST, server_port=port, share=False, inbrowser=False,
                           prevent_thread_lock=not block, quiet=not block, footer_links=[])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mechlab.explore", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="one model.pt to explore (default: every committed HookedTransformer checkpoint, main first)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data", help="test/val splits for the role tables")
    args = parser.parse_args(argv)
    if args.checkpoint and not args.checkpoint.exists():
        parser.error(f"no checkpoint at {args.checkpoint}")
    checkpoints = {args.checkpoint.parent.name: args.checkpoint} if args.checkpoint else find_checkpoints()
    torch.set_grad_enabled(False)
    torch.set_num_threads(TORCH_THREADS)
    explorer = Explorer(checkpoints, args.data_dir)
    explorer.warm()
    print(f"explorer on http://{HOST}:{args.port} (measuring {explorer.default}'s role table in the background)")
    launch(explorer, args.port)
