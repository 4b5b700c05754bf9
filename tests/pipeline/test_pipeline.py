"""The `make all` pipeline: notebooks run in order into reports that render offline, and
re-run only when something they depend on changed."""
from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from check_reports import check_report

REPO_ROOT = Path(__file__).resolve().parents[2]


def numbered_notebooks() -> list[Path]:
    return sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


NOTEBOOKS = numbered_notebooks()


def make(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run make in the repository root, outside any make that is running the tests."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "QUICK", "REPORTS")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def rendered_notebooks(dry_run_output: str) -> list[str]:
    """Notebook names that a `make -n` run would execute, in order."""
    return re.findall(r"render_notebook\.py notebooks/(\S+)\.ipynb", dry_run_output)


def test_make_all_runs_every_numbered_notebook_in_order(tmp_path):
    notebooks = [p.stem for p in numbered_notebooks()]
    quick = make("-n", "-B", "all", "QUICK=1", f"REPORTS={tmp_path}")
    assert quick.returncode == 0, quick.stderr
    assert rendered_notebooks(quick.stdout) == notebooks
    for line in quick.stdout.splitlines():
        if "render_notebook.py" in line:
            assert line.rstrip().endswith("--quick") and f"{tmp_path}/" in line, line

    full = make("-n", "-B", "all")
    assert rendered_notebooks(full.stdout) == notebooks
    assert "--quick" not in full.stdout and " reports/00_data.html" in full.stdout


def test_quick_reports_default_to_their_own_folder():
    dry = make("-n", "-B", "all", "QUICK=1")
    assert " reports/quick/00_data.html --quick" in dry.stdout


def test_the_report_checker_notices_a_figure_that_did_not_draw(tmp_path, chromium):
    import plotly.express as px

    fig = px.line(x=[1, 2, 3], y=[2, 1, 3])
    good, bad = tmp_path / "good.html", tmp_path / "bad.html"
    good.write_text(fig.to_html(include_plotlyjs=True))               # plotly.js inline: draws offline
    bad.write_text(fig.to_html(include_plotlyjs="cdn") + '<div id="circuits-vis-1"></div>')  # needs the network
    assert check_report(good, chromium).ok
    problems = check_report(bad, chromium).problems
    assert any("plotly view" in p and "did not draw" in p for p in problems), problems
    assert any("circuits-vis-1 did not draw" in p for p in problems), problems


@dataclass
class QuickRun:
    reports: Path
    notebooks: list[Path]  # the numbered notebooks when make started
    started: float


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> QuickRun:
    """`make all QUICK=1` into a fresh reports folder (every notebook, end to end)."""
    run = QuickRun(tmp_path_factory.mktemp("reports"), numbered_notebooks(), time.time())
    result = make("all", "QUICK=1", f"REPORTS={run.reports}", timeout=3600)
    assert result.returncode == 0, f"make all QUICK=1 failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    return run


@pytest.mark.slow
def test_every_notebook_produced_a_report(quick_run):
    assert sorted(p.name for p in quick_run.reports.glob("*.html")) == [f"{p.stem}.html" for p in quick_run.notebooks]


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_reports_draw_every_figure_offline(quick_run, chromium, notebook):
    report = quick_run.reports / f"{notebook.stem}.html"
    result = check_report(report, chromium)
    assert result.ok, "\n".join(result.problems)
    html = report.read_text()
    assert html.count("plotly.js v") <= 1, "plotly.js is embedded more than once"


@pytest.mark.slow
def test_make_all_is_incremental(quick_run):
    edited = [p for pattern in ("src/**/*.py", "notebooks/*.ipynb") for p in REPO_ROOT.glob(pattern)
              if p.stat().st_mtime > quick_run.started]
    if edited:  # someone edited the working tree during the run (never in CI, where it is a fresh clone)
        pytest.skip(f"files changed while make all ran, so the reports are rightly stale: {edited[:5]}")
    args = ("all", "QUICK=1", f"REPORTS={quick_run.reports}")
    # Only the data check runs again (it always does: file times cannot show an edited data file).
    stale = make("-n", "--debug=b", *args).stdout
    assert rendered_notebooks(stale) == [], "right after make all, no report should be out of date; make says:\n" + \
        "\n".join(line for line in stale.splitlines() if "newer than" in line or "does not exist" in line)
    # -W FILE: what would run if FILE had just changed (nothing is touched)
    assert rendered_notebooks(make("-n", "-W", "notebooks/00_data.ipynb", *args).stdout) == ["00_data"]
    everything = [p.stem for p in numbered_notebooks()]
    assert rendered_notebooks(make("-n", "-W", "src/mechlab/arithmetic/tokenizer.py", *args).stdout) == everything
    assert rendered_notebooks(make("-n", "-W", "data/manifest.json", *args).stdout) == everything
