"""Shared fixtures: the repository root, a tiny arithmetic model, the data sets generated once per
session, and Chromium."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from mechlab.arithmetic.tokenizer import VOCAB
from mechlab.core.model import ModelConfig, build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))  # check_reports.py, render_notebook.py


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


# The main study's layout and vocabulary with a tiny architecture: what analysis tests run on.
TINY = ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=len(VOCAB), n_ctx=32)


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    return TINY


# Operands of every digit length, wrapping and not: patching pairs are drawn from these rows.
MIXED_OPERANDS = [(a, b) for a in (3, 12, 45, 78, 99, 150, 234, 431, 567, 800, 950) for b in (5, 30, 55, 103, 313, 640, 999)]


@pytest.fixture(scope="session")
def mixed_rows() -> list[dict]:
    """Data rows (as in data/*.jsonl) for MIXED_OPERANDS mod 113."""
    from mechlab.arithmetic.data import MODULUS, Example, bucket_of
    return [Example(a, b, MODULUS, bucket_of(a, b)).to_json() for a, b in MIXED_OPERANDS]


@pytest.fixture
def tiny_model():
    """A randomly initialised 2-layer, 2-head model over the arithmetic vocabulary (seed 0), in float64
    so comparisons with TransformerLens' reference implementations are exact to ~1e-12."""
    torch.manual_seed(0)
    return build_model(TINY, device="cpu").to(torch.float64)  # .to also sets cfg.dtype


class ArithmeticOracle(torch.nn.Module):
    """A stand-in for a trained arithmetic model: it reads each prompt from its tokens and puts all
    its logit mass on the true next answer token, except that on rows where `wrong(a, b, m)` holds it
    answers one digit too high in the last answer digit. Its exact match is known exactly, so tests
    of scoring, greedy decoding and ablation can fail (a random model scores 0 everywhere).
    `operators`: the tokenizer's (the multi-task "+-*" too); rows whose operator is in `wrong_ops` are wrong."""

    def __init__(self, wrong=lambda a, b, m: False, operators: str = "+", wrong_ops: str = ""):
        super().__init__()
        self.wrong, self.operators, self.wrong_ops = wrong, operators, wrong_ops
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # gives the module a device and dtype

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [batch, pos] -> [batch, pos, d_vocab]
        from mechlab.arithmetic.tokenizer import ANSWER_START, EQUALS_POS, ArithmeticTokenizer, parse_prompt

        tok = ArithmeticTokenizer(self.operators)
        logits = torch.full((*tokens.shape, tok.vocab_size), -10.0)
        for row, ids in enumerate(tokens.tolist()):
            problem = parse_prompt(tok.decode(ids[:ANSWER_START]), self.operators)
            answer = list(problem.answer)
            if self.wrong(problem.a, problem.b, problem.m) or problem.op in self.wrong_ops:
                answer[-1] = str((int(answer[-1]) + 1) % 10)
            targets = tok.encode_answer("".join(answer))  # digits, <eos>, <pad>...
            for pos in range(EQUALS_POS, tokens.shape[1]):
                logits[row, pos, targets[min(pos - EQUALS_POS, len(targets) - 1)]] = 10.0
        return logits + self.dummy


@pytest.fixture
def arithmetic_oracle():
    """`arithmetic_oracle(wrong=...)`: an ArithmeticOracle (see there)."""
    return ArithmeticOracle


def make_tiny_task():
    """The main task on the first 600 rows of each split (made in memory from the data seed); also
    what a test's subprocess builds (tests/core/test_resume.py)."""
    from mechlab.arithmetic.data import make_splits
    from mechlab.arithmetic.task import ArithmeticSplit, ArithmeticTask

    rows = {name: [e.to_json() for e in examples[:600]] for name, examples in make_splits().items()}
    return ArithmeticTask(ArithmeticSplit.from_rows(rows["train"]), ArithmeticSplit.from_rows(rows["val"]),
                          batch_size=32, seed=0, train_eval_size=100)


@pytest.fixture(scope="session")
def tiny_task():
    """`make_tiny_task()`, once per session."""
    return make_tiny_task()


@pytest.fixture(scope="session")
def committed_manifest() -> dict:
    return json.loads((REPO_ROOT / "data" / "manifest.json").read_text())


@pytest.fixture(scope="session")
def generated_data(tmp_path_factory, committed_manifest) -> tuple[Path, dict]:
    """Every data set regenerated from the committed seed into a fresh folder: (folder, manifest)."""
    from mechlab.arithmetic.data import write_datasets

    data_dir = tmp_path_factory.mktemp("data")
    return data_dir, write_datasets(data_dir, seed=committed_manifest["seed"])


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium to render reports with. Skips when there is none, except under CI
    (CI set in the environment), where a missing browser is a failure: .ci/run installs it."""
    from check_reports import find_chromium

    path = find_chromium()
    if path is None:
        message = "no Chromium: install it (Debian: apt-get install chromium) or set CHROMIUM"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this is not skipped)")
        pytest.skip(message)
    return path
