"""Datasets of the main study: `a + b mod m =` problems, split, bucketed, written as JSON Lines.

Buckets (every pair gets exactly one; "edge" wins over the sum-based buckets):
    edge         a or b is 0, a or b is 999, both are single digits, or a + b ≡ 0 (mod m)
    no_wrap      a + b < m
    single_wrap  m <= a + b < 2m
    large_wrap   a + b >= 2m
For the other operators of the extensions (`mechlab.arithmetic.extensions`) the value a - b or a * b
takes the place of a + b, and a - b < 0 is bucket "negative".

Split scheme. Only 6,441 pairs have a + b < 113 and 19,210 have 113 <= a + b < 226, so the
seed's 30% / 40% shares cannot be met with unique pairs. Instead every pair of the scarce
buckets (edge, no_wrap, single_wrap) is used, divided train : validation : test in the ratio
of the split sizes (100k : 10k : 10k), and large_wrap pairs fill the rest of each split. All
three splits therefore have the same bucket mix, and no pair appears twice.
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from mechlab.arithmetic.tokenizer import OPERATIONS, Problem, TokenizerError
from mechlab.core.io import sha256_file, write_json_atomic, write_text_atomic

MODULUS = 113
MAX_OPERAND = 999
SPLIT_SIZES = {"train": 100_000, "val": 10_000, "test": 10_000}
OOD_SIZE = 10_000
SEED = 1234
SCARCE_BUCKETS = ("edge", "no_wrap", "single_wrap")
BUCKETS = SCARCE_BUCKETS + ("large_wrap",)


@dataclass(frozen=True)
class Example(Problem):
    """A problem (a, b, m and op: its `prompt` and `answer`) and the bucket it belongs to. Its row
    has an "op" key only when op is not "+", so the main study's rows are those of a + b."""

    bucket: str

    def to_json(self) -> dict:
        op = {} if self.op == "+" else {"op": self.op}
        return {"a": self.a, "b": self.b, "m": self.m, **op, "prompt": self.prompt, "answer": self.answer,
                "bucket": self.bucket}


def is_edge_case(a: int, b: int, m: int = MODULUS, op: str = "+") -> bool:
    return (a == 0 or b == 0 or a == MAX_OPERAND or b == MAX_OPERAND or (a < 10 and b < 10)
            or OPERATIONS[op](a, b) % m == 0)


def bucket_of(a: int, b: int, m: int = MODULUS, op: str = "+") -> str:
    """The bucket of `a op b mod m` (module docstring); a - b < 0 (subtraction only) is "negative"."""
    if is_edge_case(a, b, m, op):
        return "edge"
    value = OPERATIONS[op](a, b)
    if value < 0:
        return "negative"
    if value < m:
        return "no_wrap"
    if value < 2 * m:
        return "single_wrap"
    return "large_wrap"


def all_pairs_by_bucket(m: int = MODULUS) -> dict[str, list[tuple[int, int]]]:
    """Every (a, b) with 0 <= a, b <= 999, grouped by bucket, in a fixed order."""
    groups: dict[str, list[tuple[int, int]]] = {name: [] for name in BUCKETS}
    for a in range(MAX_OPERAND + 1):
        for b in range(MAX_OPERAND + 1):
            groups[bucket_of(a, b, m)].append((a, b))
    return groups


def make_splits(seed: int = SEED, sizes: dict[str, int] = SPLIT_SIZES) -> dict[str, list[Example]]:
    """Disjoint train/val/test splits with the same bucket mix (see the module docstring)."""
    rng = random.Random(seed)
    groups = all_pairs_by_bucket()
    total = sum(sizes.values())
    n_scarce = sum(len(groups[b]) for b in SCARCE_BUCKETS)
    if n_scarce > total:
        raise ValueError(f"splits of {total} examples in all cannot hold the {n_scarce} scarce-bucket pairs")
    splits: dict[str, list[Example]] = {name: [] for name in sizes}
    for bucket in SCARCE_BUCKETS:
        pairs = groups[bucket][:]
        rng.shuffle(pairs)
        start = 0
        for i, (name, size) in enumerate(sizes.items()):
            stop = len(pairs) if i == len(sizes) - 1 else start + round(len(pairs) * size / total)
            splits[name] += [Example(a, b, MODULUS, bucket) for a, b in pairs[start:stop]]
            start = stop
    large = rng.sample(groups["large_wrap"], sum(size - len(splits[name]) for name, size in sizes.items()))
    start = 0
    for name, size in sizes.items():
        need = size - len(splits[name])
        splits[name] += [Example(a, b, MODULUS, "large_wrap") for a, b in large[start : start + need]]
        start += need
        rng.shuffle(splits[name])
    return splits


