"""The one place for plotting defaults, and figures that work offline.

Every notebook starts with

    from mechlab.core.plotting import heatmap, save_figure, setup_notebook, show_circuitsvis
    setup_notebook(quick=quick)

which (1) makes `fig.show()` use the "mechlab" renderer and template, and (2) embeds plotly.js
and the circuitsvis bundle ONCE in the notebook's output. Each later figure or attention view is
a small div + script that calls the already-loaded library, so an executed notebook rendered to
HTML (`make all` -> reports/*.html) shows every figure with no network access, and a report
holds one copy of each library instead of one per figure.

    fig = px.line(...); fig.show()                 # interactive plotly figure
    heatmap(values, x=..., y=..., title=..., name="patch_resid")  # one call: imshow, show, save
    show_circuitsvis(cv.attention.attention_patterns(tokens=toks, attention=pattern))
    save_figure(fig, "main_loss_curve")             # static figures/main_loss_curve.png (+ .svg)

Static export (`save_figure`) goes through kaleido, which drives a local Chrome/Chromium
(`apt-get install chromium`, or BROWSER_PATH pointing at a Chrome binary). Whether figures are
saved is decided once per notebook: `setup_notebook(quick=True)` turns saving off (quick runs
must not overwrite the committed figures), and without a browser saving is skipped with one
printed line, so reports never need one. SVG exports are made byte-stable (plotly writes a random
id into each SVG; it is replaced by one derived from the figure's name), so regenerating a figure
from the same data leaves `figures/` unchanged.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io._base_renderers import HtmlRenderer

from mechlab.core.io import write_bytes_atomic, write_text_atomic
from mechlab.core.model import head_labels  # noqa: F401  (re-exported: notebooks label heads with it)

REPO_ROOT = Path(__file__).resolve().parents[3]
FIGURES_DIR = REPO_ROOT / "figures"

# ---- defaults: colours, sizes, template ----------------------------------------------------
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
# Fixed colour per data bucket and per split, so every notebook draws them the same way.
BUCKET_COLOURS = {"edge": "#CC79A7", "no_wrap": "#009E73", "single_wrap": "#0072B2", "large_wrap": "#E69F00"}
SPLIT_COLOURS = {"train": "#0072B2", "val": "#E69F00", "test": "#009E73"}
DIVERGING_SCALE = "RdBu"  # signed quantities (logit differences, patching effects), centred on 0
SEQUENTIAL_SCALE = "Viridis"  # non-negative quantities (attention, accuracy)
# Ablation impact classes (mechlab.analysis.ablation.impact_class), from most to least needed.
IMPACT_COLOURS = {"critical": "#D55E00", "moderate": "#E69F00", "redundant": "#56B4E9"}
FIG_WIDTH, FIG_HEIGHT = 800, 450  # static exports; interactive figures fill the cell width
TEMPLATE_NAME = "mechlab"

pio.templates[TEMPLATE_NAME] = go.layout.Template(
    layout=dict(
        colorway=PALETTE,
        font=dict(family="Helvetica, Arial, sans-serif", size=13),
        title=dict(x=0.02, xanchor="left"),
        margin=dict(l=60, r=30, t=60, b=50),
        legend=dict(bgcolor="rgba(255,255,255,0.6)"),
        coloraxis=dict(colorscale=SEQUENTIAL_SCALE),
    )
)
TEMPLATE = f"plotly_white+{TEMPLATE_NAME}"


class OfflineNotebookRenderer(HtmlRenderer):
    """`fig.show()` -> a div + script that calls `window.Plotly`, loaded once by `setup_notebook`.

    Unlike plotly's own "notebook" renderer it adds no MathJax <script> from a CDN, and it
    activates nothing by itself: `setup_notebook()` embeds plotly.js explicitly.
    """

    def __init__(self) -> None:
        super().__init__(connected=False, full_html=False, global_init=False, include_plotlyjs=False,
                         config={"displaylogo": False, "responsive": True})

    def to_mimebundle(self, fig_dict: dict) -> dict[str, str]:
        div = pio.to_html(fig_dict, config=self.config, include_plotlyjs=False, include_mathjax=False,
                          full_html=False, default_width="100%", default_height=FIG_HEIGHT, validate=False)
        return {"text/html": div}


pio.renderers[TEMPLATE_NAME] = OfflineNotebookRenderer()


def plotlyjs_html() -> str:
    """A <script> holding plotly.js itself (about 4.7 MB), for embedding once per notebook."""
    from plotly.offline import get_plotlyjs

    return "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n" f"<script>{get_plotlyjs()}</script>"


def circuitsvis_bundle_path() -> Path:
    import circuitsvis

    return Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"


def _circuitsvis_bundle() -> str:
    # The same text circuitsvis inlines into each view (see circuitsvis.utils.render.render_local).
    return circuitsvis_bundle_path().read_text(encoding="utf-8").replace("</script>", "")


def circuitsvis_bundle_html() -> str:
    """A <script> defining the global `CircuitsVis` from the package's local bundle (no CDN)."""
    return f"<script>\n{_circuitsvis_bundle()}\n</script>"


