"""Atomic file writes, safe torch loading and hashing: a crash never leaves a half-written file behind,
and reading a checkpoint never runs code from it."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via `write(tmp_path)` into a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def torch_save_atomic(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class UnsafeCheckpointError(ValueError):
    """A torch file holds something other than tensors and plain containers (e.g. a pickled callable)."""


def load_torch_file(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU: tensors, numbers, strings and containers
    only. A file that would need to run code to unpickle is refused with UnsafeCheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(f"{path} is not a plain weights file and was not loaded (loading it would "
                                    f"run code from it): {str(error).splitlines()[0]}") from None
