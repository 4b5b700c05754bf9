"""The architecture comparison: every model's stages at `=` are found and probed, and the table lays
models side by side."""
import pytest
import torch

from mechlab.arithmetic.architectures import comparison_table, readout_by_stage, states_at_equals
from mechlab.arithmetic.seq_models import EncDecConfig, LSTMConfig, build_encdec, build_lstm
from mechlab.arithmetic.task import ArithmeticSplit, evaluate_split
from mechlab.arithmetic.tokenizer import EQUALS_POS, MODEL_INPUT_LEN
from mechlab.core.model import build_model

STAGES = {"transformer": ["resid_pre 0", "resid_mid 0", "resid_pre 1", "resid_mid 1", "resid_post 1"],
          "lstm": ["embed", "lstm 0", "lstm 1"],
          "encdec": ["encoder embed", "encoder 0", "encoder 1", "decoder embed", "decoder 0", "decoder 1"]}


@pytest.fixture(scope="module")
def models(tiny_config):
    return {"transformer": build_model(tiny_config, "cpu"), "lstm": build_lstm(LSTMConfig(d_model=16), "cpu"),
            "encdec": build_encdec(EncDecConfig(d_model=16, n_heads=2, d_mlp=32), "cpu")}


@pytest.mark.parametrize("kind", STAGES)
def test_every_stage_is_read_at_equals(kind, models, mixed_rows):
    states = states_at_equals(models[kind], mixed_rows)
    assert list(states) == STAGES[kind]
    assert all(state.shape == (len(mixed_rows), 16) for state in states.values())


def test_the_lstm_stages_are_its_layers_and_the_last_is_what_it_reads_out(models, mixed_rows):
    lstm = models["lstm"].eval()
    tokens = ArithmeticSplit.from_rows(mixed_rows).tokens[:, :MODEL_INPUT_LEN]
    rng = torch.random.get_rng_state()
    last = states_at_equals(lstm, mixed_rows)["lstm 1"]
    assert torch.equal(torch.random.get_rng_state(), rng)  # the per-layer re-run initialises nothing
    torch.testing.assert_close(lstm.unembed(last), lstm(tokens)[:, EQUALS_POS])


def test_the_encoder_decoders_last_stage_gives_its_logits_at_equals(models, mixed_rows):
    encdec = models["encdec"].eval()
    tokens = ArithmeticSplit.from_rows(mixed_rows).tokens[:, :MODEL_INPUT_LEN]
    last = states_at_equals(encdec, mixed_rows)["decoder 1"]
    torch.testing.assert_close(encdec.unembed(encdec.decoder.norm(last)), encdec(tokens)[:, EQUALS_POS])


def test_the_residue_probes_run_at_every_stage(models, mixed_rows):
    table = readout_by_stage(models["lstm"], mixed_rows, features=["(a+b) mod m"])
    assert set(table["point"]) == set(STAGES["lstm"]) and table["held-out"].notna().all()


def test_the_comparison_table_has_one_row_per_model(models, mixed_rows):
    split = ArithmeticSplit.from_rows(mixed_rows)
    records = {kind: {"metrics": evaluate_split(models[kind], split, "test"), "parameters": 1, "examples": 2, "minutes": 3.0}
               for kind in ("transformer", "lstm")}
    table = comparison_table(records)
    assert list(table.index) == ["transformer", "lstm"]
    assert {"test exact", "bucket large_wrap", "layout 3+3", "weakest layout"} <= set(table.columns)
