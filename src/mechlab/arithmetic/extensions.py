"""The task encodings and data of issue 15's arithmetic extensions (studies in `mechlab.arithmetic.extension_studies`).

Multi-task: `a + b`, `a - b` and `a * b mod 113` in one model. The prompts are written by the
multi-task tokenizer (`MULTITASK_TOKENIZER`, operators `+ - *`, see `mechlab.arithmetic.tokenizer`).
Its data are the main data's (a, b) pairs under each operator (`multitask_rows`): the `+` rows are the
main rows, and a validation or test pair is new to training under every operator. Nothing new is
written: the rows are derived from the main data files, which `data/manifest.json` checks.

Multi-modulus: prompts with a modulus of `TRAIN_MODULI` (the primes in 89..131 but 97 and 127) for
training; 97 and 127 (`HELD_OUT_MODULI`) appear in no training or validation row, only in their own
test sets, so they test whether the model learned `mod m` for an m it never saw. The main tokenizer
already writes any modulus (`mod 97` is characters), so these prompts use the main vocabulary.
`make_multimodulus_datasets` draws, per modulus, rows with the main training split's bucket mix
(`MAIN_TRAIN_MIX`), the buckets taken relative to that modulus; `ensure_multimodulus_data` writes them
with a manifest (`data/multimodulus/manifest.json`, committed) and checks them against it.
"""
from __future__ import annotations

import random
from pathlib import Path

from mechlab.arithmetic.data import (
    MAX_OPERAND,
    SEED,
    DataError,
    Example,
    bucket_of,
    read_manifest,
    sample_unique_pairs,
    verify_against_manifest,
    write_manifest,
    write_manifested,
)
from mechlab.arithmetic.tokenizer import MAX_MODULUS, ArithmeticTokenizer

MULTITASK_OPERATORS = "+-*"
MULTITASK_TOKENIZER = ArithmeticTokenizer(MULTITASK_OPERATORS)

TRAIN_MODULI = (89, 101, 103, 107, 109, 113, 131)
HELD_OUT_MODULI = (97, 127)
# The main training split's bucket counts (data/manifest.json, train.jsonl; a test checks them): each
# modulus's rows get this mix, so the scarce, easy buckets carry the same share of the signal.
MAIN_TRAIN_MIX = {"edge": 10_741, "no_wrap": 5_112, "single_wrap": 15_727, "large_wrap": 68_420}
# Rows per training modulus in each split (7 moduli: 98,000 / 9,800 / 9,800), and per held-out set.
MULTIMODULUS_SIZES = {"train": 14_000, "val": 1_400, "test": 1_400}
HELD_OUT_SIZE = 10_000


def with_operator(row: dict, op: str) -> dict:
    """The data row of the same a, b, m under operator `op` (answer and bucket recomputed)."""
    return Example(row["a"], row["b"], row["m"], bucket_of(row["a"], row["b"], row["m"], op), op=op).to_json()


def multitask_rows(rows: list[dict], operators: str = MULTITASK_OPERATORS) -> list[dict]:
    """Each row under each operator, in the order (row 0 under +, -, *), (row 1 under ...), ...; the
    `+` rows are `rows` themselves."""
    return [row if op == "+" else with_operator(row, op) for row in rows for op in operators]


def check_moduli(train_moduli: tuple[int, ...], held_out: tuple[int, ...]) -> None:
    """Raise DataError unless every modulus is in 2..MAX_MODULUS and no held-out modulus is trained on."""
    for m in train_moduli + held_out:
        if not isinstance(m, int) or isinstance(m, bool) or not 2 <= m <= MAX_MODULUS:
            raise DataError(f"modulus {m!r} is outside the allowed 2..{MAX_MODULUS} (answers must fit the layout)")
    shared = sorted(set(train_moduli) & set(held_out))
    if shared:
        raise DataError(f"held-out moduli {shared} are also training moduli: they would not be held out")


def scarce_pairs_by_bucket(m: int) -> dict[str, list[tuple[int, int]]]:
    """Every (a, b), 0 <= a, b <= MAX_OPERAND, of the buckets edge, no_wrap and single_wrap of
    `a + b mod m`, in a fixed order (found among a + b < 2m and the edge candidates, not all 10^6 pairs)."""
    candidates = {(a, b) for a in range(min(2 * m, MAX_OPERAND + 1)) for b in range(min(2 * m - a, MAX_OPERAND + 1))}
    for x in range(MAX_OPERAND + 1):
        candidates |= {(x, 0), (0, x), (x, MAX_OPERAND), (MAX_OPERAND, x)}
        candidates |= {(x, b) for b in range((-x) % m, MAX_OPERAND + 1, m)}  # x + b ≡ 0 (mod m)
    groups: dict[str, list[tuple[int, int]]] = {"edge": [], "no_wrap": [], "single_wrap": []}
    for a, b in sorted(candidates):
        bucket = bucket_of(a, b, m)
        if bucket in groups:
            groups[bucket].append((a, b))
    return groups


