"""The explorer's callbacks as plain functions, the same callbacks through a launched app
(`gradio_client`), and the page end to end in headless Chromium (Playwright driving the system
Chromium: nothing is downloaded)."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
from urllib.parse import urlparse

import pytest
import torch

from mechlab.analysis.ablation import CRITICAL_DROP, ablation_hooks
from mechlab.apps.explore import PATCH, attention_figure, component_table, find_checkpoints, launch, lens_figure, main
from mechlab.arithmetic.tokenizer import ANSWER_START

PROMPT = "999 + 1 mod 113 ="  # 1000 mod 113 = 96


def needs(what: str, reason: str):
    """Skip when an optional part (the `explorer` extra, a browser) is missing, except under CI
    (CI set), where .ci/run installs it and its absence is a failure."""
    message = f"{what} is missing: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so this is not skipped)")
    pytest.skip(message)


def test_find_checkpoints_lists_every_transformer_the_app_can_read_main_first(repo_root):
    found = find_checkpoints(repo_root / "checkpoints")
    assert list(found)[0] == "main"
    assert {"grokking_transformer", "three_layer", "three_layer/wd01"} <= set(found)
    assert not any(name.startswith("toylm") or name.startswith("grokking_mlp") for name in found)


def test_cli_refuses_a_missing_checkpoint(capsys):
    with pytest.raises(SystemExit):
        main(["--checkpoint", "nowhere/model.pt"])
    assert "no checkpoint at nowhere/model.pt" in capsys.readouterr().err


def test_answer_with_each_token_probability_and_alternatives(explorer):
    clean, intervened, _ = explorer.run("main", PROMPT)
    assert intervened is None
    assert clean.answer == "96"
    assert [s["token"] for s in clean.steps] == ["9", "6", "<eos>"]
    for step in clean.steps:
        alternatives = [p for _, p in step["alternatives"]]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        assert step["prob"] > alternatives[0]  # greedy: the chosen token is the most probable
    answer, _, _ = explorer.update("main", PROMPT)
    assert "**96**" in answer and "| 9 |" in answer


def test_prompt_without_equals_sign_is_completed(explorer):
    assert explorer.run("main", "999 + 1 mod 113")[0].answer == "96"


def test_attention_heatmaps_every_head_or_one(explorer):
    run = explorer.run("main", PROMPT)[0]
    em = explorer.model("main")
    assert run.tokens.shape == (1, ANSWER_START + 2)  # prompt, then the digits "9", "6" (each predicts the next)
    assert run.patterns.shape == (4, 8, ANSWER_START + 2, ANSWER_START + 2)
    n = ANSWER_START + 2  # every position, left padding included
    grid = attention_figure(em, run, "all").data[0].z
    assert grid.shape == (4 * (n + 1) - 1, 8 * (n + 1) - 1)  # 4 layers x 8 heads, one-cell gaps
    one = attention_figure(em, run, "L1H3").data[0].z
    assert torch.allclose(torch.tensor(one).float(), run.patterns[1, 3])
    assert torch.allclose(torch.tensor(one).float().sum(-1), torch.ones(n))


def test_logit_lens_ends_at_the_generated_answer(explorer):
    run = explorer.run("main", PROMPT)[0]
    assert run.lens_points[0] == "embeddings" and len(run.lens_points) == 2 * 4 + 1
    assert run.lens_top[-1] == ["9", "6", "<eos>"]  # after the last sublayer the lens is the model's output
    assert run.lens_prob.shape == (9, 3)
    assert lens_figure(explorer.model("main"), run).data[0].z.shape == (9, 3)


def test_mean_ablating_L0H0_changes_the_answer(explorer):
    clean, ablated, what = explorer.run("main", PROMPT, components=["L0H0"], method="mean")
    assert clean.answer == "96" and ablated.answer != "96"
    assert what == "L0H0 mean-ablated"
    answer, _, _ = explorer.update("main", PROMPT, components=["L0H0"], method="mean")
    assert "(changed)" in answer


def test_intervention_reuses_the_ablation_hooks(explorer):
    """The intervened run is the model under `ablation_hooks`, nothing else: same answer logits."""
    em = explorer.model("main")
    _, ablated, _ = explorer.run("main", PROMPT, components=["L0H0", "MLP1"], method="zero")
    comps = [em.component("L0H0"), em.component("MLP1")]
    with em.model.hooks(fwd_hooks=ablation_hooks(comps, "zero")):
        logits = em.model(ablated.tokens)[0, ablated.answer_positions].softmax(-1)
    probs = [s["prob"] for s in ablated.steps]
    chosen = [em.token_strings().index(s["token"]) for s in ablated.steps]
    assert torch.allclose(logits[range(len(chosen)), chosen], torch.tensor(probs), atol=1e-6)


def test_patching_from_the_same_prompt_changes_nothing_from_another_prompt_changes_the_answer(explorer):
    every = explorer.widgets("main")["components"]
    clean, same, _ = explorer.run("main", PROMPT, components=every, method=PATCH, second_prompt=PROMPT)
    assert same.answer == clean.answer
    assert [s["prob"] for s in same.steps] == pytest.approx([s["prob"] for s in clean.steps], abs=1e-5)
    _, patched, what = explorer.run("main", PROMPT, components=every, method=PATCH, second_prompt="5 + 7 mod 113 =")
    assert patched.answer == "12" and "patched from 5 + 7 mod 113 = 12" in what


@pytest.mark.parametrize("prompt, message", [
    ("", "Empty prompt"),
    ("12a + 3 mod 113 =", "unknown character 'a'"),
    ("123456789 + 1 mod 113 =", "Operands too long for this model"),
    ("1 ++ 2 mod 113 =", "malformed prompt"),
    ("07 + 2 mod 113 =", "no leading zeros"),
])
def test_bad_input_gives_a_message_not_an_exception(explorer, prompt, message):
    answer, attention, lens = explorer.update("main", prompt)
    assert message in answer and answer.startswith("### ⚠")
    assert attention is None and lens is None


def test_bad_intervention_input_gives_a_message(explorer):
    assert "Second prompt (patch from): Empty prompt" in explorer.update("main", PROMPT, components=["L0H0"], method=PATCH)[0]
    assert "Second prompt (patch from): Cannot read the prompt: malformed" in explorer.update(
        "main", PROMPT, components=["L0H0"], method=PATCH,
        second_prompt="5 + 7 mod")[0]
    assert "is not a component" in explorer.update("main", PROMPT, components=["L9H9"], method="zero")[0]
    assert "Unknown model" in explorer.update("nope", PROMPT)[0]


def test_single_token_model_reads_two_operands(explorer):
    assert explorer.widgets("grokking_transformer")["text_input"] is False
    clean, _, _ = explorer.run("grokking_transformer", a=100, b=20)
    assert clean.answer == "7" and clean.problem == "100 + 20 mod 113 ="
    assert "not an integer from 0 to 112" in explorer.update("grokking_transformer", a=113, b=0)[0]
    assert "Operand b is empty" in explorer.update("three_layer", a=1, b=None)[0]


def test_role_is_read_from_the_measured_table(explorer):
    table = component_table(explorer.model("main"), explorer.data_dir, explorer.sizes)
    assert set(table.index) == {f"L{l}H{h}" for l in range(4) for h in range(8)} | {f"MLP{l}" for l in range(4)}
    assert table.loc["L0H0", "drop"] >= CRITICAL_DROP  # measured here, on QUICK_TABLE's 100 test rows
    text = explorer.role("main", "L0H0")
    assert f"**{table.loc['L0H0', 'drop']:.3f}** (critical)" in text
    assert f"b-pairs {table.loc['L0H0', 'restore:b']:.2f}" in text
    assert "measured on 100 test rows" in text
    assert "is not a component" in explorer.role("main", "L7H7")


# --- the launched app -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(explorer):
    if importlib.util.find_spec("gradio") is None:  # not imported here: `launch` turns analytics off first
        needs("gradio", 'install the explorer extra: pip install -e ".[explorer]"')
    app, (_, url, _) = launch(explorer, port=free_port(), block=False)
    assert urlparse(url).hostname == "127.0.0.1"
    yield url
    app.close()


def test_gradio_client_returns_what_the_functions_return(explorer, app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    args = ("main", PROMPT, 5, 7, ["L0H0"], "mean", "123 + 456 mod 113 =", "L0H0", 1, 2)
    answer, attention, lens = client.predict(*args, api_name="/update")
    expected = explorer.update(*args)
    assert answer == expected[0] and "(changed)" in answer
    for got, figure in ((attention, expected[1]), (lens, expected[2])):
        plot = json.loads(got["plot"])
        assert plot["layout"]["title"]["text"] == figure.layout.title.text
    assert client.predict("main", "L0H0", api_name="/role") == explorer.role("main", "L0H0")
    assert "malformed prompt" in client.predict("main", "1 ++ 2", 5, 7, [], "none", "", "all", 1, 2, api_name="/update")[0]


def test_page_in_headless_chromium(app_url, chromium, repo_root, tmp_path):
    """Load the page, read the answer and a drawn heatmap, ablate L0H0 and see the answer change, send a
    malformed prompt and see the message, read a measured role, pick a single-token model and answer with
    its operand boxes; every request the page makes goes to the app itself."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        needs("playwright", 'install the explorer extra: pip install -e ".[explorer]"')
    hosts = set()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.on("request", lambda request: hosts.add(urlparse(request.url).hostname))
        page.goto(app_url)
        answer = page.locator("#answer")
        expect(answer).to_contain_text("999 + 1 mod 113 = 96", timeout=60_000)  # the page runs the example on load
        expect(page.locator("#attention .js-plotly-plot .heatmaplayer")).to_have_count(1, timeout=30_000)
        expect(page.locator("#lens .js-plotly-plot")).to_have_count(1)

        page.locator("#components").get_by_label("L0H0", exact=True).check()
        page.locator("#method").get_by_label("mean", exact=True).check()
        page.locator("#run").click()
        expect(answer).to_contain_text("with L0H0 mean-ablated", timeout=30_000)
        expect(answer).to_contain_text("(changed)")
        shot = repo_root / "figures" / "explorer.png" if os.environ.get("MECHLAB_SAVE_SCREENSHOT") else tmp_path / "explorer.png"
        page.screenshot(path=str(shot), full_page=True)

        page.locator("#prompt textarea").fill("1 ++ 2 mod 113 =")
        page.locator("#run").click()
        expect(answer).to_contain_text("malformed prompt", timeout=30_000)
        page.locator("#prompt textarea").fill("5 + 7 mod 113 =")  # the app keeps serving after bad input
        page.locator("#run").click()
        expect(answer).to_contain_text("5 + 7 mod 113 = 12", timeout=30_000)

        page.locator("#role_button").click()  # L0H0's measured role
        expect(page.locator("#role")).to_contain_text("mean-ablation drop", timeout=120_000)

        page.locator("#model input").click()  # a single-token model: two operand boxes instead of the text box
        page.get_by_role("option", name="grokking_transformer").click()
        expect(page.locator("#prompt")).to_be_hidden(timeout=30_000)
        expect(page.locator("#a input")).to_be_visible()
        page.locator("#a input").fill("100")
        page.locator("#b input").fill("20")
        page.locator("#run").click()
        expect(answer).to_contain_text("100 + 20 mod 113 = 7", timeout=30_000)
        browser.close()
    assert shot.stat().st_size > 10_000
    assert hosts == {"127.0.0.1"}, f"the page fetched from {hosts - {'127.0.0.1'}}"
