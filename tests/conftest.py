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


@pytest.fixture
def tiny_model():
    """A randomly initialised 2-layer, 2-head model over the arithmetic vocabulary (seed 0), in float64
    so comparisons with TransformerLens' reference implementations are exact to ~1e-12."""
    torch.manual_seed(0)
    return build_model(TINY, device="cpu").double()


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
