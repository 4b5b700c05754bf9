"""The arithmetic tokenizer: how prompts become token ids, and what it refuses."""
import pytest
import torch

from mechlab.arithmetic.tokenizer import (
    ANSWER_START, EQUALS_POS, MAX_ANSWER_DIGITS, PROMPT_WIDTH, SEQ_LEN, VOCAB,
    ArithmeticTokenizer, Problem, TokenizerError, format_prompt, parse_prompt,
)

tok = ArithmeticTokenizer()


@pytest.mark.parametrize("a, b, m", [(234, 567, 113), (0, 0, 113), (999, 999, 113), (1999, 1999, 113), (7, 90, 97)])
def test_prompt_and_answer_round_trip(a, b, m):
    prompt, answer = format_prompt(a, b, m), str((a + b) % m)
    ids = tok.encode_example(prompt, answer)
    assert len(ids) == SEQ_LEN
    assert tok.decode(ids[:ANSWER_START]) == prompt          # padding and <bos> are dropped
    assert tok.decode_answer(ids[ANSWER_START:]) == answer    # digits up to <eos>
    assert parse_prompt(tok.decode(ids[:ANSWER_START])) == Problem(a, b, m)


def test_example_sequence_layout():
    ids = tok.encode_example("234 + 567 mod 113 =", "14")
    assert tok.decode(ids, keep_special=True) == (
        "<bos>" + "<pad>" * (PROMPT_WIDTH - len("234 + 567 mod 113 =")) + "234 + 567 mod 113 =" + "14<eos><pad>")


def test_equals_sits_at_equals_pos_whatever_the_prompt_length():
    prompts = ["0 + 0 mod 113 =", "9 + 12 mod 97 =", "234 + 567 mod 113 =", "1999 + 1999 mod 113 ="]
    batch = tok.encode_prompts(prompts)
    assert batch.shape == (len(prompts), 1 + PROMPT_WIDTH)
    assert (batch[:, 0] == tok.bos_id).all()
    assert (batch[:, EQUALS_POS] == tok.stoi["="]).all()
    assert ANSWER_START == EQUALS_POS + 1 == batch.shape[1]


def test_answers_are_right_padded_after_eos():
    assert tok.encode_answer("7") == [tok.stoi["7"], tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.encode_answer("112") == [tok.stoi["1"], tok.stoi["1"], tok.stoi["2"], tok.eos_id]
    assert len(tok.encode_answer("0")) == MAX_ANSWER_DIGITS + 1


def test_encode_batch_is_a_long_tensor_of_full_sequences():
    batch = tok.encode_batch(["1 + 2 mod 113 =", "100 + 20 mod 113 ="], ["3", "7"])
    assert batch.dtype == torch.long and batch.shape == (2, SEQ_LEN)
    assert [tok.decode_answer(row[ANSWER_START:]) for row in batch] == ["3", "7"]


def test_vocabulary_has_the_characters_and_three_special_tokens():
    assert tok.vocab_size == len(VOCAB) == len(set(VOCAB))
    assert {tok.pad_id, tok.bos_id, tok.eos_id} == {VOCAB.index("<pad>"), VOCAB.index("<bos>"), VOCAB.index("<eos>")}


def test_unknown_character_error_names_the_character_and_its_position():
    with pytest.raises(TokenizerError, match=r"unknown character '\*' at position 4"):
        tok.encode_prompt("234 * 567 mod 113 =")
    with pytest.raises(TokenizerError, match=r"unknown character 'x' at position 1"):
        tok.encode_chars("1x")
    with pytest.raises(TokenizerError, match=r"unknown character '-' at position 0"):
        parse_prompt("-1 + 2 mod 113 =")


@pytest.mark.parametrize("prompt", [
    "234  + 567 mod 113 =",   # double space
    "234 + 567 mod 113  =",
    "034 + 567 mod 113 =",    # leading zero
    "234 + 007 mod 113 =",
    "234 + 567 mod 113",      # missing '='
    "234 + 567 mod 113 = ",   # trailing space
    "234 + 567 =",            # missing modulus
    "234 + 567 mod 0 =",      # modulus must be >= 1
    "",
])
def test_malformed_prompts_are_refused(prompt):
    with pytest.raises(TokenizerError, match="malformed prompt"):
        tok.encode_prompt(prompt)


def test_a_prompt_longer_than_the_prompt_width_is_refused():
    prompt = format_prompt(12345, 67890, 113)
    assert len(prompt) > PROMPT_WIDTH
    with pytest.raises(TokenizerError, match=f"at most {PROMPT_WIDTH} fit"):
        tok.encode_prompt(prompt)


@pytest.mark.parametrize("answer, message", [("1234", "longer than"), ("07", "leading zeros"), ("", "digits"), ("1a", "digits")])
def test_bad_answers_are_refused(answer, message):
    with pytest.raises(TokenizerError, match=message):
        tok.encode_answer(answer)


def test_format_prompt_refuses_negative_operands_and_zero_modulus():
    with pytest.raises(TokenizerError, match="a=-1"):
        format_prompt(-1, 2, 113)
    with pytest.raises(TokenizerError, match="m=0"):
        format_prompt(1, 2, 0)


def test_decode_refuses_ids_outside_the_vocabulary():
    with pytest.raises(TokenizerError, match=f"token id {len(VOCAB)} is outside"):
        tok.decode([0, len(VOCAB)])
