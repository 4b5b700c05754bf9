"""The extension studies through the one CLI: each trains (a few quick steps), exports with its
budget recorded, and evaluates; multimodulus regenerates the committed data/multimodulus byte for byte."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from mechlab.arithmetic.extension_studies import BUDGET_EXAMPLES, MULTITASK
from mechlab.arithmetic.study import MAIN
from mechlab.core.model import build
from mechlab.core.studies import get_study

EXTENSIONS = ("multitask", "multimodulus", "lstm", "encdec")


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "mechlab", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_budget_is_the_main_recipes_examples():
    assert BUDGET_EXAMPLES == MAIN.train_config.max_steps * 128 == 3_584_000
    assert build(MULTITASK.model_config, "cpu").cfg.d_vocab == 21


def test_the_main_architecture_studies_run_the_main_recipe_with_fast_steps():
    for name in ("multitask", "multimodulus"):
        assert get_study(name).train_config == dataclasses.replace(MAIN.train_config, precision="bfloat16", compile=True)
    for name in ("lstm", "encdec"):
        assert get_study(name).train_config == MAIN.train_config


@pytest.mark.parametrize("name", EXTENSIONS)
def test_quick_train_export_and_evaluate(name, tmp_path, repo_root, generated_data):
    """`python -m mechlab NAME train --quick` (4 of its steps), then export and evaluate in this process."""
    if name == "multimodulus":  # the committed manifest: the regenerated files must match it
        data_dir = tmp_path / "mm"
        data_dir.mkdir()
        shutil.copy(repo_root / "data" / "multimodulus" / "manifest.json", data_dir / "manifest.json")
    else:
        data_dir = generated_data[0]
    out = run_cli(name, "train", "--quick", "--threads", "1", "--set", "max_steps=4", "compile=false", "--data-dir", str(data_dir),
                  "--run-dir", "run", cwd=tmp_path)
    assert "stopped after 4 steps" in out
    study = get_study(name)
    study.export(tmp_path / "run", tmp_path / "ck", quick=True)
    record = json.loads((tmp_path / "ck" / "study.json").read_text())
    assert (record["name"], record["steps"], record["budget_examples"]) == (name, 4, BUDGET_EXAMPLES)
    evaluated = study.evaluate(tmp_path / "ck", 20, data_dir=data_dir)
    assert all(0 <= metrics[f"{set_name}_exact"] <= 1 for set_name, metrics in evaluated.items())
    if name == "multimodulus":
        assert sorted(evaluated) == ["test", "test_mod127", "test_mod97"]
        assert set(evaluated["test_mod97"]) >= {"test_mod97_exact/mod_97", "test_mod97_exact/large_wrap"}
