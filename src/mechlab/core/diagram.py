"""Circuit diagrams drawn from measurements, with plotly (static export through `save_figure`).

Nodes are components named as TransformerLens labels them (`L2H5`, `MLP1`) plus `logits`; each
sits in a column by where it reads the residual stream (`node_column`: layer l's heads, then its
MLP, the logits last) and carries a label (its measured role, with the number behind it). Edges
(sender, receiver, effect) are lines whose width and opacity grow with the effect (e.g. the
path-patching effect of `mechlab.analysis.circuit.edge_effects`), labelled with it.
"""
from __future__ import annotations

import re

import pandas as pd
import plotly.graph_objects as go

from mechlab.core.plotting import PALETTE

_HEAD, _MLP = re.compile(r"L(\d+)H(\d+)"), re.compile(r"MLP(\d+)")
MAX_EDGE_WIDTH = 10.0
EDGE_LABEL_MIN = 0.2  # edges at least this strong carry their number on the diagram


def node_column(name: str, n_layers: int) -> int:
    """x column of a node: 2l for layer l's heads, 2l + 1 for MLP l, 2 n_layers for the logits."""
    if (m := _HEAD.fullmatch(name)):
        return 2 * int(m.group(1))
    if (m := _MLP.fullmatch(name)):
        return 2 * int(m.group(1)) + 1
    if name == "logits":
        return 2 * n_layers
    raise ValueError(f"unknown node {name!r}: expected L<l>H<h>, MLP<l> or logits")


def node_positions(names: list[str], n_layers: int) -> dict[str, tuple[float, float]]:
    """(x, y) per node: its column; heads spread evenly within their column (in name order), MLPs
    and the logits on one row below the tallest column of heads, so the MLP chain crosses no head."""
    columns: dict[int, list[str]] = {}
    for name in names:
        columns.setdefault(node_column(name, n_layers), []).append(name)
    head_columns = [members for x, members in columns.items() if x % 2 == 0 and x < 2 * n_layers]
    bottom = -(max(map(len, head_columns), default=1) - 1) / 2 - 1
    positions = {}
    for x, members in columns.items():
        if x % 2 == 1 or x == 2 * n_layers:
            positions |= {name: (x, bottom) for name in members}
            continue
        members = sorted(members, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])
        for i, name in enumerate(members):
            positions[name] = (x, (len(members) - 1) / 2 - i)
    return positions


def circuit_diagram(nodes: pd.DataFrame, edges: pd.DataFrame, n_layers: int, title: str = "",
                    min_effect: float = 0.0) -> go.Figure:
    """The diagram: `nodes` (columns name, label), `edges` (columns sender, receiver, effect; those
    below `min_effect` are left out). Edge width and opacity scale with effect / the largest effect."""
    names = list(nodes["name"])
    unknown = (set(edges["sender"]) | set(edges["receiver"])) - set(names)
    if unknown:
        raise ValueError(f"edges name nodes that are not in the diagram: {sorted(unknown)}")
    pos = node_positions(names, n_layers)
    shown = edges[edges["effect"] >= min_effect].sort_values("effect")
    top = max(shown["effect"].max(), 1e-12) if len(shown) else 1.0
    fig = go.Figure()
    for e in shown.itertuples():
        (x0, y0), (x1, y1) = pos[e.sender], pos[e.receiver]
        strength = max(e.effect, 0.0) / top
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="text", showlegend=False,
                                 text=f"{e.sender} → {e.receiver}: {e.effect:.2f}", name=f"{e.sender}->{e.receiver}",
                                 line=dict(width=0.5 + MAX_EDGE_WIDTH * strength, color=PALETTE[0]),
                                 opacity=0.25 + 0.75 * strength))
        if e.effect >= EDGE_LABEL_MIN:
            fig.add_annotation(x=(x0 + x1) / 2, y=(y0 + y1) / 2, text=f"{e.effect:.2f}", showarrow=False,
                               font=dict(size=10, color=PALETTE[0]), bgcolor="rgba(255,255,255,0.7)")
    labels = dict(zip(nodes["name"], nodes["label"]))
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in names], y=[pos[n][1] for n in names], mode="markers+text", name="components",
        text=[f"<b>{n}</b><br>{labels[n]}" for n in names], textposition="middle right", textfont=dict(size=9),
        marker=dict(size=14, color=[PALETTE[3] if _MLP.fullmatch(n) else PALETTE[1] if _HEAD.fullmatch(n) else PALETTE[7]
                                    for n in names]), hoverinfo="text", showlegend=False))
    ticks = list(range(2 * n_layers + 1))
    fig.update_xaxes(tickvals=ticks, ticktext=[f"attn {t // 2}" if t % 2 == 0 else f"MLP {t // 2}" for t in ticks[:-1]] + ["logits"],
                     range=[-0.5, 2 * n_layers + 1.2], showgrid=False, zeroline=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title, plot_bgcolor="white")
    return fig
