"""Token roles, role-aligned attention and the head-role table, on a tiny random model."""
import pandas as pd
import pytest
import torch

from mechlab.analysis.attention import attention_patterns
from mechlab.arithmetic.roles import (
    ROLES,
    SLOTS,
    RoleError,
    aligned_attention,
    answer_predicting_mask,
    head_role_table,
    label_head,
    layer_specialization,
    position_roles,
    position_slots,
    role_ids,
    slot_aligned_attention,
    slot_ids,
)
from mechlab.arithmetic.task import TOKENIZER
from mechlab.arithmetic.tokenizer import MODEL_INPUT_LEN


def tokens_for(pairs):
    return TOKENIZER.encode_batch([f"{a} + {b} mod 113 =" for a, b in pairs], [str((a + b) % 113) for a, b in pairs])


def test_roles_of_one_prompt():
    toks = tokens_for([(234, 5)])
    slots = position_slots(toks)[0]
    assert slots[0] == "bos" and slots[1:5] == ["pad"] * 4  # "234 + 5 mod 113 =" has 17 of 21 chars
    prompt_slots = [s for s in slots if s not in ("bos", "pad")]
    assert prompt_slots[:10] == ["a:100", "a:10", "a:1", "sp:a", "+", "sp:+", "b:1", "sp:b", "mod:m", "mod:o"]
    assert slots[21] == "=" and slots[22:26] == ["ans:1", "ans:2", "eos", "pad"]  # 239 % 113 = 13


def test_answer_slots_and_eos():
    toks = tokens_for([(100, 12)])  # 112 -> "112": three answer digits
    slots = position_slots(toks)[0]
    assert slots[22:26] == ["ans:1", "ans:2", "ans:3", "eos"]
    roles = position_roles(toks)[0]
    assert roles[22:25] == ["answer"] * 3 and roles[21] == "="


def test_role_ids_match_names_and_prompt_only_tokens():
    toks = tokens_for([(1, 2), (999, 999), (45, 678)])
    ids = role_ids(toks)
    names = position_roles(toks)
    assert [[ROLES[i] for i in row] for row in ids.tolist()] == names
    prompt_only = role_ids(toks[:, :22])
    assert torch.equal(prompt_only, ids[:, :22])
    assert (slot_ids(toks) < len(SLOTS)).all()


def test_malformed_tokens_raise():
    toks = tokens_for([(1, 2)])
    toks[0, 0] = TOKENIZER.pad_id
    with pytest.raises(RoleError, match="expected '<bos>' at position 0"):
        position_slots(toks)


def test_answer_predicting_positions():
    toks = tokens_for([(100, 12), (1, 2)])  # answers "112" and "3"
    mask = answer_predicting_mask(toks)
    assert mask[0].nonzero().flatten().tolist() == [21, 22, 23]
    assert mask[1].nonzero().flatten().tolist() == [21]


def test_aligned_attention_hand_example():
    # two "prompts" of 3 positions with groups [0, 1, 1] and [0, 0, 1]
    ids = torch.tensor([[0, 1, 1], [0, 0, 1]])
    pat = torch.tensor([[[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]],
                        [[1, 0, 0], [0.4, 0.6, 0], [0.1, 0.1, 0.8]]])
    avg = aligned_attention(pat, ids, 3)
    # dest group 0: rows (p0,pos0), (p1,pos0), (p1,pos1) -> mass to group 0: 1, 1, 1
    assert torch.allclose(avg[0, 0], torch.tensor(1.0))
    # dest group 1: rows (p0,pos1): to g1 0.5; (p0,pos2): 0.8; (p1,pos2): 0.8 -> mean 0.7
    assert torch.allclose(avg[1, 1], torch.tensor(0.7))
    assert torch.isnan(avg[2]).all()


def test_gallery_and_head_table_on_tiny_model(tiny_model):
    toks = tokens_for([(12, 34), (567, 8), (999, 0), (100, 12)])[:, :MODEL_INPUT_LEN]
    pats = attention_patterns(tiny_model, toks)
    assert pats.shape == (4, 2, 2, MODEL_INPUT_LEN, MODEL_INPUT_LEN)
    avg, names = slot_aligned_attention(pats, toks)
    assert avg.shape[-1] == len(names) and "a:100" in names and "a:1000" not in names
    # every destination slot's masses sum to 1 over source slots
    assert torch.allclose(avg.nansum(-1), torch.ones(avg.shape[:-1], dtype=avg.dtype), atol=1e-5)
    table = head_role_table(pats, toks)
    assert len(table) == 4 and set(table["label"]) <= {
        "previous-token", "self", "a+b reader", "a reader", "b reader", "operand reader", "modulus reader", "answer reader",
        "resting", "mixed"}
    mass_cols = [c for c in table if c.startswith("mass:")]
    assert torch.allclose(torch.tensor(table[mass_cols].sum(axis=1).values), torch.ones(4, dtype=torch.float64), atol=1e-5)


def test_label_rule():
    base = {f"mass:{r}": 0.0 for r in ROLES} | {"prev_token": 0.0, "self": 0.0}
    assert label_head(base | {"prev_token": 0.9}) == "previous-token"
    assert label_head(base | {"mass:a": 0.3, "mass:b": 0.4}) == "a+b reader"
    assert label_head(base | {"mass:b": 0.7}) == "b reader"
    assert label_head(base | {"mass:a": 0.35, "mass:b": 0.2}) == "operand reader"
    assert label_head(base | {"mass:mod": 0.2, "mass:m": 0.4}) == "modulus reader"
    assert label_head(base | {"mass:bos": 0.9}) == "resting"
    assert label_head(base | {"mass:a": 0.2, "mass:=": 0.2}) == "mixed"


def test_layer_specialization():
    def table(labels):  # 4 layers x 2 heads, labels in head order
        return pd.DataFrame({"layer": [l for l in range(4) for _ in range(2)], "label": labels})

    early_late = table(["self", "self", "self", "mixed", "a reader", "a reader", "mixed", "a reader"])
    dominant, specialized = layer_specialization(early_late, n_layers=4)
    assert dominant["label"].tolist() == ["self", "mixed", "a reader", "a reader"]  # layer 1: tie, first alphabetically
    assert dominant["heads"].tolist() == [2, 1, 2, 1]
    assert specialized
    # every layer ties 1:1, so each picks "mixed"; early and late halves agree
    same = table(["self", "mixed"] * 4)
    assert layer_specialization(same, n_layers=4)[1] is False



def test_slot_positions_finds_each_slot_or_minus_one():
    from mechlab.arithmetic.roles import slot_positions
    from mechlab.arithmetic.task import ArithmeticSplit
    from mechlab.arithmetic.tokenizer import EQUALS_POS

    split = ArithmeticSplit.from_rows([{"prompt": "234 + 5 mod 113 =", "answer": "13"},
                                       {"prompt": "7 + 81 mod 113 =", "answer": "88"}])
    pos = slot_positions(split.tokens, ["a:100", "a:1", "b:10", "=", "ans:2"])
    start = EQUALS_POS - len("234 + 5 mod 113 =") + 1  # position of the first character
    assert pos[0].tolist() == [start, start + 2, -1, EQUALS_POS, EQUALS_POS + 2]
    assert pos[1, 0] == -1 and pos[1, 2] == EQUALS_POS - len(" mod 113 =") - 1
