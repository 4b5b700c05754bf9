import hashlib

import pytest
import torch

from mechlab.toylm.data import (
    DOWNLOAD_COMMAND,
    ENV_VAR,
    SHAKESPEARE_VOCAB,
    VAL_FILE,
    VAL_SHA256,
    CharCorpus,
    ShakespeareChecksumError,
    ShakespeareDataError,
    decode,
    load_shakespeare,
    read_checked_text,
    shakespeare_path,
    validation_tokens,
)


def test_a_missing_file_names_the_download_command(tmp_path):
    with pytest.raises(ShakespeareDataError, match=r"not found at .*nothere\.txt.*wget https://raw\.githubusercontent"):
        load_shakespeare(tmp_path / "nothere.txt")


def test_an_altered_file_is_refused_with_both_hashes_and_the_download_command(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ShakespeareChecksumError, match=f"has sha256 {digest}, expected 86c4e6aa.*{DOWNLOAD_COMMAND}"):
        load_shakespeare(path)


def test_a_file_with_the_expected_hash_is_read(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("to be or not")
    assert read_checked_text(path, hashlib.sha256(b"to be or not").hexdigest()) == "to be or not"


def test_the_path_comes_from_the_argument_then_the_environment_then_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env.txt"))
    assert shakespeare_path(tmp_path / "arg.txt") == tmp_path / "arg.txt"
    assert shakespeare_path() == tmp_path / "env.txt"
    monkeypatch.delenv(ENV_VAR)
    assert shakespeare_path().parts[-3:] == ("shared", "data", "tinyshakespeare.txt")


def test_a_corpus_splits_its_text_as_nanogpt_does():
    corpus = CharCorpus.from_text("abcabcabca", train_fraction=0.9)
    assert corpus.vocab == ("a", "b", "c")
    assert corpus.train.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2] and corpus.val.tolist() == [0]
    assert corpus.decode(corpus.encode("cab")) == "cab"
    with pytest.raises(ValueError, match="not in the vocabulary: \\['z'\\]"):
        corpus.encode("caz")


def test_tiny_shakespeare_has_65_characters_and_nanogpts_split(shakespeare):
    assert shakespeare.vocab == SHAKESPEARE_VOCAB and shakespeare.d_vocab == 65
    assert (len(shakespeare.train), len(shakespeare.val)) == (1_003_854, 111_540)
    assert shakespeare.decode(shakespeare.train[:14]) == "First Citizen:"


def test_without_the_file_the_validation_split_comes_from_the_copy_kept_with_an_export(tmp_path, repo_root):
    missing = tmp_path / "no-shakespeare.txt"
    kept = validation_tokens(repo_root / "checkpoints" / "shakespeare_char_seed0", path=missing)
    assert len(kept) == 111_540 and decode(kept[:12], SHAKESPEARE_VOCAB) == "?\n\nGREMIO:\nG"
    (tmp_path / VAL_FILE).write_text("an edited validation split")
    with pytest.raises(ShakespeareChecksumError, match=VAL_SHA256[:12]):
        validation_tokens(tmp_path, path=missing)
    with pytest.raises(ShakespeareDataError, match="neither Tiny Shakespeare"):
        validation_tokens(tmp_path / "empty", path=missing)


def test_the_kept_validation_split_is_the_files(shakespeare, repo_root):
    kept = validation_tokens(repo_root / "checkpoints" / "shakespeare_char_seed0", path="/no/such/file")
    assert torch.equal(kept, shakespeare.val)
