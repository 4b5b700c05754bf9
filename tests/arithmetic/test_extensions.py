"""The extensions' task encodings and data: multi-task rows, multi-modulus data with held-out moduli."""
import json
from collections import Counter

import pytest

from mechlab.arithmetic import extensions as X
from mechlab.arithmetic.data import DataError, check_row
from mechlab.arithmetic.task import ArithmeticSplit, breakdown, evaluate_split

SMALL = {"train": 300, "val": 40, "test": 40}


@pytest.fixture(scope="module")
def small_data():
    return X.make_multimodulus_datasets(seed=7, train_moduli=(89, 113), held_out=(97,), sizes=SMALL, held_out_size=200)


def test_multitask_rows_are_the_rows_under_each_operator(mixed_rows):
    rows = X.multitask_rows(mixed_rows[:2])
    assert [r.get("op", "+") for r in rows] == ["+", "-", "*", "+", "-", "*"]
    assert rows[0] is mixed_rows[0]  # the + rows are the main rows, byte for byte
    a, b = mixed_rows[1]["a"], mixed_rows[1]["b"]
    assert (rows[4]["prompt"], rows[4]["answer"]) == (f"{a} - {b} mod 113 =", str((a - b) % 113))
    assert (rows[5]["prompt"], rows[5]["answer"]) == (f"{a} * {b} mod 113 =", str(a * b % 113))
    for row in rows:
        check_row(row, "multitask")  # prompt and answer agree with a, b, m and op


def test_subtraction_below_zero_has_its_own_bucket():
    assert X.with_operator({"a": 12, "b": 30, "m": 113}, "-")["bucket"] == "negative"
    assert X.with_operator({"a": 30, "b": 12, "m": 113}, "-")["bucket"] == "no_wrap"
    assert X.with_operator({"a": 15, "b": 12, "m": 113}, "*")["bucket"] == "single_wrap"  # 113 <= 180 < 226
    assert X.with_operator({"a": 30, "b": 12, "m": 113}, "*")["bucket"] == "large_wrap"  # 360 >= 226


def test_multimodulus_data_are_deterministic_and_hold_out_the_held_out_moduli(small_data):
    again = X.make_multimodulus_datasets(seed=7, train_moduli=(89, 113), held_out=(97,), sizes=SMALL, held_out_size=200)
    assert small_data == again
    other = X.make_multimodulus_datasets(seed=8, train_moduli=(89, 113), held_out=(97,), sizes=SMALL, held_out_size=200)
    assert small_data["train"] != other["train"]
    assert sorted(small_data) == ["test", "test_mod97", "train", "val"]
    for name in ("train", "val", "test"):
        assert Counter(e.m for e in small_data[name]) == {89: SMALL[name], 113: SMALL[name]}
    assert {e.m for e in small_data["test_mod97"]} == {97} and len(small_data["test_mod97"]) == 200


def test_multimodulus_splits_are_disjoint_and_have_the_main_bucket_mix(small_data):
    triples = {name: {(e.a, e.b, e.m) for e in small_data[name]} for name in ("train", "val", "test")}
    assert sum(map(len, triples.values())) == sum(len(small_data[n]) for n in triples)  # no duplicates
    assert not triples["train"] & triples["val"] and not triples["train"] & triples["test"]
    train_89 = Counter(e.bucket for e in small_data["train"] if e.m == 89)
    assert train_89 == X.bucket_quota(300) and X.bucket_quota(300)["no_wrap"] == round(300 * 5_112 / 100_000)


def test_the_bucket_mix_is_the_committed_main_training_split(committed_manifest):
    assert committed_manifest["files"]["train.jsonl"]["buckets"] == X.MAIN_TRAIN_MIX


@pytest.mark.parametrize("train, held, message", [
    ((89, 97), (97,), r"held-out moduli \[97\] are also training moduli"),
    ((89, 1001), (97,), r"modulus 1001 is outside the allowed 2..1000"),
    ((89,), (1,), r"modulus 1 is outside"),
])
def test_bad_moduli_are_refused(train, held, message):
    with pytest.raises(DataError, match=message):
        X.make_multimodulus_datasets(train_moduli=train, held_out=held, sizes=SMALL)


def test_the_committed_multimodulus_manifest_records_the_settings(repo_root):
    manifest = json.loads((repo_root / "data" / "multimodulus" / "manifest.json").read_text())
    assert {k: v for k, v in manifest.items() if k != "files"} == X.multimodulus_header()
    assert sorted(manifest["files"]) == ["test.jsonl", "test_mod127.jsonl", "test_mod97.jsonl", "train.jsonl", "val.jsonl"]
    assert manifest["files"]["train.jsonl"]["rows"] == 7 * 14_000


def test_ensure_multimodulus_data_refuses_a_manifest_of_other_settings(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({**X.multimodulus_header(), "seed": 1, "files": {}}))
    with pytest.raises(DataError, match="records other settings"):
        X.ensure_multimodulus_data(tmp_path)


def test_per_modulus_and_per_operator_breakdowns(small_data, arithmetic_oracle, mixed_rows):
    rows = [e.to_json() for e in small_data["test"] + small_data["test_mod97"][:50]]
    oracle = arithmetic_oracle(wrong=lambda a, b, m: m == 97)  # right everywhere but mod 97
    metrics = evaluate_split(oracle, ArithmeticSplit.from_rows(rows), "test", by=("bucket", "modulus"))
    assert breakdown(metrics, "test", "modulus") == {"89": 1.0, "97": 0.0, "113": 1.0}
    assert set(breakdown(metrics, "test", "bucket")) == set(X.MAIN_TRAIN_MIX)
    assert metrics["test_exact"] == pytest.approx(80 / 130)
    split = ArithmeticSplit.from_rows(X.multitask_rows(mixed_rows), X.MULTITASK_TOKENIZER)
    oracle = arithmetic_oracle(operators="+-*", wrong_ops="-")
    metrics = evaluate_split(oracle, split, "val", by=("op",))
    assert breakdown(metrics, "val", "op") == {"*": 1.0, "+": 1.0, "-": 0.0}
    assert metrics["val_exact"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="breakdown by 'bucket' or 'digits' or 'op' or 'modulus', not 'x'"):
        breakdown(metrics, "test", "x")