def sample_unique_pairs(rng: random.Random, lo: int, hi: int, n: int, exclude: set[tuple[int, int]],
                        keep: Callable[[tuple[int, int]], bool] = lambda pair: True) -> list[tuple[int, int]]:
    """`n` distinct (a, b) pairs drawn uniformly from lo..hi, none in `exclude`, each one `keep` accepts."""
    pairs: list[tuple[int, int]] = []
    seen = set(exclude)
    while len(pairs) < n:
        pair = (rng.randint(lo, hi), rng.randint(lo, hi))
        if pair not in seen and keep(pair):
            seen.add(pair)
            pairs.append(pair)
    return pairs


def make_ood_sets(used: set[tuple[int, int]], seed: int = SEED) -> dict[str, list[Example]]:
    """Out-of-distribution sets; `used` holds the (a, b) pairs of train/val/test, which the
    in-range sets avoid.

    ood_4digit       a, b in 1000..1999, mod 113 (longer numbers than any training example)
    ood_mod97        a, b in 0..999, mod 97   (a modulus never trained on)
    ood_mod127       a, b in 0..999, mod 127
    ood_edge         extremes outside training: 0 with 4- and 5-digit numbers, 4-digit + 1-digit
    ood_adversarial  5,000 pairs of rows (2i, 2i+1) whose operands share last digits but whose
                     answers differ, e.g. 123 + 456 vs 223 + 366; bucket is the sum bucket
    """
    rng = random.Random(seed + 1)
    sets: dict[str, list[Example]] = {}
    sets["ood_4digit"] = [Example(a, b, MODULUS, "4digit") for a, b in sample_unique_pairs(rng, 1000, 1999, OOD_SIZE, set())]
    for m in (97, 127):
        pairs = sample_unique_pairs(rng, 0, MAX_OPERAND, OOD_SIZE, set())
        sets[f"ood_mod{m}"] = [Example(a, b, m, bucket_of(a, b, m)) for a, b in pairs]

    edge = [Example(x, 0, MODULUS, "zero_4digit") for x in range(1000, 2000)]
    edge += [Example(0, x, MODULUS, "zero_4digit") for x in range(1000, 2000)]
    edge += [Example(x, 0, MODULUS, "zero_5digit") for x in range(10000, 11000)]
    edge += [Example(0, x, MODULUS, "zero_5digit") for x in range(10000, 11000)]
    small = [(x, y) for x in range(1000, 2000) for y in range(1, 10)]
    small += [(y, x) for x, y in small]
    edge += [Example(a, b, MODULUS, "4digit_1digit") for a, b in rng.sample(small, OOD_SIZE - len(edge))]
    sets["ood_edge"] = edge

    adversarial: list[Example] = []
    taken = set(used)
    while len(adversarial) < OOD_SIZE:
        a, b = rng.randint(10, MAX_OPERAND), rng.randint(10, MAX_OPERAND)
        a2 = rng.randrange(a % 10, MAX_OPERAND + 1, 10)
        b2 = rng.randrange(b % 10, MAX_OPERAND + 1, 10)
        if (a + b) % MODULUS == (a2 + b2) % MODULUS or {(a, b), (a2, b2)} & taken or (a, b) == (a2, b2):
            continue
        taken |= {(a, b), (a2, b2)}
        adversarial += [Example(a, b, MODULUS, bucket_of(a, b)), Example(a2, b2, MODULUS, bucket_of(a2, b2))]
    sets["ood_adversarial"] = adversarial
    return sets


def make_all_datasets(seed: int = SEED) -> dict[str, list[Example]]:
    """Every data set of the main study, by name: train, val, test and the ood_* sets."""
    splits = make_splits(seed)
    used = {(e.a, e.b) for rows in splits.values() for e in rows}
    return {**splits, **make_ood_sets(used, seed)}


def write_jsonl(path: Path, rows: Iterable[Example]) -> None:
    write_text_atomic(path, "".join(json.dumps(r.to_json()) + "\n" for r in rows))


class DataError(ValueError):
    """A data file that is malformed or differs from its manifest; the message names the file (and line)."""


ROW_KEYS = ("a", "b", "m", "prompt", "answer", "bucket")  # and "op" where it is not "+"


