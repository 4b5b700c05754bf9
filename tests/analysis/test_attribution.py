"""Direct logit attribution and the logit lens on a tiny random model, read at the arithmetic
task's answer positions; the table helpers on hand-made inputs."""
import pandas as pd
import pytest
import torch

from mechlab.analysis.attribution import (
    DLAResult,
    LogitLensResult,
    direct_logit_attribution,
    head_mean_abs_by_layer,
    head_rows,
    logit_lens,
    mean_by_bucket,
    median_first_point,
    point_names,
    top_correct_by,
    top_other,
)
from mechlab.arithmetic.data import bucket_of
from mechlab.arithmetic.task import ArithmeticSplit
from mechlab.arithmetic.tokenizer import ANSWER_START, DIGIT_IDS, EQUALS_POS, MAX_ANSWER_DIGITS, MODEL_INPUT_LEN

POSITIONS = range(EQUALS_POS, EQUALS_POS + MAX_ANSWER_DIGITS)  # '=' and the first two answer digits


def split():
    pairs = [(1, 2), (100, 12), (45, 678), (999, 999), (250, 30), (7, 120)]
    return ArithmeticSplit.from_rows([{"a": a, "b": b, "m": 113, "prompt": f"{a} + {b} mod 113 =",
                                       "answer": str((a + b) % 113), "bucket": bucket_of(a, b)} for a, b in pairs])


def answer_digits(s: ArithmeticSplit) -> tuple[torch.Tensor, torch.Tensor]:
    digits = s.tokens[:, ANSWER_START:ANSWER_START + MAX_ANSWER_DIGITS]
    return digits, torch.isin(digits, DIGIT_IDS)


def test_top_other_picks_the_best_candidate_but_the_target():
    logits = torch.zeros(1, 1, 19)
    logits[0, 0, 3], logits[0, 0, 5], logits[0, 0, 17] = 5.0, 4.0, 9.0  # 17 is not a digit
    assert top_other(logits, torch.tensor([[3]]), DIGIT_IDS).item() == 5
    assert top_other(logits, torch.tensor([[5]]), DIGIT_IDS).item() == 3
    assert top_other(logits, torch.tensor([[5]]), torch.arange(19)).item() == 17


def test_dla_terms_add_up_to_the_logits(tiny_model):
    s = split()
    digits, valid = answer_digits(s)
    dla = direct_logit_attribution(tiny_model, s.tokens[:, :MODEL_INPUT_LEN], POSITIONS, digits, candidate_ids=DIGIT_IDS,
                                   valid=valid, batch_size=4)
    assert dla.labels[:3] == ["embed", "pos_embed", "L0H0"] and dla.labels[-1] == "MLP1" and "attn_bias" in dla.labels
    assert dla.correct.shape == (6, len(dla.labels), 3)
    recon = dla.correct.sum(1) + dla.constant_correct
    actual = dla.logits.gather(-1, dla.correct_ids[..., None])[..., 0]
    assert torch.allclose(recon, actual, atol=1e-10)
    recon_w = dla.wrong.sum(1) + dla.constant_wrong
    assert torch.allclose(recon_w, dla.logits.gather(-1, dla.wrong_ids[..., None])[..., 0], atol=1e-10)
    assert not (dla.wrong_ids == dla.correct_ids).any() and torch.isin(dla.wrong_ids, DIGIT_IDS).all()
    assert dla.valid.sum(1).tolist() == [len(r["answer"]) for r in s.rows]
    table = mean_by_bucket(dla, s.rows)
    assert set(table.columns) == {"bucket", "answer_pos", "component", "value"}
    assert table["answer_pos"].max() == 2  # "112" has a third digit


def test_dla_at_the_last_position_of_a_single_token_task(tiny_model):
    tokens = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    dla = direct_logit_attribution(tiny_model, tokens, [-1], torch.tensor([[3], [9]]))
    logits = tiny_model(tokens)[:, -1]
    assert torch.allclose(dla.logits[:, 0], logits)
    assert torch.allclose(dla.correct.sum(1)[:, 0] + dla.constant_correct[:, 0], logits[[0, 1], [3, 9]], atol=1e-10)
    assert dla.valid.all()


def test_logit_lens(tiny_model, tiny_config):
    s = split()
    digits, valid = answer_digits(s)
    lens = logit_lens(tiny_model, s.tokens[:, :MODEL_INPUT_LEN], POSITIONS, digits, valid=valid, batch_size=4)
    assert len(lens.labels) == 2 + 2 * tiny_config.n_layers - 1 and lens.labels[-1] == "final_post"
    n_points = len(lens.labels)
    assert lens.top_is_correct.shape == (6, n_points, 3)
    # the last point is the model's own output: top correct there iff the model's argmax is correct
    with torch.no_grad():
        logits = tiny_model(s.tokens[:, :MODEL_INPUT_LEN])[:, EQUALS_POS:EQUALS_POS + 3]
    assert torch.equal(lens.top_is_correct[:, -1], logits.argmax(-1) == digits)
    # first_point: -1 or a point from which every later point is correct
    for i in range(6):
        for k in range(3):
            fp = lens.first_point[i, k].item()
            if fp >= 0:
                assert lens.top_is_correct[i, fp:, k].all()
                assert fp == 0 or not lens.top_is_correct[i, fp - 1, k]
            else:
                assert not lens.top_is_correct[i, -1, k]
    assert {"first_point", "first_label", "bucket"} <= set(lens.first_point_table(s.rows).columns)


