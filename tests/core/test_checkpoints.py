"""Checkpoints: one loader for every model kind, and loading never runs code from the file."""
import dataclasses
import json
import os
import re

import pytest
import torch

from mechlab.core import io as io_module
from mechlab.core.io import (
    CheckpointFileError,
    ChecksumMismatchError,
    UnsafeCheckpointError,
    load_torch_file,
    sha256_file,
    torch_save_atomic,
)
from mechlab.core.model import CheckpointMismatchError, ModelConfig, build_model, load_checkpoint, save_checkpoint
from mechlab.modular.mlp import MLPConfig, ModularMLP, build_mlp


class RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint would carry."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_checkpoint_with_a_pickled_payload_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = build_model(ModelConfig(n_layers=1, n_heads=1, d_model=8, d_head=8, d_mlp=16, d_vocab=5, n_ctx=4))
    path = tmp_path / "model.pt"
    torch.save({"config": model.mechlab_config.to_json(), "state_dict": model.state_dict(), "payload": RunsCode()}, path)
    with pytest.raises(UnsafeCheckpointError, match="model.pt is not a plain weights file"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match="it asks for GLOBAL posix.system"):
        load_torch_file(path)
    assert not (tmp_path / "PWNED").exists()


def test_one_loader_rebuilds_a_transformer_and_the_grokking_mlp(tmp_path):
    transformer = build_model(ModelConfig(n_layers=1, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=7, n_ctx=5))
    mlp = build_mlp(MLPConfig(p=7, d_embed=4, d_hidden=8), device="cpu")
    for name, model in (("transformer", transformer), ("mlp", mlp)):
        save_checkpoint(model, model.mechlab_config, tmp_path / name / "model.pt")
        loaded = load_checkpoint(tmp_path / name / "model.pt", expected=model.mechlab_config, device="cpu")
        assert type(loaded) is type(model)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value.cpu())
    assert isinstance(load_checkpoint(tmp_path / "mlp" / "model.pt"), ModularMLP)
    with pytest.raises(CheckpointMismatchError, match="mlp/model.pt holds a 'modular_mlp' model, expected a 'transformer'"):
        load_checkpoint(tmp_path / "mlp" / "model.pt", expected=transformer.mechlab_config)


def test_loading_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file at .*missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"step": 3}, tmp_path / "not_a_model.pt")
    with pytest.raises(CheckpointMismatchError, match="not_a_model.pt is not a model checkpoint"):
        load_checkpoint(tmp_path / "not_a_model.pt")
    torch.save({"config": {"kind": "unheard_of"}, "state_dict": {}}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointMismatchError, match="unknown model kind 'unheard_of'"):
        load_checkpoint(tmp_path / "odd.pt")


def test_every_committed_checkpoint_file_has_a_checksum_and_loads_without_pickle(repo_root):
    files = sorted((repo_root / "checkpoints").rglob("*.pt"))
    assert len(files) >= 6
    for path in files:
        assert path.name in json.loads((path.parent / "checksums.json").read_text()), path
        assert isinstance(load_torch_file(path), dict), path


def test_a_damaged_checkpoint_is_refused_with_how_to_restore_it(tmp_path):
    model = build_model(ModelConfig(n_layers=1, n_heads=1, d_model=8, d_head=8, d_mlp=16, d_vocab=5, n_ctx=4))
    path = tmp_path / "model.pt"
    save_checkpoint(model, model.mechlab_config, path)
    assert load_checkpoint(path) is not None  # the recorded sha256 matches
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])  # flip 4 KB inside the weights
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match=r"model.pt does not match the sha256 recorded in .*checksums.json.*git checkout"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"random garbage \x04 bytes", b"PK\x03\x04 truncated zip"])
def test_unreadable_files_are_named_in_one_line(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointFileError, match=r"broken.pt is not a readable torch file") as caught:
        load_torch_file(path)
    assert "\n" not in str(caught.value)


def test_an_interrupted_save_leaves_a_file_that_matches_its_record(tmp_path, monkeypatch):
    """A crash after the new file replaced the old one but before the record's final update."""
    path = tmp_path / "last.pt"
    torch_save_atomic(path, {"step": 1})
    calls = []
    original = io_module._record_checksum

    def crash_on_final_update(p, digest):
        calls.append(digest)
        if isinstance(digest, str):  # the final update: simulate the kill here
            raise KeyboardInterrupt("killed before the final update")
        original(p, digest)

    monkeypatch.setattr(io_module, "_record_checksum", crash_on_final_update)
    with pytest.raises(KeyboardInterrupt, match="killed before the final update"):
        torch_save_atomic(path, {"step": 2})
    monkeypatch.undo()
    assert load_torch_file(path) == {"step": 2}
    assert json.loads((tmp_path / "checksums.json").read_text())["last.pt"][0] == calls[0][0]


def tiny_transformer(d_vocab: int = 5):
    return build_model(ModelConfig(n_layers=1, n_heads=1, d_model=8, d_head=8, d_mlp=16, d_vocab=d_vocab, n_ctx=4))


@pytest.mark.parametrize("payload, holds", [(torch.arange(3), "Tensor"), ([1, 2], "list")])
def test_a_torch_file_that_is_not_a_dict_is_named_with_what_it_holds(tmp_path, payload, holds):
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(CheckpointFileError, match=f"model.pt holds a {holds}, not a model checkpoint"):
        load_checkpoint(tmp_path / "model.pt")


def test_a_directory_is_named_as_a_directory(tmp_path):
    (tmp_path / "model.pt").mkdir()
    with pytest.raises(IsADirectoryError, match="model.pt is a directory, not a checkpoint file"):
        load_checkpoint(tmp_path / "model.pt")


def test_a_config_mismatch_is_one_line_naming_each_field(tmp_path):
    model = tiny_transformer(d_vocab=5)
    save_checkpoint(model, model.mechlab_config, tmp_path / "model.pt")
    expected = dataclasses.replace(model.mechlab_config, d_vocab=7, vocab=tuple("abcdefghijklmnopqrstuvwxyz"))
    with pytest.raises(CheckpointMismatchError, match=r"model.pt was saved for another config \(d_vocab: checkpoint "
                                                      r"has 5, expected 7; vocab: checkpoint has \[\], expected \['a', 'b'") as caught:
        load_checkpoint(tmp_path / "model.pt", expected=expected)
    assert "\n" not in str(caught.value) and "(26 items)" in str(caught.value)


def test_the_same_weights_give_the_same_bytes_wherever_they_are_saved(tmp_path):
    """torch.save names its archive after the file; saved through a temp file, that name was random."""
    model = tiny_transformer()
    save_checkpoint(model, model.mechlab_config, tmp_path / "a" / "model.pt")
    save_checkpoint(model, model.mechlab_config, tmp_path / "b" / "model.pt")
    torch_save_atomic(tmp_path / "c" / "other_name.pt", {"config": model.mechlab_config.to_json(),
                                                          "state_dict": model.state_dict()})
    digests = {sha256_file(path) for path in (tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt",
                                               tmp_path / "c" / "other_name.pt")}
    assert len(digests) == 1


def test_torch_load_is_called_only_in_core_io(repo_root):
    """Every torch file is read through load_torch_file (weights only, checksum checked)."""
    callers = [str(path.relative_to(repo_root)) for path in sorted((repo_root / "src").rglob("*.py"))
               if re.search(r"(?<!`)torch\.load\(|from torch import .*\bload\b", path.read_text())]
    assert callers == ["src/mechlab/core/io.py"]
