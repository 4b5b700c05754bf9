"""The one place for plotting defaults, and figures that work offline.

Every notebook starts with

    from mechlab.core.plotting import setup_notebook, show_circuitsvis, save_figure
    setup_notebook()

which (1) makes `fig.show()` use the "mechlab" renderer and template, and (2) embeds plotly.js
and the circuitsvis bundle ONCE in the notebook's output. Each later figure or attention view is
a small div + script that calls the already-loaded library, so an executed notebook rendered to
HTML (`make all` -> reports/*.html) shows every figure with no network access, and a report
holds one copy of each library instead of one per figure.

    fig = px.line(...); fig.show()                 # interactive plotly figure
    show_circuitsvis(cv.attention.attention_patterns(tokens=toks, attention=pattern))
    save_figure(fig, "main_loss_curve")             # static figures/main_loss_curve.png (+ .svg)

Static export (`save_figure`) goes through kaleido, which drives a local Chrome/Chromium;
install one with `apt-get install chromium` or point BROWSER_PATH at a Chrome binary.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import plotly.graph_objects as go
import plotly.io as pio
from plotly.io._base_renderers import HtmlRenderer

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


def setup_notebook(renderer: str = TEMPLATE_NAME) -> None:
    """Set plotly's renderer and template and embed plotly.js + circuitsvis once in this output.

    Call it in the first code cell of every notebook; call it again in the same kernel only
    after clearing outputs (each call embeds the libraries again).
    """
    from IPython.display import HTML, display

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


def attention_view(tokens: Sequence[str], pattern: Any, head_names: Sequence[str] | None = None) -> None:
    """Show attention patterns [n_heads, query, key] (or [query, key]) over `tokens` with circuitsvis."""
    import circuitsvis as cv

    if getattr(pattern, "ndim", 3) == 2:
        pattern = pattern[None]
    kwargs = {"attention_head_names": list(head_names)} if head_names is not None else {}
    show_circuitsvis(cv.attention.attention_patterns(tokens=list(tokens), attention=pattern, **kwargs))


# ---- static export ---------------------------------------------------------------------------
class BrowserNotFoundError(RuntimeError):
    pass


def find_browser() -> str | None:
    """The Chrome/Chromium kaleido will use ($BROWSER_PATH first, then PATH and the usual
    install locations), or None when there is none."""
    from choreographer.browsers.chromium import Chromium

    path = Chromium.find_browser(skip_local=False)
    return path if path and Path(path).is_file() else None


def save_figure(fig: go.Figure, name: str, formats: Iterable[str] = ("png", "svg"), directory: Path | None = None,
                width: int = FIG_WIDTH, height: int = FIG_HEIGHT, scale: float = 2.0) -> list[Path]:
    """Write `fig` as figures/NAME.png (and .svg) with the mechlab template; returns the paths."""
    if find_browser() is None:
        where = f"BROWSER_PATH={os.environ['BROWSER_PATH']!r} is not a file. " if os.environ.get("BROWSER_PATH") else ""
        raise BrowserNotFoundError(
            f"save_figure needs Chrome or Chromium for kaleido's static export and found none. {where}"
            "Install one (Debian/Ubuntu: `sudo apt-get install -y chromium`) or set BROWSER_PATH "
            "to a Chrome/Chromium executable.")
    directory = Path(directory) if directory is not None else FIGURES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    fig = go.Figure(fig).update_layout(template=TEMPLATE)  # a copy, in the house style
    paths = []
    for fmt in formats:
        path = directory / f"{name}.{fmt}"
        fig.write_image(path, format=fmt, width=width, height=height, scale=scale if fmt == "png" else 1)
        paths.append(path)
    return paths
