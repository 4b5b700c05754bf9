"""Modulus pairs and the measurements of whether a model reads the modulus written in its prompt."""
import pytest
import torch

from mechlab.arithmetic.data import Example, bucket_of
from mechlab.arithmetic.multimodulus import (
    OTHER,
    answered_modulus,
    exact_by_modulus,
    held_out_answer_shares,
    is_general,
    modulus_effect,
    modulus_patching,
    modulus_positions,
    patching_summary,
)
from mechlab.arithmetic.pairs import MODULUS_KIND, make_pairs
from mechlab.arithmetic.roles import position_slots
from mechlab.arithmetic.task import ArithmeticSplit
from mechlab.arithmetic.tokenizer import VOCAB

MODULI = (113, 101, 103, 107, 109, 131)  # three-digit moduli, so every pair keeps its layout


@pytest.fixture(scope="module")
def rows_mod_113() -> list[dict]:
    return [Example(a, b, 113, bucket_of(a, b, 113)).to_json() for a in range(100, 1000, 37) for b in range(100, 1000, 53)]


@pytest.fixture(scope="module")
def modulus_pairs(rows_mod_113):
    return make_pairs(rows_mod_113, MODULUS_KIND, 12, seed=0, digits=(3, 3), moduli=MODULI)


class BlindToModulus(torch.nn.Module):
    """Answers every prompt as if it said "mod 113", whatever modulus is written."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.clone()
        tokens[:, modulus_positions(113)] = torch.tensor([VOCAB.index(d) for d in "113"])
        return self.model(tokens)


def test_modulus_positions_are_the_modulus_digit_slots(modulus_pairs):
    slots = position_slots(modulus_pairs.clean_tokens[0])[0]
    assert [slots[p] for p in modulus_positions(113)] == ["m:100", "m:10", "m:1"]
    assert [slots[p] for p in modulus_positions(89)] == ["m:10", "m:1"]  # a two-digit modulus ends at the same place


def test_modulus_pairs_change_only_the_modulus(modulus_pairs):
    assert len(modulus_pairs) == 12
    for clean, changed in zip(modulus_pairs.clean.rows, modulus_pairs.corrupted.rows):
        assert (changed["a"], changed["b"]) == (clean["a"], clean["b"]) and clean["m"] == 113
        assert changed["m"] in MODULI and changed["m"] != 113
        assert len(changed["answer"]) == len(clean["answer"]) and changed["answer"][0] != clean["answer"][0]
    differs = (modulus_pairs.clean_tokens != modulus_pairs.corrupted_tokens).any(0).nonzero().flatten().tolist()
    assert differs and set(differs) <= set(modulus_positions(113))


def test_modulus_pairs_need_other_moduli(rows_mod_113):
    with pytest.raises(ValueError, match="no valid 'm' pairs"):
        make_pairs(rows_mod_113, MODULUS_KIND, 5)  # only mod 113 allowed: nothing to change it to


def test_a_model_that_reads_the_modulus_follows_it(arithmetic_oracle, modulus_pairs):
    effect = modulus_effect(arithmetic_oracle(), modulus_pairs)
    assert effect["follows_written"] == 1.0 and effect["keeps_clean"] == 0.0
    assert effect["effect"] == pytest.approx(40.0)  # +20 on the clean prompt, -20 on the changed one


def test_a_model_blind_to_the_modulus_shows_no_effect(arithmetic_oracle, modulus_pairs):
    effect = modulus_effect(BlindToModulus(arithmetic_oracle()), modulus_pairs)
    assert effect["follows_written"] == 0.0 and effect["keeps_clean"] == 1.0
    assert effect["effect"] == pytest.approx(0.0)


def test_modulus_enters_only_at_its_digits(tiny_model, modulus_pairs):
    patched = modulus_patching(tiny_model, modulus_pairs, min_effect=0.0)  # a random model hardly reads it
    n_layers, n_heads = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    assert patched["z_all_pos"].shape == (n_layers, n_heads)
    resid = patched["resid_pre"]  # [n_layers, pos]
    elsewhere = [p for p in range(resid.shape[1]) if p not in modulus_positions(113)]
    # before layer 0 the two runs differ only at the modulus digits: patching anywhere else restores nothing
    assert resid[0, elsewhere].abs().max().item() == pytest.approx(0.0, abs=1e-9)
    assert resid[0, modulus_positions(113)].abs().max().item() > 0


def test_patching_refuses_a_modulus_that_moves_nothing(tiny_model, modulus_pairs):
    with pytest.raises(ValueError, match="nothing to patch"):
        modulus_patching(tiny_model, modulus_pairs, min_effect=1e6)


def test_answered_modulus_names_the_modulus_an_answer_is_right_for():
    rows = [{"a": 100, "b": 50, "m": 127}] * 4  # 150: mod 127 -> 23, mod 131 -> 19, mod 113 -> 37
    assert answered_modulus(rows, ["23", "19", "37", "5"], candidates=(131, 113)) == ["127", "131", "113", OTHER]
    small = [{"a": 10, "b": 20, "m": 97}]  # 30 is 30 mod every candidate: counted as the row's own
    assert answered_modulus(small, ["30"], candidates=(101, 89)) == ["97"]


def test_patching_summary_reads_the_modulus_digits_the_top_heads_and_where_the_signal_sits():
    resid = torch.zeros(2, 20)  # [n_layers, pos]
    resid[0, modulus_positions(113)] = torch.tensor([0.1, 0.9, 0.3])  # layer 0: the modulus's tens digit
    resid[1, 19] = 1.0  # layer 1: only the last position
    heads = torch.tensor([[0.2, 0.7], [0.01, 0.4]])  # [n_layers, n_heads]
    summary = patching_summary({"resid_pre": resid, "z_all_pos": heads}, top=2, min_restored=0.05)
    assert summary["at_modulus_digits"] == pytest.approx(0.9)
    assert [label for label, _ in summary["top_heads"]] == ["L0H1", "L1H1"]
    assert summary["positions_by_layer"] == {0: modulus_positions(113), 1: [19]}


def test_held_out_answer_shares_prefer_the_written_modulus_then_the_nearest_training_one():
    rows = [{"a": 100, "b": 50, "m": 127}] * 4  # 150: mod 127 -> 23, mod 131 -> 19, mod 113 -> 37
    shares = held_out_answer_shares(rows, ["23", "19", "19", "5"], train_moduli=(113, 131))
    assert shares == {"mod 131": 0.5, "the written one": 0.25, "none": 0.25}
    assert list(shares)[0] == "mod 131"  # largest share first


def test_held_out_answer_shares_refuse_rows_of_several_moduli():
    with pytest.raises(ValueError, match=r"one modulus, got \[97, 127\]"):
        held_out_answer_shares([{"a": 1, "b": 2, "m": 97}, {"a": 1, "b": 2, "m": 127}], ["3", "3"], (113,))


def test_exact_by_modulus_splits_each_set_by_its_written_modulus(arithmetic_oracle):
    rows = [Example(a, b, m, bucket_of(a, b, m)).to_json() for m in (101, 127) for a in (150, 400, 999) for b in (7, 260)]
    oracle = arithmetic_oracle(wrong=lambda a, b, m: m == 127 and a == 999)  # 2 of the 6 mod-127 rows wrong
    found = exact_by_modulus(oracle, {"test": ArithmeticSplit.from_rows(rows)})
    assert found == {101: 1.0, 127: pytest.approx(4 / 6)}


def test_a_model_is_general_only_if_every_held_out_modulus_is_near_the_weakest_seen_one():
    seen = {89: 0.97, 101: 0.99, 113: 0.90}
    assert is_general(seen | {97: 0.85, 127: 0.95}, held_out=(97, 127))
    assert is_general(seen | {97: 0.75, 127: 0.95}, held_out=(97, 127), margin=0.15)  # exactly at the margin
    assert not is_general(seen | {97: 0.05, 127: 0.95}, held_out=(97, 127))  # one held-out modulus fails


def test_is_general_names_what_it_is_missing():
    with pytest.raises(ValueError, match=r"missing: \[127\]"):
        is_general({89: 0.97, 97: 0.5}, held_out=(97, 127))
    with pytest.raises(ValueError, match="at least one training modulus"):
        is_general({97: 0.5, 127: 0.4}, held_out=(97, 127))
