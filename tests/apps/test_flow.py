"""The activation-flow animation, its stills and the head captions, from a run of the main model."""
import numpy as np
import pytest

from mechlab.apps.explore import prompt_tokens, run_prompt
from mechlab.apps.flow import CONFIDENT, first_confident_point, flow_figure, frame_figure, head_captions


@pytest.fixture(scope="module")
def main_run(explorer):
    em = explorer.model("main")
    table = explorer.role("main", "L0H0") and em.table  # measured once (QUICK_TABLE sizes)
    return em, run_prompt(em, prompt_tokens(em, "999 + 1 mod 113 =")), table


def test_flow_has_a_frame_per_layer_with_slider_and_play_button(main_run):
    em, run, table = main_run
    fig = flow_figure(em, run, table)
    assert [f.name for f in fig.frames] == ["0", "1", "2", "3"]
    assert len(fig.layout.sliders[0].steps) == 4 and fig.layout.updatemenus[0].buttons[0].label == "play"
    first = fig.frames[0]
    assert first.data[0].z.shape == (8, run.answer_positions[0] + 1)  # 8 heads x tokens up to "="
    assert np.allclose(first.data[0].z.sum(-1), 1.0, atol=1e-5)  # all of each head's attention from "="
    assert first.data[0].y[0] == f"L0H0 (drop {table.loc['L0H0', 'drop']:.2f})"
    lens = np.asarray(fig.frames[1].data[1].x, dtype=float)  # filled in up to layer 1's MLP
    assert np.isfinite(lens[:5]).all() and np.isnan(lens[5:]).all()
    assert f"MLP3 mean-ablation drop {table.loc['MLP3', 'drop']:.2f}" in fig.frames[3].layout.title.text


def test_frame_figure_is_a_still_without_controls(main_run):
    em, run, table = main_run
    fig = flow_figure(em, run, table)
    still = frame_figure(fig, 2)
    assert not still.frames and not still.layout.sliders and not still.layout.updatemenus
    assert np.array_equal(still.data[0].z, fig.frames[2].data[0].z)
    assert still.layout.title.text == fig.frames[2].layout.title.text


def test_head_captions_and_first_confident_point(main_run):
    em, run, table = main_run
    captions = head_captions(table, 4, 8)
    assert len(captions) == 32 and captions[0].startswith(f"L0H0 · drop {table.loc['L0H0', 'drop']:.2f} · ")
    point = first_confident_point(run)
    assert run.lens_prob[run.lens_points.index(point), 0] >= CONFIDENT
    assert first_confident_point(run, threshold=1.1) is None


def test_a_gif_needs_pillow_and_a_browser(monkeypatch, tmp_path):
    import importlib.util

    from mechlab.apps import flow
    from mechlab.core.plotting import find_browser

    assert flow.can_write_gif() == (importlib.util.find_spec("PIL") is not None and find_browser() is not None)
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))  # no browser: kaleido could not draw the frames
    assert flow.can_write_gif() is False
    monkeypatch.delenv("BROWSER_PATH")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # no Pillow
    assert flow.can_write_gif() is False