def bucket_quota(n: int) -> dict[str, int]:
    """`n` rows divided among the buckets in the ratio of MAIN_TRAIN_MIX (large_wrap takes the rounding)."""
    total = sum(MAIN_TRAIN_MIX.values())
    quota = {b: round(n * c / total) for b, c in MAIN_TRAIN_MIX.items() if b != "large_wrap"}
    return quota | {"large_wrap": n - sum(quota.values())}


def modulus_splits(m: int, sizes: dict[str, int], rng: random.Random) -> dict[str, list[Example]]:
    """Disjoint splits of `a + b mod m` of the given sizes, each with the bucket mix of `bucket_quota`."""
    groups = scarce_pairs_by_bucket(m)
    splits: dict[str, list[Example]] = {name: [] for name in sizes}
    taken: set[tuple[int, int]] = set()
    for bucket, pairs in groups.items():
        pairs = rng.sample(pairs, sum(bucket_quota(n)[bucket] for n in sizes.values()))
        start = 0
        for name, n in sizes.items():
            chosen = pairs[start:start + bucket_quota(n)[bucket]]
            splits[name] += [Example(a, b, m, bucket) for a, b in chosen]
            taken |= set(chosen)
            start += len(chosen)
    for name, n in sizes.items():
        chosen = sample_unique_pairs(rng, 0, MAX_OPERAND, bucket_quota(n)["large_wrap"], taken,
                                     keep=lambda pair: bucket_of(*pair, m) == "large_wrap")
        taken |= set(chosen)
        splits[name] += [Example(a, b, m, "large_wrap") for a, b in chosen]
    return splits


def make_multimodulus_datasets(seed: int = SEED, train_moduli: tuple[int, ...] = TRAIN_MODULI,
                               held_out: tuple[int, ...] = HELD_OUT_MODULI, sizes: dict[str, int] = MULTIMODULUS_SIZES,
                               held_out_size: int = HELD_OUT_SIZE) -> dict[str, list[Example]]:
    """train / val / test over `train_moduli` (`sizes` rows per modulus, shuffled together) and one
    test set per held-out modulus, `test_mod<m>` (`held_out_size` rows); the same seed gives the same rows."""
    check_moduli(train_moduli, held_out)
    rng = random.Random(seed)
    datasets: dict[str, list[Example]] = {name: [] for name in sizes}
    for m in train_moduli:
        for name, rows in modulus_splits(m, sizes, rng).items():
            datasets[name] += rows
    for name in sizes:
        rng.shuffle(datasets[name])
    for m in held_out:
        rows = modulus_splits(m, {"test": held_out_size}, rng)["test"]
        rng.shuffle(rows)
        datasets[f"test_mod{m}"] = rows
    return datasets


def multimodulus_header(seed: int = SEED) -> dict:
    """What the multi-modulus manifest records besides its files."""
    return {"seed": seed, "train_moduli": list(TRAIN_MODULI), "held_out_moduli": list(HELD_OUT_MODULI),
            "rows_per_modulus": MULTIMODULUS_SIZES, "held_out_rows": HELD_OUT_SIZE}


def ensure_multimodulus_data(data_dir: Path, seed: int = SEED) -> Path:
    """`data_dir` holding the multi-modulus data sets as they are in its manifest.json: files that are
    missing or differ from it are regenerated (from `seed`), and the manifest is written if there is
    none. A manifest of other settings, or regenerated files that still differ, are a DataError."""
    data_dir = Path(data_dir)
    manifest_path = data_dir / "manifest.json"
    if manifest_path.exists():
        recorded = {k: v for k, v in read_manifest(data_dir).items() if k != "files"}
        if recorded != multimodulus_header(seed):
            raise DataError(f"{manifest_path} records other settings ({recorded}) than these data "
                            f"({multimodulus_header(seed)})")
        if not verify_against_manifest(data_dir):
            return data_dir
    manifest = write_manifested(data_dir, make_multimodulus_datasets(seed), multimodulus_header(seed))
    if not manifest_path.exists():
        write_manifest(data_dir, manifest)
    differing = verify_against_manifest(data_dir)
    if differing:
        raise DataError(f"regenerated multi-modulus files differ from {manifest_path}: {differing}")
    return data_dir