def check_row(row: object, where: str) -> dict:
    """`row` if it has every key and its prompt and answer agree with its a, b, m; else DataError at `where`."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object with the keys {', '.join(ROW_KEYS)}, "
                        f"got a {type(row).__name__}")
    missing = [key for key in ROW_KEYS if key not in row]
    if missing:
        raise DataError(f"{where}: the row has no {', '.join(repr(k) for k in missing)} "
                        f"(a row needs the keys {', '.join(ROW_KEYS)})")
    try:
        problem = Problem(row["a"], row["b"], row["m"], op=row.get("op", "+"))
    except TokenizerError as error:
        raise DataError(f"{where}: {error}") from None
    if (row["prompt"], row["answer"]) != (problem.prompt, problem.answer):
        raise DataError(f"{where}: prompt {row['prompt']!r} / answer {row['answer']!r} disagree with a={row['a']}, "
                        f"b={row['b']}, m={row['m']} ({problem.prompt!r} / {problem.answer!r})")
    return row


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a data file as dicts with keys a, b, m, prompt, answer, bucket (and op). A line that is not
    JSON, lacks a key, or whose prompt or answer disagrees with its a, b, m is a DataError naming
    the file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: generate the data with `make data` (or run notebooks/00_data.ipynb)")
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not a JSON row ({error.msg})") from None
            rows.append(check_row(row, f"{path}:{number}"))
    return rows


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: hash each file once per process


def verify_file(path: Path) -> None:
    """Raise DataError if `path` differs from the sha256 its folder's manifest.json records for it
    (files the manifest does not list, or folders without one, are not checked)."""
    path = Path(path)
    manifest = read_manifest(path.parent) if (path.parent / "manifest.json").exists() else {"files": {}}
    info = manifest["files"].get(path.name)
    if info is None or not path.exists():
        return
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path)
    if _VERIFIED[key] != info["sha256"]:
        raise DataError(f"{path} differs from the sha256 in {path.parent / 'manifest.json'}: it was edited or damaged. "
                        "Regenerate it with `make data` (python -m mechlab data)")


def read_manifest(data_dir: Path) -> dict:
    """`data_dir/manifest.json`, or a DataError naming it when it is not a manifest."""
    path = Path(data_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): restore it with "
                        f"`git checkout -- {path}`") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise DataError(f"{path} has no 'files' table: restore it with `git checkout -- {path}`")
    return manifest


def bucket_counts(rows: Iterable[Example]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.bucket] = counts.get(r.bucket, 0) + 1
    return dict(sorted(counts.items()))


def write_datasets(data_dir: Path, seed: int = SEED) -> dict:
    """Generate every data set into `data_dir/NAME.jsonl` and return the manifest (not written)."""
    return write_manifested(data_dir, make_all_datasets(seed), {"seed": seed, "modulus": MODULUS})


def write_manifested(data_dir: Path, datasets: dict[str, list[Example]], header: dict) -> dict:
    """Write each data set to `data_dir/NAME.jsonl` and return its manifest (not written): `header`
    plus, per file, its rows, sha256 and bucket counts."""
    data_dir = Path(data_dir)
    manifest: dict = {**header, "files": {}}
    for name, rows in datasets.items():
        path = data_dir / f"{name}.jsonl"
        write_jsonl(path, rows)
        manifest["files"][path.name] = {"rows": len(rows), "sha256": sha256_file(path), "buckets": bucket_counts(rows)}
    return manifest


def write_manifest(data_dir: Path, manifest: dict) -> None:
    write_json_atomic(Path(data_dir) / "manifest.json", manifest)


def verify_against_manifest(data_dir: Path) -> list[str]:
    """Names of files whose sha256 differs from `data_dir/manifest.json` (empty list = all match)."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    return [name for name, info in manifest["files"].items()
            if not (data_dir / name).exists() or sha256_file(data_dir / name) != info["sha256"]]


def main(argv: list[str] | None = None) -> None:
    """`python -m mechlab data [DATA_DIR]`: regenerate the data and check it against the manifest."""
    parser = argparse.ArgumentParser(prog="python -m mechlab data",
                                     description="Regenerate the main task's data sets and check them against "
                                                 "DATA_DIR/manifest.json (written if missing).")
    parser.add_argument("data_dir", nargs="?", type=Path, default=Path("data"), help="default: data")
    data_dir = parser.parse_args(argv).data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise SystemExit(f"{data_dir} is a file, not a data folder")
    if (data_dir / "manifest.json").exists():
        differing = [name for name in verify_against_manifest(data_dir) if (data_dir / name).exists()]
        for name in differing:
            print(f"repairing {data_dir / name}: it differed from manifest.json")
    manifest = write_datasets(data_dir)
    if not (data_dir / "manifest.json").exists():
        write_manifest(data_dir, manifest)
    mismatched = verify_against_manifest(data_dir)
    if mismatched:
        raise SystemExit(f"regenerated files differ from {data_dir}/manifest.json: {mismatched}")
    print(f"wrote {len(manifest['files'])} files to {data_dir}/, all match manifest.json")