def use_defaults() -> None:
    """Make the mechlab template plotly's default (scripts; notebooks call `setup_notebook`)."""
    pio.templates.default = TEMPLATE


_SAVING = {"enabled": True}  # set by setup_notebook(quick=...): quick runs write no figures


def setup_notebook(quick: bool = False, renderer: str = TEMPLATE_NAME) -> None:
    """Set plotly's renderer and template and embed plotly.js + circuitsvis once in this output;
    with `quick`, `save_figure` writes nothing for the rest of the session.

    Call it in the first code cell of every notebook; call it again in the same kernel only
    after clearing outputs (each call embeds the libraries again).
    """
    from IPython.display import HTML, display

    _SAVING["enabled"] = not quick
    # choreographer (kaleido's browser driver) logs a traceback for a pipe message it could
    # not decode and then carries on; a failed export still raises, so the log is only noise.
    logging.getLogger("choreographer").setLevel(logging.CRITICAL)
    use_defaults()
    pio.renderers.default = renderer
    display(HTML(plotlyjs_html() + "\n" + circuitsvis_bundle_html()))


def circuitsvis_html(rendered: Any) -> str:
    """The HTML of a circuitsvis view without its copy of the bundle: a div and a script that
    calls `CircuitsVis.render`, which `setup_notebook` has loaded.

    `rendered` is what any circuitsvis function returns, e.g.
    `cv.attention.attention_patterns(tokens=..., attention=...)`.
    """
    src = rendered.local_src
    bundle = _circuitsvis_bundle()
    if bundle not in src:
        raise ValueError("this circuitsvis view does not inline the local bundle; "
                         "circuitsvis changed how it renders, update mechlab.core.plotting.circuitsvis_html")
    # <div id=.../> is not self-closing in HTML; close it so the script is not inside the div.
    return src.replace(bundle, "").replace('style="margin: 15px 0;"/>', 'style="margin: 15px 0;"></div>', 1)


class _HTML:
    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_html_(self) -> str:
        return self.text


def show_circuitsvis(rendered: Any) -> None:
    """Display a circuitsvis view (see `circuitsvis_html`) in the notebook."""
    from IPython.display import display

    display(_HTML(circuitsvis_html(rendered)))


# ---- static export ---------------------------------------------------------------------------
# kaleido's Chromium has been seen to hang for good (a CI run under heavy load waited 26 minutes
# on its pipe); one figure takes a few seconds, so an export still running after this long is hung.
EXPORT_TIMEOUT_S = 120.0


class BrowserNotFoundError(RuntimeError):
    pass


class FigureExportError(RuntimeError):
    """A static export that hung twice (kaleido's Chromium never answered)."""


def find_browser() -> str | None:
    """The Chrome/Chromium kaleido will use ($BROWSER_PATH first, then PATH and the usual
    install locations), or None when there is none."""
    from choreographer.browsers.chromium import Chromium

    path = Chromium.find_browser(skip_local=False)
    return path if path and Path(path).is_file() else None


def _chromium_processes() -> dict[int, Any]:
    """This process's descendant Chrome/Chromium processes (and kaleido's wrappers around them), by pid."""
    import psutil

    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" in " ".join(child.cmdline()).lower():
                found[child.pid] = child
        except psutil.Error:  # it exited meanwhile
            pass
    return found


def _to_image(fig: go.Figure, name: str, timeout: float = EXPORT_TIMEOUT_S, **options: Any) -> bytes:
    """`fig.to_image(**options)`, with a watchdog: if kaleido's Chromium has not answered after
    `timeout` seconds, the browser it started is killed (which ends the hung call) and the export is
    tried once more; a second hang is a FigureExportError naming the figure."""
    for attempt in (1, 2):
        before = _chromium_processes()
        outcome: dict[str, Any] = {}

        def export() -> None:
            try:
                outcome["image"] = fig.to_image(**options)
            except Exception as error:  # noqa: BLE001  (re-raised below, in the caller's thread)
                outcome["error"] = error

        worker = threading.Thread(target=export, name=f"export {name}", daemon=True)
        worker.start()
        worker.join(timeout)
        if "error" in outcome:
            raise outcome["error"]
        if "image" in outcome:
            return outcome["image"]
        for pid, process in _chromium_processes().items():
            if pid not in before:
                process.kill()
        logging.getLogger(__name__).warning("static export of %r hung for %.0f s (attempt %d of 2); "
                                            "killed its browser", name, timeout, attempt)
    raise FigureExportError(f"static export of {name!r} hung twice for {timeout:.0f} s: kaleido's Chrome/Chromium "
                            "never answered. Re-run; if it persists, check the browser with `chromium --version`.")


