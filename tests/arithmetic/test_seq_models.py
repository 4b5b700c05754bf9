"""The LSTM and the encoder-decoder: the main model's (batch, pos) -> (batch, pos, d_vocab) contract,
causality, checkpoints, and the one training loop."""
import dataclasses

import pytest
import torch

from mechlab.arithmetic.seq_models import EncDecConfig, LSTMConfig
from mechlab.arithmetic.task import answer_loss, evaluate_split, exact_match, greedy_answers, main_model_config
from mechlab.arithmetic.tokenizer import ANSWER_START, EQUALS_POS, MODEL_INPUT_LEN, VOCAB
from mechlab.core.model import (
    CheckpointMismatchError,
    build,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)
from mechlab.core.train import TrainConfig, train

TINY_CONFIGS = {"lstm": LSTMConfig(d_model=16, n_layers=1),
                "encdec": EncDecConfig(d_model=16, n_heads=2, d_mlp=32, n_encoder_layers=1, n_decoder_layers=1)}


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny(request):
    torch.manual_seed(0)
    return build(TINY_CONFIGS[request.param], "cpu")


def test_the_default_sizes_are_close_to_the_main_models():
    counts = {name: count_parameters(build(cfg, "cpu")) for name, cfg in
              {"main": main_model_config(), "lstm": LSTMConfig(), "encdec": EncDecConfig()}.items()}
    assert counts == {"main": 802_323, "lstm": 814_931, "encdec": 802_835}  # the counts the docstrings state


@pytest.mark.parametrize("config", [main_model_config(), LSTMConfig(), EncDecConfig()], ids=["transformer", "lstm", "encdec"])
def test_every_model_kind_refuses_a_vocabulary_of_another_size(config):
    with pytest.raises(ValueError, match=f"d_vocab=5 but a vocabulary of {len(VOCAB)} tokens"):
        build(dataclasses.replace(config, d_vocab=5), "cpu")


def test_logits_have_the_main_models_shape(tiny, tiny_task):
    tokens = tiny_task.val.tokens[:5, :MODEL_INPUT_LEN]
    for pos in (ANSWER_START, MODEL_INPUT_LEN):  # the prompt alone (greedy decoding's first step), the whole input
        assert tiny(tokens[:, :pos]).shape == (5, pos, len(VOCAB))
    assert answer_loss(tiny, tiny_task.val.tokens[:5]).ndim == 0
    assert greedy_answers(tiny, tiny_task.val.prompts[:3]).shape == (3, MODEL_INPUT_LEN + 1 - ANSWER_START)


def test_changing_a_later_token_leaves_earlier_logits_unchanged(tiny, tiny_task):
    """Causality at the positions that predict: every position of the LSTM, the decoder's from `=` on."""
    tiny.eval()
    tokens = tiny_task.val.tokens[:4, :MODEL_INPUT_LEN].clone()
    first = EQUALS_POS if isinstance(tiny.cfg, EncDecConfig) else 0
    for changed in range(max(first + 1, EQUALS_POS - 3), MODEL_INPUT_LEN):
        other = tokens.clone()
        other[:, changed] = (other[:, changed] + 1) % len(VOCAB)
        before, after = tiny(tokens), tiny(other)
        assert torch.allclose(before[:, first:changed], after[:, first:changed], atol=1e-6), changed
        assert not torch.allclose(before[:, changed], after[:, changed]), changed  # the changed position does change


def test_the_encoder_decoder_reads_the_whole_prompt_and_has_no_logits_before_equals(tiny_task):
    model = build(TINY_CONFIGS["encdec"], "cpu").eval()
    tokens = tiny_task.val.tokens[:4, :MODEL_INPUT_LEN]
    other = tokens.clone()
    other[:, EQUALS_POS - 1] = (other[:, EQUALS_POS - 1] + 1) % len(VOCAB)  # the modulus' last digit, before '='
    assert not torch.allclose(model(tokens)[:, EQUALS_POS:], model(other)[:, EQUALS_POS:])
    assert (model(tokens)[:, :EQUALS_POS] == 0).all()
    with pytest.raises(ValueError, match="reads 22 to 25 positions"):
        model(tokens[:, :EQUALS_POS])


def test_save_and_load_rebuild_the_same_model(tiny, tiny_task, tmp_path):
    save_checkpoint(tiny, tiny.cfg, tmp_path / "model.pt")
    loaded = load_checkpoint(tmp_path / "model.pt", expected=tiny.cfg, device="cpu")
    assert type(loaded) is type(tiny)
    tokens = tiny_task.val.tokens[:3, :MODEL_INPUT_LEN]
    assert torch.equal(loaded.eval()(tokens), tiny.eval()(tokens))
    other = dataclasses.replace(tiny.cfg, d_model=8)
    with pytest.raises(CheckpointMismatchError, match="d_model: checkpoint has 16, expected 8"):
        load_checkpoint(tmp_path / "model.pt", expected=other)
    with pytest.raises(CheckpointMismatchError, match="holds a 'lstm' model, expected a 'encdec' model|"
                                                      "holds a 'encdec' model, expected a 'lstm' model"):
        load_checkpoint(tmp_path / "model.pt", expected=next(c for c in TINY_CONFIGS.values() if c != tiny.cfg))


def test_a_few_steps_of_the_training_loop_lower_the_loss(tiny, tiny_task):
    before = answer_loss(tiny, tiny_task.val.tokens[:200]).item()
    result = train(tiny, tiny_task, TrainConfig(max_steps=30, lr=1e-2, eval_every=30, checkpoint_every=30), progress=False)
    after = answer_loss(tiny, tiny_task.val.tokens[:200]).item()
    assert after < before - 0.5, (before, after)
    assert result.history[-1]["val_loss"] == pytest.approx(evaluate_split(tiny, tiny_task.val, "val")["val_loss"])
    assert exact_match(tiny, tiny_task.val).shape == (len(tiny_task.val),)
