"""Atomic file writes, safe torch loading and hashing: a crash never leaves a half-written file behind,
reading a checkpoint never runs code from it, and a damaged checkpoint is refused, not used; a folder
that one process writes can be locked against a second writer (`exclusive_lock`).

Every torch file written with `torch_save_atomic` has its sha256 recorded in `checksums.json` in the
same folder (as data/manifest.json does for the data), and `load_torch_file` checks it. The record
is updated in two steps around the rename (first the old and the new hash are both accepted, then
only the new one), so a crash at any moment leaves a file that matches its record.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

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


CHECKSUMS = "checksums.json"


class ChecksumMismatchError(ValueError):
    """A file's bytes differ from the sha256 recorded for it in its folder's checksums.json."""


def _read_checksums(folder: Path) -> dict[str, str | list[str]]:
    path = folder / CHECKSUMS
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ChecksumMismatchError(f"{path} is not valid JSON ({error}); restore it from git or delete it "
                                    "to stop checking the files beside it") from None


def _record_checksum(path: Path, digest: str | list[str]) -> None:
    record = _read_checksums(path.parent)
    record[path.name] = digest
    write_json_atomic(path.parent / CHECKSUMS, record)


def torch_save_atomic(path: Path, obj: Any) -> None:
    """`torch.save` via a temp file renamed over `path`, recording the file's sha256 in checksums.json."""
    path = Path(path)

    def save_and_record(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # through a stream, the archive is named "archive", not after the temp
            torch.save(obj, f)  # file's random name: the same object always gives the same bytes and sha256
        new = sha256_file(tmp)
        old = _read_checksums(path.parent).get(path.name)
        accepted = [new] + ([old] if isinstance(old, str) and old != new else [])
        _record_checksum(path, accepted)  # either file may be in place until the rename is done

    _atomic_write(path, save_and_record)
    _record_checksum(path, sha256_file(path))


def move_file(source: Path, target: Path) -> None:
    """Rename `source` over `target`, carrying its recorded sha256 along (same two-step update)."""
    source, target = Path(source), Path(target)
    moving = _read_checksums(source.parent).get(source.name)
    if moving is None:
        os.replace(source, target)
        return
    moving = moving if isinstance(moving, str) else moving[0]
    old = _read_checksums(target.parent).get(target.name)
    _record_checksum(target, [moving] + ([old] if isinstance(old, str) and old != moving else []))
    os.replace(source, target)
    _record_checksum(target, moving)


class LockedError(RuntimeError):
    """Another live process holds the lock."""


@contextmanager
def exclusive_lock(path: Path, what: str, error: type[LockedError] = LockedError,
                   wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on file `path` (created if missing) while the block runs, or raise
    `error` (a LockedError) naming `what` and the holder's pid (with `wait`: wait for the holder to
    release it, for locks held a moment, such as a table being rewritten). The lock is the operating
    system's (`flock`), so it ends with the process that holds it however that process ends: a lock is
    never stale. Where there is no `flock` (Windows, some network filesystems, a read-only folder) the
    block runs unlocked, with a warning."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    file = None
    try:
        file = open(path, "a+")
        fcntl.flock(file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "unknown"
        file.close()
        raise error(f"{what} is in use by another process (pid {holder}); wait for it to end or "
                    f"stop it (kill -TERM {holder} saves its step) before starting another") from None
    except OSError as problem:  # no flock here: go on unlocked rather than refuse to work
        if file is not None:
            file.close()
        warnings.warn(f"{what} cannot be locked ({problem}); a second process could write into it", stacklevel=3)
        yield
        return
    with file:
        file.seek(0)
        file.truncate()
        file.write(str(os.getpid()))
        file.flush()
        yield  # the lock is released when the file is closed


def verify_checksum(path: Path) -> None:
    """Raise ChecksumMismatchError if `path` has a recorded sha256 (checksums.json beside it) that its
    bytes do not match. Files with no record are not checked."""
    path = Path(path)
    recorded = _read_checksums(path.parent).get(path.name)
    if recorded is None:
        return
    accepted = [recorded] if isinstance(recorded, str) else recorded
    if sha256_file(path) not in accepted:
        raise ChecksumMismatchError(
            f"{path} does not match the sha256 recorded in {path.parent / CHECKSUMS}: the file is damaged or was "
            f"changed. Restore it (a committed checkpoint: `git checkout -- {path}`; otherwise re-export or retrain it)")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CheckpointFileError(ValueError):
    """A torch file that cannot be read (truncated, damaged, or not a torch file at all)."""


class UnsafeCheckpointError(CheckpointFileError):
    """A torch file holds something other than tensors and plain containers (e.g. a pickled callable)."""


def load_torch_file(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU: tensors, numbers, strings and containers
    only. A file that would need to run code to unpickle is refused with UnsafeCheckpointError, one
    that does not match its recorded sha256 with ChecksumMismatchError, and one torch cannot read
    (truncated, not a torch file) with CheckpointFileError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    verify_checksum(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"GLOBAL [\w.]+", str(error))
        if unsafe:
            raise UnsafeCheckpointError(f"{path} is not a plain weights file and was not loaded (loading it would "
                                        f"run code from it): it asks for {unsafe.group()}") from None
        raise CheckpointFileError(f"{path} is not a readable torch file (truncated or damaged?): "
                                  f"{_first_line(error)}") from None
    except Exception as error:  # torch's reader on a truncated or foreign file fails in many ways
        raise CheckpointFileError(f"{path} is not a readable torch file (truncated or damaged?): "
                                  f"{_first_line(error)}") from None


def _first_line(error: Exception, limit: int = 160) -> str:
    """The error as `Type: first line of its message`, cut to `limit` characters (torch's texts run long)."""
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))  # the cause, inside torch's long advice
    lines = [unpickler.group(1)] if unpickler else str(error).splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines and lines[0] else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_torch_dict(path: Path, what: str = "checkpoint") -> dict:
    """`load_torch_file(path)`, which must hold a dict (every mechlab torch file does); anything else
    (a bare tensor, a list) is a CheckpointFileError naming the file and what it holds."""
    obj = load_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointFileError(f"{path} holds a {type(obj).__name__}, not a {what} (a dict); "
                                  "was it written by mechlab?")
    return obj
