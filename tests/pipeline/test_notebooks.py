"""Notebook hygiene, and the display helpers every notebook uses for offline reports."""
from __future__ import annotations

import ast
import json
import re
import threading
from pathlib import Path

import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from mechlab.core import plotting

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
NUMBERED = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_numbered_notebooks():
    assert any(p.name.startswith("00_") for p in NUMBERED)


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    dirty = [i for i, c in enumerate(cells(path))
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing "
                       "(jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)")


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.name)
def test_numbered_notebooks_have_a_parameters_cell_with_quick_false(path):
    tagged = [c for c in cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters' (papermill), has {len(tagged)}"
    assigned = {node.targets[0].id: node.value for node in ast.parse(source(tagged[0])).body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    assert "quick" in assigned and isinstance(assigned["quick"], ast.Constant) and assigned["quick"].value is False, \
        f"{path.name}: the parameters cell must set `quick = False` (make all QUICK=1 passes quick=True)"


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.name)
def test_notebooks_that_draw_call_setup_notebook_first(path):
    code = [source(c) for c in cells(path) if c["cell_type"] == "code"]
    draws = [i for i, s in enumerate(code) if any(call in s for call in (".show()", "show_circuitsvis(", "attention_view(", "cv."))]
    setup = [i for i, s in enumerate(code) if "setup_notebook(" in s]
    if draws:
        assert setup and setup[0] <= draws[0], (
            f"{path.name} draws figures but does not call mechlab.core.plotting.setup_notebook() before the first one: "
            "without it the report loads plotly/circuitsvis from a CDN and shows nothing offline")


# ---- the display helpers ------------------------------------------------------------------------
def test_setup_embeds_plotly_and_circuitsvis_once_without_a_cdn():
    html = plotting.plotlyjs_html() + plotting.circuitsvis_bundle_html()
    assert html.count("plotly.js v") == 1          # plotly.js's own banner
    assert html.count("var CircuitsVis") == 1      # circuitsvis's global
    assert "<script src=" not in html and "unpkg.com" not in html


def test_figures_are_small_divs_calling_the_loaded_plotly():
    fig = px.line(x=[1, 2, 3], y=[3, 1, 2])
    html = pio.renderers[plotting.TEMPLATE_NAME].to_mimebundle(fig.to_dict())["text/html"]
    assert 'class="plotly-graph-div"' in html and "Plotly.newPlot" in html
    assert "<script src=" not in html and "mathjax" not in html.lower()
    assert len(html) < 20_000  # no copy of plotly.js (several MB)


def test_circuitsvis_views_call_the_loaded_bundle():
    import circuitsvis as cv
    import torch

    rendered = cv.attention.attention_patterns(tokens=["a", "b", "c"], attention=torch.rand(2, 3, 3))
    html = plotting.circuitsvis_html(rendered)
    assert len(rendered.local_src) > 1_000_000      # circuitsvis alone inlines its 1 MB bundle per view
    assert len(html) < 5_000
    assert "CircuitsVis.render(" in html and "CircuitsVis.AttentionPatterns" in html
    assert html.startswith('<div id="circuits-vis-') and "</div>" in html.split("<script")[0]
    assert "unpkg.com" not in html


def test_setup_notebook_sets_the_renderer_and_template(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    old = pio.renderers.default, pio.templates.default
    try:
        plotting.setup_notebook()
        assert pio.renderers.default == plotting.TEMPLATE_NAME
        assert pio.templates.default == plotting.TEMPLATE
        assert len(shown) == 1 and shown[0].data.count("plotly.js v") == 1
    finally:
        pio.renderers.default, pio.templates.default = old


def test_save_figure_writes_png_and_svg_that_are_byte_stable(tmp_path, chromium):
    fig = px.bar(x=["no_wrap", "large_wrap"] * 2, y=[3, 5, 4, 6], color=["a", "a", "b", "b"], barmode="group",
                 title="example")  # two traces and a legend: each carries its own random id in plotly's SVG
    plotting.save_figure(fig, "example", directory=tmp_path)
    png, svg = (tmp_path / "example.png").read_bytes(), (tmp_path / "example.svg").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg[:500]
    plotting.save_figure(fig, "example", directory=tmp_path)
    assert (tmp_path / "example.png").read_bytes() == png
    assert (tmp_path / "example.svg").read_bytes() == svg  # plotly's random clip-path id is replaced


def test_a_hung_export_is_retried_and_a_second_hang_is_a_clear_error(monkeypatch):
    """kaleido's Chromium can hang for good; the watchdog gives up on a call after the timeout."""
    release = threading.Event()  # lets the "hung" calls finish when the test ends
    calls = []

    def to_image(self, **options):
        calls.append(options)
        if len(calls) <= hangs:
            release.wait()
        return b"image"

    monkeypatch.setattr(go.Figure, "to_image", to_image)
    try:
        hangs = 1
        assert plotting._to_image(go.Figure(), "example", timeout=0.2, format="png") == b"image"
        assert len(calls) == 2
        hangs, calls[:] = 2, []
        with pytest.raises(plotting.FigureExportError, match="static export of 'example' hung twice"):
            plotting._to_image(go.Figure(), "example", timeout=0.2, format="png")
    finally:
        release.set()


def test_an_export_error_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(go.Figure, "to_image", lambda self, **options: (_ for _ in ()).throw(ValueError("bad format")))
    with pytest.raises(ValueError, match="bad format"):
        plotting._to_image(go.Figure(), "example", format="nope")


def test_quick_notebooks_save_no_figures(tmp_path, monkeypatch):
    monkeypatch.setattr("IPython.display.display", lambda obj: None)
    plotting.setup_notebook(quick=True)
    try:
        plotting.save_figure(px.line(x=[0, 1], y=[0, 1]), "quick", directory=tmp_path)
    finally:
        plotting._SAVING["enabled"] = True
    assert not list(tmp_path.iterdir())


def test_save_figure_without_a_browser_skips_with_one_line_or_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    fig = px.line(x=[0, 1], y=[0, 1])
    plotting.save_figure(fig, "skipped", directory=tmp_path)
    printed = capsys.readouterr().out
    assert printed.startswith("skipped: static export of 'skipped'") and printed.count("\n") == 1
    with pytest.raises(plotting.BrowserNotFoundError, match=r"no-such-chrome.*apt-get install -y chromium"):
        plotting.save_figure(fig, "never", directory=tmp_path, formats=("png",), require_browser=True)
    assert not list(tmp_path.iterdir())


def test_stable_svg_ids_replace_plotly_random_id_everywhere():
    svg = '<defs id="defs-ab12cd"><clipPath id="clipab12cdxyplot"/></defs><g clip-path="url(#clipab12cdxy)"/>' \
          '<g id="topdefs-ab12cd"/><path clip-path="url(#legendab12cd)"/>' \
          '<g class="trace scatter trace89478a"/><g class="trace scatter trace640c25"/><g class="trace89478a"/>' \
          '<g clip-path="url(#clipab12cd_scrollAreaBottomClip_9c0ffetrue)"/>' \
          '<g clip-path="url(#clipab12cd_columnBoundaryClippath_9c0ffetrue_0)"/>' \
          '<g class="cbc616af colorbar"/><stop id="gab12cd-cbc616af"/><g class="ycbc616aftick"/>'  # a go.Heatmap's colorbar
    stable = plotting._stable_svg_ids(svg, "fig")
    assert not any(uid in stable for uid in ("ab12cd", "89478a", "640c25", "9c0ffe", "c616af"))
    other_run = svg.replace("ab12cd", "ff00ee").replace("89478a", "123abc").replace("640c25", "def456") \
        .replace("9c0ffe", "31c4a0").replace("c616af", "2420fc")
    assert stable == plotting._stable_svg_ids(other_run, "fig")
    assert len(set(re.findall(r"trace([0-9a-f]{6})", stable))) == 2  # two traces stay two
