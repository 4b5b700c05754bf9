"""Tiny Shakespeare at the character level: the file (checked by sha256, never downloaded at run
time), its 65-character vocabulary and nanoGPT's split (first 90% train, last 10% validation).

Where the file is read from, first match wins:
    1. the `path` argument of `shakespeare_path` / `load_shakespeare`;
    2. the environment variable MECHLAB_SHAKESPEARE (a path to the file);
    3. `<repo root>/../shared/data/tinyshakespeare.txt` (the main checkout's layout:
       /work/main -> /work/shared/data/tinyshakespeare.txt).
A missing file or one whose hash differs raises a `ShakespeareDataError` naming DOWNLOAD_COMMAND.

The validation split alone (111,540 characters) is also kept beside each Shakespeare GPT export
(`VAL_FILE`, checked against `VAL_SHA256`), so notebook 22 runs on a machine without the file
(`validation_tokens`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mechlab.core.io import ChecksumMismatchError, write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[3]
ENV_VAR = "MECHLAB_SHAKESPEARE"
DEFAULT_PATH = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
N_CHARS = 1_115_394
TRAIN_FRACTION = 0.9  # nanoGPT's data/shakespeare_char/prepare.py
VAL_FILE = "val.txt"  # the validation split's text, beside an export (`export_validation_text`)
VAL_SHA256 = "c54f3753a4e6e3c3d1759212815a7caf826e68a33021b25312984400bed40a1f"
DOWNLOAD_COMMAND = "wget https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


class ShakespeareDataError(FileNotFoundError):
    """The Tiny Shakespeare file is missing; the message says where it was looked for and how to get it."""


class ShakespeareChecksumError(ChecksumMismatchError):
    """The file at the Shakespeare path is not the expected Tiny Shakespeare (its sha256 differs)."""


def shakespeare_path(path: Path | str | None = None) -> Path:
    """Where the file is read from: `path`, else $MECHLAB_SHAKESPEARE, else DEFAULT_PATH."""
    return Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def how_to_get_it(path: Path) -> str:
    return (f"download it on a machine with a network ({DOWNLOAD_COMMAND}), save it as {path} "
            f"(or point {ENV_VAR} at it) and check its sha256 is {SHA256}")


def read_checked_text(path: Path, sha256: str = SHA256) -> str:
    """The text of `path` after checking its sha256; ShakespeareDataError / ShakespeareChecksumError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ShakespeareDataError(f"Tiny Shakespeare not found at {path}: {how_to_get_it(path)}")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise ShakespeareChecksumError(f"{path} has sha256 {digest}, expected {sha256} (altered or another file): "
                                       f"{how_to_get_it(path)}")
    return raw.decode("utf-8")


@dataclass(frozen=True)
class CharCorpus:
    """A text encoded at the character level: `vocab` (sorted characters, token id = index),
    `train` and `val` token tensors (first `train_fraction` of the text, then the rest)."""

    vocab: tuple[str, ...]
    train: torch.Tensor  # (n_train,) int64
    val: torch.Tensor  # (n_val,) int64

    @classmethod
    def from_text(cls, text: str, train_fraction: float = TRAIN_FRACTION) -> "CharCorpus":
        vocab = tuple(sorted(set(text)))
        ids = encode(text, vocab)
        n_train = int(len(ids) * train_fraction)  # nanoGPT: data[:int(n*0.9)]
        return cls(vocab, ids[:n_train], ids[n_train:])

    @property
    def d_vocab(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        return encode(text, self.vocab)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return decode(ids, self.vocab)


def encode(text: str, vocab: tuple[str, ...]) -> torch.Tensor:
    """(len(text),) token ids; a character outside `vocab` raises ValueError naming it."""
    stoi = {c: i for i, c in enumerate(vocab)}
    unknown = sorted(set(text) - set(stoi))
    if unknown:
        raise ValueError(f"characters not in the vocabulary: {unknown!r}")
    return torch.tensor([stoi[c] for c in text], dtype=torch.long)


def decode(ids: torch.Tensor | list[int], vocab: tuple[str, ...]) -> str:
    return "".join(vocab[i] for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids))


def load_shakespeare(path: Path | str | None = None) -> CharCorpus:
    """Tiny Shakespeare (checked by hash), encoded with its 65 characters and split as nanoGPT does."""
    return CharCorpus.from_text(read_checked_text(shakespeare_path(path)))


def export_validation_text(out_dir: Path, path: Path | str | None = None) -> Path:
    """Write the validation split's text to out_dir/VAL_FILE (from the checked Shakespeare file)."""
    corpus = load_shakespeare(path)
    write_text_atomic(Path(out_dir) / VAL_FILE, corpus.decode(corpus.val))
    return Path(out_dir) / VAL_FILE


def validation_tokens(export_dir: Path | str, path: Path | str | None = None) -> torch.Tensor:
    """(n_val,) token ids of nanoGPT's validation split: from the Shakespeare file when it is there,
    else from `export_dir`/VAL_FILE checked against VAL_SHA256 (ShakespeareDataError when neither is)."""
    if shakespeare_path(path).is_file():
        return load_shakespeare(path).val
    kept = Path(export_dir) / VAL_FILE
    if not kept.is_file():
        raise ShakespeareDataError(f"neither Tiny Shakespeare ({shakespeare_path(path)}) nor {kept} exists: "
                                   f"{how_to_get_it(shakespeare_path(path))}")
    return encode(read_checked_text(kept, VAL_SHA256), SHAKESPEARE_VOCAB)


# The 65 characters of Tiny Shakespeare, sorted (token id = index): sorted(set(text)) of the checked file, written
# out so that model configs need no file; a test compares it with the file when the file is present.
SHAKESPEARE_VOCAB: tuple[str, ...] = tuple("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
