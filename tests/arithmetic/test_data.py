"""The main study's data sets: regenerated from the seed, they must match the committed manifest
byte for byte, and every row must be right, in the right bucket, in exactly one split."""
import json
import re
from collections import Counter

import pytest

from mechlab.arithmetic import data as D
from mechlab.core.io import sha256_file

PROMPT = re.compile(r"^(0|[1-9]\d*) \+ (0|[1-9]\d*) mod ([1-9]\d*) =$")
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def rows(generated_data) -> dict[str, list[dict]]:
    data_dir, manifest = generated_data
    return {name.removesuffix(".jsonl"): D.read_jsonl(data_dir / name) for name in manifest["files"]}


def pairs(rows_of_one_set) -> list[tuple[int, int]]:
    return [(r["a"], r["b"]) for r in rows_of_one_set]


def test_regenerated_files_are_byte_identical_to_the_committed_manifest(generated_data, committed_manifest):
    data_dir, manifest = generated_data
    assert manifest == committed_manifest
    for name, info in committed_manifest["files"].items():
        assert sha256_file(data_dir / name) == info["sha256"], name


def test_verify_against_manifest_names_a_changed_file(generated_data, tmp_path, committed_manifest):
    data_dir, _ = generated_data
    for name in committed_manifest["files"]:
        (tmp_path / name).write_bytes((data_dir / name).read_bytes())
    (tmp_path / "manifest.json").write_text(json.dumps(committed_manifest))
    assert D.verify_against_manifest(tmp_path) == []
    with open(tmp_path / "val.jsonl", "a") as f:
        f.write("\n")
    (tmp_path / "test.jsonl").unlink()
    assert sorted(D.verify_against_manifest(tmp_path)) == ["test.jsonl", "val.jsonl"]


def test_another_seed_gives_other_splits(rows, committed_manifest):
    other = D.make_splits(seed=committed_manifest["seed"] + 1)["val"][:20]
    assert [(e.a, e.b) for e in other] != pairs(rows["val"][:20])


def test_split_sizes(rows):
    assert {name: len(rows[name]) for name in SPLITS} == D.SPLIT_SIZES


def test_splits_have_no_duplicates_and_are_pairwise_disjoint(rows):
    for name in SPLITS:
        assert len(set(pairs(rows[name]))) == len(rows[name]), name
    train, val, test = (set(pairs(rows[name])) for name in SPLITS)
    assert not train & val and not train & test and not val & test


def test_every_row_is_formatted_exactly_and_answered_correctly(rows):
    for name, rs in rows.items():
        for r in rs:
            assert set(r) == {"a", "b", "m", "prompt", "answer", "bucket"}, name
            assert r["prompt"] == f"{r['a']} + {r['b']} mod {r['m']} =", r
            assert PROMPT.match(r["prompt"]), r
            assert r["answer"] == str((r["a"] + r["b"]) % r["m"]), r
            assert r["m"] == (int(name.removeprefix("ood_mod")) if name.startswith("ood_mod") else D.MODULUS), r


def expected_bucket(a: int, b: int, m: int) -> str:
    """The bucket rules as the data docs state them (edge wins over the sum-based buckets)."""
    if 0 in (a, b) or 999 in (a, b) or (a < 10 and b < 10) or (a + b) % m == 0:
        return "edge"
    return "no_wrap" if a + b < m else "single_wrap" if a + b < 2 * m else "large_wrap"


def test_in_range_rows_follow_the_bucket_rules(rows):
    for name in (*SPLITS, "ood_mod97", "ood_mod127", "ood_adversarial"):
        for r in rows[name]:
            assert r["bucket"] == expected_bucket(r["a"], r["b"], r["m"]), (name, r)


def test_bucket_rule_examples():
    assert D.bucket_of(0, 500) == D.bucket_of(999, 5) == D.bucket_of(3, 4) == D.bucket_of(100, 13) == "edge"
    assert D.bucket_of(50, 62) == "no_wrap"
    assert D.bucket_of(100, 14) == D.bucket_of(112, 113) == "single_wrap"
    assert D.bucket_of(113, 114) == D.bucket_of(998, 998) == "large_wrap"


