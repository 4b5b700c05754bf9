"""Shared fixtures: the repository root, the data sets generated once per session, and Chromium."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))  # check_reports.py, render_notebook.py


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


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
