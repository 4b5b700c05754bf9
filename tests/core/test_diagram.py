"""The circuit diagram: nodes by column, edges weighted by their effect."""
import pandas as pd
import pytest

from mechlab.core.diagram import circuit_diagram, node_column, node_positions


def test_node_columns_follow_the_residual_stream():
    assert [node_column(n, 4) for n in ("L0H5", "MLP0", "L3H2", "MLP3", "logits")] == [0, 1, 6, 7, 8]
    with pytest.raises(ValueError, match="unknown node 'embed'"):
        node_column("embed", 4)


def test_heads_are_spread_in_name_order_and_mlps_run_below_them():
    pos = node_positions(["L0H10", "L0H2", "L0H3", "MLP0", "L1H0", "MLP1", "logits"], 2)
    assert pos["L0H2"][1] > pos["L0H3"][1] > pos["L0H10"][1] and pos["L1H0"] == (2, 0.0)
    assert pos["MLP0"] == (1, -2.0) and pos["MLP1"][1] == pos["logits"][1] == -2.0


def test_edges_are_drawn_wider_with_their_effect_and_weak_ones_left_out():
    nodes = pd.DataFrame({"name": ["L0H0", "MLP0", "logits"], "label": ["reads b: 0.48", "DLA 0.1", ""]})
    edges = pd.DataFrame({"sender": ["L0H0", "MLP0", "L0H0"], "receiver": ["MLP0", "logits", "logits"],
                          "effect": [0.6, 0.3, 0.01]})
    fig = circuit_diagram(nodes, edges, n_layers=1, min_effect=0.05)
    lines = {t.name: t.line.width for t in fig.data if t.mode == "lines"}
    assert set(lines) == {"L0H0->MLP0", "MLP0->logits"}
    assert lines["L0H0->MLP0"] > lines["MLP0->logits"]
    node_text = [t for t in fig.data if t.mode == "markers+text"][0].text
    assert "<b>L0H0</b><br>reads b: 0.48" in node_text
    assert {a.text for a in fig.layout.annotations} == {"0.60", "0.30"}
    with pytest.raises(ValueError, match="not in the diagram: \\['MLP1'\\]"):
        circuit_diagram(nodes, pd.DataFrame({"sender": ["MLP1"], "receiver": ["logits"], "effect": [0.5]}), n_layers=2)
