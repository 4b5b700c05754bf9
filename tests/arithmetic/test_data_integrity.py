"""Data are checked where they are used: an edited or malformed file is refused with its name."""
import json
import shutil
import subprocess
import sys

import pytest

from mechlab.arithmetic.data import DataError, read_jsonl
from mechlab.arithmetic.task import ArithmeticSplit


@pytest.fixture
def data_copy(generated_data, tmp_path):
    """A writable copy of the generated data folder (with its manifest)."""
    source, manifest = generated_data
    folder = tmp_path / "data"
    shutil.copytree(source, folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def edit_first_row(path, **changes):
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = json.dumps({**json.loads(lines[0]), **changes}) + "\n"
    path.write_text("".join(lines))


def test_an_edited_split_is_refused_when_loaded(data_copy):
    assert len(ArithmeticSplit.load(data_copy, "test", limit=5)) == 5
    row = json.loads((data_copy / "test.jsonl").read_text().splitlines()[0])
    a, b, m = row["a"] + 1, row["b"], row["m"]  # a consistent row, but not the generated one
    edit_first_row(data_copy / "test.jsonl", a=a, prompt=f"{a} + {b} mod {m} =", answer=str((a + b) % m))
    with pytest.raises(DataError, match=r"test.jsonl differs from the sha256 in .*manifest.json.*make data"):
        ArithmeticSplit.load(data_copy, "test")


def test_a_row_whose_answer_disagrees_with_its_operands_names_file_and_line(data_copy):
    edit_first_row(data_copy / "val.jsonl", answer="999")
    with pytest.raises(DataError, match=r"val.jsonl:1: prompt .* answer '999' disagree with a="):
        read_jsonl(data_copy / "val.jsonl")


@pytest.mark.parametrize("line, message", [("{oops\n", r"bad.jsonl:2: not a JSON row"),
                                           ('{"a": 1, "b": 2}\n', r"bad.jsonl:2: the row has no 'm', 'prompt', 'answer', 'bucket'"),
                                           ("[1, 2]\n", r"bad.jsonl:2: a row must be a JSON object .* got a list"),
                                           ("\n", r"bad.jsonl:2: not a JSON row")])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"a": 1, "b": 2, "m": 113, "prompt": "1 + 2 mod 113 =", "answer": "3", "bucket": "edge"})
    (tmp_path / "bad.jsonl").write_text(good + "\n" + line)
    with pytest.raises(DataError, match=message):
        read_jsonl(tmp_path / "bad.jsonl")


def test_the_data_command_says_what_it_repaired(data_copy):
    edit_first_row(data_copy / "train.jsonl", answer="0")
    done = subprocess.run([sys.executable, "-m", "mechlab", "data", str(data_copy)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"repairing {data_copy / 'train.jsonl'}: it differed from manifest.json" in done.stdout
    assert "all match manifest.json" in done.stdout


def test_a_broken_manifest_is_named(data_copy):
    (data_copy / "manifest.json").write_text("{oops")
    with pytest.raises(DataError, match=r"manifest.json is not valid JSON .*git checkout"):
        ArithmeticSplit.load(data_copy, "test")