def _stable_svg_ids(svg: str, name: str) -> str:
    """Replace the random ids plotly writes into an SVG (defs-<id>, clip<id>..., legend<id>,
    g<id>-... gradients, a trace colorbar's cb<id>, a table's scrollAreaBottomClip_<id> and
    columnBoundaryClippath_<id>, and one trace<id> class per trace) with ids derived from `name`
    and their order of appearance, so the same figure always gives the same bytes."""
    def stable(key: str, length: int) -> str:
        return hashlib.sha256(f"{name}:{key}".encode()).hexdigest()[:length]

    uids = dict.fromkeys(re.findall(r'(?:id="(?:clip|defs-|topdefs-|legend|g)|class="cb|'
                                    r'(?:scrollAreaBottomClip|columnBoundaryClippath)_)([0-9a-f]{6})', svg))
    for i, uid in enumerate(uids):
        svg = re.sub(rf"(?<!#){uid}(?![0-9a-f])", stable(f"id{i}", 6), svg)  # not a colour #rrggbb
    traces = list(dict.fromkeys(re.findall(r"\btrace([0-9a-f]{6})\b", svg)))
    for i, trace in enumerate(traces):
        svg = re.sub(rf"\btrace{trace}\b", f"trace{stable(f'trace{i}', 6)}", svg)
    return svg


def save_figure(fig: go.Figure, name: str, formats: Iterable[str] = ("png", "svg"), directory: Path | None = None,
                width: int = FIG_WIDTH, height: int = FIG_HEIGHT, scale: float = 2.0, require_browser: bool = False) -> None:
    """Write `fig` as figures/NAME.png (and .svg) with the mechlab template.

    Writes nothing after `setup_notebook(quick=True)`. Without Chrome/Chromium it prints one line
    saying the static export was skipped (or, with `require_browser`, raises BrowserNotFoundError).
    An export that hangs is retried once after `EXPORT_TIMEOUT_S` (`_to_image`).
    """
    if not _SAVING["enabled"]:
        return
    if find_browser() is None:
        where = f"BROWSER_PATH={os.environ['BROWSER_PATH']!r} is not a file. " if os.environ.get("BROWSER_PATH") else ""
        message = (f"static export of {name!r} needs Chrome or Chromium for kaleido and found none. {where}"
                   "Install one (Debian/Ubuntu: `sudo apt-get install -y chromium`) or set BROWSER_PATH "
                   "to a Chrome/Chromium executable.")
        if require_browser:
            raise BrowserNotFoundError(message)
        print(f"skipped: {message}")
        return
    directory = Path(directory) if directory is not None else FIGURES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    fig = go.Figure(fig).update_layout(template=TEMPLATE)  # a copy, in the house style
    for fmt in formats:
        path = directory / f"{name}.{fmt}"
        if fmt == "svg":
            svg = _to_image(fig, name, format="svg", width=width, height=height).decode()
            write_text_atomic(path, _stable_svg_ids(svg, name))
        else:
            write_bytes_atomic(path, _to_image(fig, name, format=fmt, width=width, height=height, scale=scale))


def heatmap(values: Any, x: Sequence | None = None, y: Sequence | None = None, title: str = "", *,
            diverging: bool = True, name: str | None = None, labels: dict[str, str] | None = None,
            facet_labels: Sequence[str] | None = None, show: bool = True, width: int = FIG_WIDTH,
            height: int = FIG_HEIGHT, **imshow_kwargs: Any) -> go.Figure:
    """One call per heatmap, as in the TransformerLens and ARENA demos: `px.imshow` in the house
    style (signed values on the diverging scale centred on 0, else the sequential one; aspect "auto"
    unless given), shown, and saved as figures/NAME.* (at `width` x `height`) when `name` is given.
    `values`: [rows, cols] or, with `facet_col=0`, [facets, rows, cols] (array, tensor or
    DataFrame); `facet_labels` names the facets. Returns the figure."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    scale = dict(color_continuous_scale=DIVERGING_SCALE, color_continuous_midpoint=0.0) if diverging \
        else dict(color_continuous_scale=SEQUENTIAL_SCALE)
    fig = px.imshow(values, x=x, y=y, title=title, labels=labels or {}, **({"aspect": "auto"} | scale | imshow_kwargs))
    if facet_labels is not None:  # px titles facet k "facet_col=k"
        for annotation in fig.layout.annotations:
            annotation.text = facet_labels[int(annotation.text.split("=")[-1])]
    if show:
        fig.show()
    if name is not None:
        save_figure(fig, name, width=width, height=height)
    return fig
