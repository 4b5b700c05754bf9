"""The arithmetic tokenizer: how prompts become token ids, and what it refuses."""
import pytest
import torch

from mechlab.arithmetic.tokenizer import (
    ANSWER_START,
    EQUALS_POS,
    MAX_ANSWER_DIGITS,
    PROMPT_WIDTH,
    SEQ_LEN,
    VOCAB,
    ArithmeticTokenizer,
    Problem,
    TokenizerError,
    format_prompt,
    parse_prompt,
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


def test_modulus_zero_is_named_as_the_problem():
    with pytest.raises(TokenizerError, match=r"the modulus must be >= 1, got 0 in '234 \+ 567 mod 0 ='"):
        tok.encode_prompt("234 + 567 mod 0 =")
    with pytest.raises(TokenizerError, match="modulus >= 1"):
        Problem(1, 2, 0)


def test_huge_numbers_are_a_tokenizer_error_with_a_short_message():
    for prompt in ("1" * 1_000_000 + " + 4 mod 113 =", "1" * 4_000 + " + 4 mod 113 ="):
        with pytest.raises(TokenizerError, match="at most 21 fit") as caught:
            tok.encode_prompt(prompt)
        assert len(str(caught.value)) < 200
    with pytest.raises(TokenizerError, match=r"a in prompt .* has 10,000 digits; at most 100") as caught:
        parse_prompt("1" * 10_000 + " + 4 mod 113 =")
    assert len(str(caught.value)) < 200
    with pytest.raises(TokenizerError, match=r"unknown character 'x' at position 1000000 in '1111.*\(1,000,015 characters\)"):
        parse_prompt("1" * 1_000_000 + "x + 4 mod 113 =")


@pytest.mark.parametrize("call", [
    lambda: parse_prompt(None), lambda: tok.encode_prompt(None), lambda: tok.encode_chars(None),
    lambda: tok.encode_answer(None)])
def test_none_is_refused_as_not_a_string(call):
    with pytest.raises(TokenizerError, match="must be a str, got NoneType"):
        call()


@pytest.mark.parametrize("a, b, m, bad", [(1.5, 4, 113, "a"), (True, 4, 113, "a"), (1, "4", 113, "b"), (1, 4, None, "m")])
def test_operands_must_be_integers(a, b, m, bad):
    with pytest.raises(TokenizerError, match=f"operand {bad} must be an integer"):
        format_prompt(a, b, m)
    with pytest.raises(TokenizerError, match=f"operand {bad} must be an integer"):
        Problem(a, b, m)


def test_encode_batch_needs_one_answer_per_prompt_and_keeps_its_shape_when_empty():
    with pytest.raises(TokenizerError, match="1 prompts but 2 answers"):
        tok.encode_batch(["1 + 2 mod 113 ="], ["3", "4"])
    assert tok.encode_batch([], []).shape == (0, SEQ_LEN)
    assert tok.encode_prompts([]).shape == (0, 1 + PROMPT_WIDTH)


def test_decode_refuses_ids_that_are_not_integers():
    with pytest.raises(TokenizerError, match=r"token ids must be integers, got 1.7 \(float\)"):
        tok.decode([1, 1.7])


# ---- the operator set: the main tokenizer is the "+" instance, the multi-task one has + - * ----------------------------

multi = ArithmeticTokenizer("+-*")


def test_the_main_vocabulary_and_a_main_prompts_ids_are_unchanged():
    assert VOCAB == list("0123456789") + [" ", "+", "m", "o", "d", "=", "<pad>", "<bos>", "<eos>"]
    assert tok.encode_example("234 + 567 mod 113 =", "14") == [17, 16, 16, 2, 3, 4, 10, 11, 10, 5, 6, 7, 10, 12, 13,
                                                                14, 10, 1, 1, 3, 10, 15, 1, 4, 18, 16]
    assert ArithmeticTokenizer.stoi == tok.stoi and tok.operators == "+"


def test_the_multitask_vocabulary_appends_its_operators_after_the_main_one():
    assert multi.vocab == VOCAB + ["-", "*"]
    assert (multi.pad_id, multi.bos_id, multi.eos_id) == (tok.pad_id, tok.bos_id, tok.eos_id)
    assert multi.encode_example("234 + 567 mod 113 =", "14") == tok.encode_example("234 + 567 mod 113 =", "14")


@pytest.mark.parametrize("a, b, m, op, answer", [(234, 567, 113, "-", "6"), (5, 7, 113, "-", "111"),
                                                  (234, 567, 113, "*", "16"), (1999, 1999, 113, "*", "95"),
                                                  (12, 30, 113, "+", "42"), (7, 90, 97, "-", "14")])
def test_multitask_prompts_round_trip(a, b, m, op, answer):
    problem = Problem(a, b, m, op=op)
    assert problem.answer == answer == str(eval(f"({a} {op} {b}) % {m}"))
    ids = multi.encode_example(problem.prompt, problem.answer)
    assert len(ids) == SEQ_LEN and ids[EQUALS_POS] == multi.stoi["="]
    assert multi.decode(ids[:ANSWER_START]) == problem.prompt == f"{a} {op} {b} mod {m} ="
    assert multi.decode_answer(ids[ANSWER_START:]) == answer
    assert parse_prompt(multi.decode(ids[:ANSWER_START]), "+-*") == problem


@pytest.mark.parametrize("m", [89, 97, 101, 127, 131])
def test_prompts_of_any_modulus_round_trip_through_the_main_tokenizer(m):
    problem = Problem(998, 999, m)
    ids = tok.encode_example(problem.prompt, problem.answer)
    assert parse_prompt(tok.decode(ids[:ANSWER_START])) == problem
    assert tok.decode_answer(ids[ANSWER_START:]) == str((998 + 999) % m)


@pytest.mark.parametrize("tokenizer, prompt, message", [
    (tok, "234 - 567 mod 113 =", r"unknown character '-' at position 4 .*unknown operator: this tokenizer's operators are \+"),
    (ArithmeticTokenizer("+-"), "2 * 5 mod 113 =", r"unknown character '\*' .*operators are \+ -"),
    (multi, "234 / 567 mod 113 =", r"unknown character '/' at position 4"),
    (multi, "234 -- 567 mod 113 =", r"malformed prompt .*'A OP B mod M =' \(OP one of \+ - \*\)"),
    (multi, "-234 + 567 mod 113 =", "malformed prompt"),
    (multi, "234 + 567 mod 5000 =", r"the modulus 5000 .* outside the allowed 1..1000"),
    (multi, "12345 * 6789 mod 113 =", r"at most 21 fit \(an operand or the modulus is too long\)"),
])
def test_bad_prompts_are_errors_naming_the_problem(tokenizer, prompt, message):
    with pytest.raises(TokenizerError, match=message):
        tokenizer.encode_prompt(prompt)


def test_an_unknown_operator_is_refused_where_it_is_given():
    with pytest.raises(TokenizerError, match=r"unknown operator '/'; the operators are \+ - \*"):
        format_prompt(1, 2, 113, "/")
    with pytest.raises(TokenizerError, match="unknown operator '%'"):
        Problem(1, 2, 113, op="%")
    with pytest.raises(TokenizerError, match="unknown operator '/'"):
        ArithmeticTokenizer("+/")
    with pytest.raises(TokenizerError, match="distinct and at least one"):
        ArithmeticTokenizer("++")