def test_logit_lens_candidates_restrict_the_top_prediction(tiny_model):
    tokens = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    logits = tiny_model(tokens)[:, -1]
    best_digit = DIGIT_IDS[logits[:, DIGIT_IDS].argmax(-1)]
    lens = logit_lens(tiny_model, tokens, [-1], best_digit[:, None], candidate_ids=DIGIT_IDS)
    assert lens.top_is_correct[:, -1, 0].all() and lens.accuracy()["final_post"] == 1.0
    assert torch.equal(lens.top[:, -1, 0], best_digit)  # the top prediction itself, among the candidates


def test_logit_lens_top_predictions_and_a_model_without_layernorm(tiny_config):
    import dataclasses

    from mechlab.core.model import build_model

    model = build_model(dataclasses.replace(tiny_config, normalization_type=None), device="cpu")
    tokens = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    with torch.no_grad():
        logits = model(tokens)[:, -1]
    lens = logit_lens(model, tokens, [-1], logits.argmax(-1)[:, None])
    assert lens.top.shape == (2, len(lens.labels), 1)
    assert torch.equal(lens.top[:, -1, 0], logits.argmax(-1)) and lens.top_is_correct[:, -1].all()


def test_dla_of_an_attention_only_model_with_positions_outside_the_stream_adds_up(tiny_config):
    import dataclasses

    from mechlab.core.model import build_model

    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config, d_mlp=None, normalization_type=None, positional_embedding_type="shortformer")
    model = build_model(config, device="cpu")
    tokens = torch.randint(0, config.d_vocab, (3, 6))
    targets = torch.randint(0, config.d_vocab, (3, 6))
    dla = direct_logit_attribution(model, tokens, range(6), targets)
    assert dla.labels == ["embed", "L0H0", "L0H1", "L1H0", "L1H1", "attn_bias"]  # no pos_embed, no MLPs
    recon = dla.correct.sum(1) + dla.constant_correct
    assert torch.allclose(recon, dla.logits.gather(-1, targets[..., None])[..., 0], atol=1e-5)


def hand_made_lens() -> LogitLensResult:
    """4 rows, 3 points, 2 positions; row 3 has no second position."""
    top = torch.tensor([[[0, 0], [1, 0], [1, 1]],
                        [[1, 1], [1, 1], [1, 1]],
                        [[0, 0], [0, 0], [0, 1]],
                        [[0, 0], [0, 1], [1, 1]]], dtype=torch.bool)
    first = torch.tensor([[1, 2], [0, 0], [-1, 2], [2, 1]])
    valid = torch.tensor([[True, True], [True, True], [True, True], [True, False]])
    return LogitLensResult(["0_pre", "0_mid", "final_post"], top, torch.zeros(4, 3, 2), first, valid)


def test_top_correct_by_group():
    table = top_correct_by(hand_made_lens(), ["x", "x", "y", "y"]).set_index(["answer_pos", "group", "point"])
    assert table.loc[(0, "x", "0_mid"), "top_is_correct"] == 1.0
    assert table.loc[(0, "y", "final_post"), "top_is_correct"] == 0.5
    assert table.loc[(1, "y", "final_post"), "top_is_correct"] == 1.0  # row 3's second position is not counted
    assert len(table) == 2 * 2 * 3


def test_median_first_point():
    labels = ["0_pre", "0_mid", "final_post"]
    assert median_first_point([0, 2, 2], labels) == "final_post"
    assert median_first_point([-1, -1], labels) == "never"
    assert median_first_point([1, -1, -1], labels) == "0_mid"
    assert median_first_point([1, -1, -1], labels, min_share=0.5, never="never (for most)") == "never (for most)"
    assert median_first_point([1, 1, -1], labels, min_share=0.5) == "0_mid"


def test_point_names():
    assert point_names(["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]) == [
        "embeddings", "layer 0 attention", "layer 0 MLP", "layer 1 attention", "layer 1 MLP"]


def test_head_rows_by_layer():
    table = pd.DataFrame({"component": ["embed", "L0H0", "L0H1", "L1H0", "MLP0", "L10H2"],
                          "value": [5.0, -1.0, 3.0, 2.0, 7.0, 1.0]})
    assert head_rows(table)["layer"].tolist() == [0, 0, 1, 10]
    assert head_mean_abs_by_layer(table).to_dict() == {0: 2.0, 1: 2.0, 10: 1.0}


def test_dla_table_keeps_valid_positions_only():
    n, c, k = 2, 3, 2
    ones = torch.ones(n, c, k)
    dla = DLAResult(["a", "b", "c"], 2 * ones, ones, torch.zeros(n, k), torch.zeros(n, k), torch.zeros(n, k),
                    torch.zeros(n, k), torch.tensor([[True, True], [True, False]]), torch.zeros(n, k, 5))
    table = dla.table([{"bucket": "x"}, {"bucket": "y"}])
    assert len(table) == 3 * c and (table["value"] == 1.0).all()
    assert mean_by_bucket(dla, [{"bucket": "x"}, {"bucket": "y"}], "correct")["value"].tolist() == pytest.approx([2.0] * 9)


def test_the_logit_lens_is_confident_from_the_first_point_whose_mean_target_probability_exceeds_a_half():
    from mechlab.analysis.attribution import LogitLensResult, confidence_by_point, first_confident_point
    probs = torch.tensor([[0.1, 0.4, 0.7], [0.1, 0.5, 0.9]])[:, :, None]  # [n, points, k]
    lens = LogitLensResult(["0_pre", "0_mid", "final_post"], probs > 0.5, probs.log(),
                           torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool))
    assert confidence_by_point(lens).tolist() == pytest.approx([0.1, 0.45, 0.8])
    assert first_confident_point(lens) == "final_post"
    assert first_confident_point(lens, threshold=0.9) == "never"