def test_ood_edge_and_4digit_buckets_describe_their_operands(rows):
    for r in rows["ood_4digit"]:
        assert r["bucket"] == "4digit" and 1000 <= r["a"] <= 1999 and 1000 <= r["b"] <= 1999
    digits = {"zero_4digit": 4, "zero_5digit": 5}
    for r in rows["ood_edge"]:
        lengths = sorted((len(str(r["a"])), len(str(r["b"]))))
        if r["bucket"] in digits:
            assert 0 in (r["a"], r["b"]) and lengths == [1, digits[r["bucket"]]], r
        else:
            assert r["bucket"] == "4digit_1digit" and lengths == [1, 4] and 0 not in (r["a"], r["b"]), r


def test_realized_bucket_counts_equal_the_manifest(rows, committed_manifest):
    for name, rs in rows.items():
        info = committed_manifest["files"][f"{name}.jsonl"]
        assert len(rs) == info["rows"]
        assert dict(Counter(r["bucket"] for r in rs)) == info["buckets"], name


def test_every_scarce_pair_is_used_once_divided_10_1_1(rows):
    all_pairs = D.all_pairs_by_bucket()
    total = sum(D.SPLIT_SIZES.values())
    for bucket in D.SCARCE_BUCKETS:
        per_split = {name: [p for p, r in zip(pairs(rows[name]), rows[name]) if r["bucket"] == bucket] for name in SPLITS}
        used = [p for name in SPLITS for p in per_split[name]]
        assert sorted(used) == sorted(all_pairs[bucket]), bucket
        for name in ("val", "test"):
            share = len(all_pairs[bucket]) * D.SPLIT_SIZES[name] / total
            assert abs(len(per_split[name]) - share) <= 1, (bucket, name)


def test_adversarial_pairs_share_last_digits_and_differ_in_answer(rows):
    adversarial = rows["ood_adversarial"]
    assert len(adversarial) % 2 == 0
    for first, second in zip(adversarial[::2], adversarial[1::2]):
        assert (first["a"] % 10, first["b"] % 10) == (second["a"] % 10, second["b"] % 10), (first, second)
        assert first["answer"] != second["answer"], (first, second)
    used = {p for name in SPLITS for p in pairs(rows[name])}
    assert not used & set(pairs(adversarial))
    assert len(set(pairs(adversarial))) == len(adversarial)


def test_reading_a_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make data"):
        D.read_jsonl(tmp_path / "train.jsonl")


def test_the_data_command_line_has_help(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "mechlab", "data", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "usage: python -m mechlab data" in out and not (tmp_path / "--help").exists()


def test_breakdown_splits_metrics_by_bucket_or_digit_layout():
    from mechlab.arithmetic.task import breakdown

    metrics = {"test_exact": 0.9, "test_exact/edge": 0.5, "test_exact/no_wrap": 1.0, "test_exact/digits_2+3": 0.8,
               "ood_edge_exact/edge": 0.1}
    assert breakdown(metrics, "test", by="bucket") == {"edge": 0.5, "no_wrap": 1.0}
    assert breakdown(metrics, "test", by="digits") == {"2+3": 0.8}
    with pytest.raises(ValueError, match="by 'bucket' or 'digits'"):
        breakdown(metrics, "test", by="sign")


def test_readme_example_row_is_what_the_generator_writes(repo_root):
    """The data-format example in README.md is a real row: right answer, right bucket."""
    readme = (repo_root / "README.md").read_text()
    shown = json.loads(re.search(r'^\{"a": .*\}$', readme, re.MULTILINE).group(0))
    a, b, m = shown["a"], shown["b"], shown["m"]
    assert shown == D.Example(a, b, m, D.bucket_of(a, b)).to_json()
