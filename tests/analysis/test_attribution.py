"""Direct logit attribution and the logit lens on a tiny random model."""
import torch

from mechlab.arithmetic.task import ArithmeticSplit
from mechlab.analysis.attribution import (DIGIT_IDS, answer_digit_targets, direct_logit_attribution, logit_lens, mean_by_bucket,
                                 top_wrong_digit)
from mechlab.arithmetic.data import bucket_of
from mechlab.core.model import ModelConfig, build_model
from mechlab.arithmetic.tokenizer import EQUALS_POS
from mechlab.arithmetic.tokenizer import MODEL_INPUT_LEN

TINY = ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=19, n_ctx=32)


def split():
    pairs = [(1, 2), (100, 12), (45, 678), (999, 999), (250, 30), (7, 120)]
    return ArithmeticSplit.from_rows([{"a": a, "b": b, "m": 113, "prompt": f"{a} + {b} mod 113 =",
                                       "answer": str((a + b) % 113), "bucket": bucket_of(a, b)} for a, b in pairs])


def test_targets():
    s = split()
    ids, valid = answer_digit_targets(s.tokens)
    assert valid.sum(1).tolist() == [len(r["answer"]) for r in s.rows]
    assert ids[1].tolist() == [1, 1, 2]  # "112"; digit tokens have ids 0..9


def test_top_wrong_digit():
    logits = torch.zeros(1, 1, 19)
    logits[0, 0, 3], logits[0, 0, 5], logits[0, 0, 17] = 5.0, 4.0, 9.0  # 17 is not a digit
    assert top_wrong_digit(logits, torch.tensor([[3]])).item() == 5
    assert top_wrong_digit(logits, torch.tensor([[5]])).item() == 3


def test_dla_terms_add_up_to_the_logits():
    model = build_model(TINY, device="cpu")
    s = split()
    dla = direct_logit_attribution(model, s.tokens, batch_size=4)
    assert dla.labels[:3] == ["embed", "pos_embed", "L0H0"] and dla.labels[-1] == "MLP1" and "attn_bias" in dla.labels
    assert dla.correct.shape == (6, len(dla.labels), 3)
    recon = dla.correct.sum(1) + dla.constant_correct
    actual = dla.logits.gather(-1, dla.correct_ids[..., None])[..., 0]
    assert torch.allclose(recon, actual, atol=1e-4)
    recon_w = dla.wrong.sum(1) + dla.constant_wrong
    assert torch.allclose(recon_w, dla.logits.gather(-1, dla.wrong_ids[..., None])[..., 0], atol=1e-4)
    assert not (dla.wrong_ids == dla.correct_ids).any() and torch.isin(dla.wrong_ids, DIGIT_IDS).all()
    table = mean_by_bucket(dla, s.rows)
    assert set(table.columns) == {"bucket", "answer_pos", "component", "value"}
    assert table["answer_pos"].max() == 2  # "112" has a third digit


def test_logit_lens():
    model = build_model(TINY, device="cpu")
    s = split()
    lens = logit_lens(model, s.tokens, batch_size=4)
    assert lens.labels[-1] == "final_post" or len(lens.labels) == 1 + 2 * TINY.n_layers
    n_points = len(lens.labels)
    assert lens.top_is_correct.shape == (6, n_points, 3)
    # the last point is the model's own output: top correct there iff the model's argmax is correct
    with torch.no_grad():
        logits = model(s.tokens[:, :MODEL_INPUT_LEN])[:, EQUALS_POS:EQUALS_POS + 3]
    ids, _ = answer_digit_targets(s.tokens)
    assert torch.equal(lens.top_is_correct[:, -1], logits.argmax(-1) == ids)
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
