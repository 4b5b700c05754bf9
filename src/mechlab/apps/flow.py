"""The activation-flow animation of one prompt and the annotated head gallery (notebook 09), from an
explorer `Run` and the measured role table (`apps.explore.component_table`).

Flow (`flow_figure`): one frame per layer. Left, each head of the layer: its attention from `=` (the
position that predicts the first answer digit) over the prompt's tokens, each head labelled with its
measured mean-ablation drop. Right, the logit lens at `=`: the probability of the first answer token
after each sublayer, filled in up to the frame's layer. The frame title names the layer's MLP drop.
A slider and a play button step through the frames.

GIF (`save_gif`): each frame drawn by kaleido (the local Chromium, as `core.plotting.save_figure`)
and joined by Pillow (installed with the `explorer` extra), each frame held `seconds_per_frame`.
"""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechlab.apps.explore import ExplorerModel, Run, token_labels
from mechlab.core.io import write_bytes_atomic
from mechlab.core.plotting import SEQUENTIAL_SCALE, TEMPLATE, find_browser


def head_captions(table: pd.DataFrame, n_layers: int, n_heads: int) -> list[str]:
    """"L0H0 · drop 0.99 · operand reader: b 0.48" per head (layer-major), from a `component_table`."""
    return [f"L{l}H{h} · drop {table.loc[f'L{l}H{h}', 'drop']:.2f} · {table.loc[f'L{l}H{h}', 'role']}"
            for l in range(n_layers) for h in range(n_heads)]


CONFIDENT = 0.5  # the logit lens "has" the answer token from the first point where its probability reaches this


def first_confident_point(run: Run, k: int = 0, threshold: float = CONFIDENT) -> str | None:
    """The first logit-lens point (e.g. "layer 2 MLP") where answer token `k` has probability >= `threshold`,
    or None if it never does."""
    reached = run.lens_prob[:, k] >= threshold
    return run.lens_points[int(reached.argmax())] if reached.any() else None


def flow_frames(em: ExplorerModel, run: Run, table: pd.DataFrame) -> list[dict]:
    """Per layer: the heads' attention from the first answer-predicting position [n_heads, pos], their
    labels, the lens probabilities of the first answer token up to that layer's MLP, and a title."""
    cfg = em.model.cfg
    dest = run.answer_positions[0]
    points = run.lens_points
    frames = []
    for layer in range(cfg.n_layers):
        shown = points.index(f"layer {layer} MLP") + 1 if f"layer {layer} MLP" in points else len(points)
        prob = np.where(np.arange(len(points)) < shown, run.lens_prob[:, 0], np.nan)
        mlp = f"MLP{layer}"
        mlp_text = f"; {mlp} mean-ablation drop {table.loc[mlp, 'drop']:.2f}" if mlp in table.index else ""
        frames.append({
            "layer": layer,
            "attention": run.patterns[layer, :, dest, :dest + 1].numpy(),
            "heads": [f"L{layer}H{h} (drop {table.loc[f'L{layer}H{h}', 'drop']:.2f})" for h in range(cfg.n_heads)],
            "lens": prob,
            "title": f"{run.problem} {run.answer} · layer {layer}: attention from the answer position{mlp_text}; "
                     f"p({run.steps[0]['token']}) after this layer {run.lens_prob[shown - 1, 0]:.2f}",
        })
    return frames


def flow_figure(em: ExplorerModel, run: Run, table: pd.DataFrame, ms_per_frame: int = 1500) -> go.Figure:
    """The animated figure (see the module docstring), in the house template."""
    frames = flow_frames(em, run, table)
    tokens = token_labels(em, run)[:run.answer_positions[0] + 1]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35], horizontal_spacing=0.2,
                        subplot_titles=("attention from the answer position", "logit lens: p(first answer token)"))

    def traces(frame):
        return [go.Heatmap(z=frame["attention"], x=tokens, y=frame["heads"], colorscale=SEQUENTIAL_SCALE, zmin=0, zmax=1,
                           colorbar=dict(title="attention", x=0.545, thickness=12)),
                go.Bar(x=frame["lens"], y=run.lens_points, orientation="h", marker_color="#0072B2")]

    for trace, col in zip(traces(frames[0]), (1, 2)):
        fig.add_trace(trace, row=1, col=col)
    fig.frames = [go.Frame(data=traces(f), name=str(f["layer"]), layout=dict(title=dict(text=f["title"])))
                  for f in frames]
    steps = [dict(method="animate", label=f"layer {f['layer']}",
                  args=[[str(f["layer"])], dict(mode="immediate", frame=dict(duration=ms_per_frame, redraw=True))])
             for f in frames]
    fig.update_layout(
        template=TEMPLATE, title=frames[0]["title"], height=520,
        sliders=[dict(steps=steps, active=0, currentvalue=dict(prefix=""), pad=dict(t=50))],
        updatemenus=[dict(type="buttons", showactive=False, x=0, y=-0.12, xanchor="right", buttons=[
            dict(label="play", method="animate",
                 args=[None, dict(frame=dict(duration=ms_per_frame, redraw=True), fromcurrent=True)])])])
    fig.update_xaxes(range=[0, 1], row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    return fig


def frame_figure(fig: go.Figure, index: int) -> go.Figure:
    """A still of frame `index` of an animated figure (its data and title, no controls)."""
    frame = fig.frames[index]
    still = go.Figure(fig)
    still.frames = []
    for trace, data in zip(still.data, frame.data):
        trace.update(data)
    still.layout.sliders, still.layout.updatemenus = (), ()
    return still.update_layout(title=frame.layout.title)


def can_write_gif() -> bool:
    """Whether a GIF can be written: Pillow (from the `explorer` extra; not a core dependency) joins
    the frames, and kaleido needs Chrome/Chromium to draw them (`core.plotting.find_browser`)."""
    return importlib.util.find_spec("PIL") is not None and find_browser() is not None


def save_gif(fig: go.Figure, path: Path, seconds_per_frame: float = 6.0, width: int = 1200, height: int = 520) -> Path:
    """Every frame of `fig` drawn by kaleido and joined into a looping GIF at `path` (written atomically)."""
    from PIL import Image  # Pillow comes with the explorer extra (gradio)

    images = [Image.open(io.BytesIO(frame_figure(fig, i).to_image(format="png", width=width, height=height))).convert("RGB")
              for i in range(len(fig.frames))]
    gif = io.BytesIO()
    images[0].save(gif, format="GIF", save_all=True, append_images=images[1:], duration=int(seconds_per_frame * 1000), loop=0)
    write_bytes_atomic(Path(path), gif.getvalue())
    return Path(path)
