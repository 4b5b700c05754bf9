"""The study registry and the one CLI (`python -m mechlab <study> train|export|evaluate`)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import mechlab.arithmetic.emergence  # noqa: F401  (registers emergence)
import mechlab.arithmetic.extension_studies  # noqa: F401  (registers multitask, multimodulus, lstm, encdec)
import mechlab.arithmetic.study  # noqa: F401  (registers "main")
import mechlab.modular.studies  # noqa: F401  (registers the modular studies)
import mechlab.shakespeare.studies  # noqa: F401  (registers the Shakespeare GPT studies)
import mechlab.toylm.studies  # noqa: F401  (registers the toy language models)
from mechlab.core.model import build
from mechlab.core.studies import STUDIES, get_study, quick_recipe, register_study
from mechlab.core.train import TrainConfig

TRAINED = {"main", "grokking_mlp", "grokking_mlp_seed", "grokking_transformer", "three_layer", "three_layer_wd01",
           "toylm_zero_layer", "toylm_attn_only_1l", "toylm_attn_only_2l", "toylm_attn_only_2l_ctx256",
           "toylm_attn_only_2l_lr1e2", "toylm_attn_only_2l_ctx256_lr1e2",
           "shakespeare_char_seed0", "shakespeare_char_seed1", "shakespeare_char_seed2",
           "grokking_published_seed999", "grokking_published_seed0", "grokking_published_seed1", "emergence", "multitask",
           "multimodulus", "lstm", "encdec"}
GPU_ONLY = {"shakespeare_char_gpu"}  # registered for a make target on a GPU machine; nothing committed
READS_MAIN_DATA = {"main", "multitask", "lstm", "encdec", "emergence"}  # make_task reads data/{train,val}.jsonl


def test_every_trained_model_is_registered():
    assert set(STUDIES) == TRAINED | GPU_ONLY
    assert get_study("three_layer_wd01").export_dir.as_posix() == "checkpoints/three_layer/wd01"  # where notebook 12 reads it


def test_an_unknown_study_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown study 'nope'; registered studies: emergence, encdec, grokking_mlp, .*three_layer_wd01"):
        get_study("nope")


def test_a_name_is_registered_once():
    clash = dataclasses.replace(get_study("three_layer"))
    with pytest.raises(ValueError, match="already registered"):
        register_study(clash)


@pytest.mark.parametrize("name", sorted(TRAINED | GPU_ONLY))
def test_every_study_builds_its_model_and_quick_task(name, generated_data):
    from mechlab.toylm.data import shakespeare_path
    if name.startswith(("toylm_", "shakespeare_")) and not shakespeare_path().is_file():
        pytest.skip(f"Tiny Shakespeare is not at {shakespeare_path()} (set MECHLAB_SHAKESPEARE)")
    study = get_study(name)
    options = {"data_dir": generated_data[0]} if name in READS_MAIN_DATA else {}
    task = study.make_task(True, **options)
    model = build(study.model_config)
    loss = task.loss(model, task.batch(0))
    assert loss.ndim == 0 and loss.item() > 0
    assert study.recipe(quick=True).max_steps < study.train_config.max_steps


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_every_recipe_is_the_committed_train_config(name, repo_root):
    """The committed train_config.json holds every TrainConfig field the run had; fields added to
    TrainConfig since (decay_steps) are absent there and must be at their defaults."""
    study = get_study(name)
    committed = json.loads((repo_root / study.export_dir / "train_config.json").read_text())
    ours = json.loads(json.dumps(study.train_config.to_json()))
    assert {k: ours[k] for k in committed} == committed
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert {k: ours[k] for k in ours.keys() - committed.keys()} == {k: defaults[k] for k in ours.keys() - committed.keys()}


def test_quick_recipe_shortens_the_schedule_only():
    cfg = quick_recipe(get_study("grokking_mlp").train_config, 10)
    assert (cfg.max_steps, cfg.warmup_steps, cfg.eval_every, cfg.checkpoint_every, cfg.snapshot_every) == (10, 2, 5, 5, 5)
    assert (cfg.lr, cfg.weight_decay) == (2e-3, 1.0)


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "mechlab", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True)


def test_cli_trains_exports_and_evaluates_a_study(tmp_path):
    run, out = tmp_path / "run", tmp_path / "ckpt"
    run_cli("three_layer", "train", "--quick", "--threads", "1", "--run-dir", str(run), cwd=tmp_path)
    run_cli("three_layer", "export", "--quick", "--run-dir", str(run), "--out", str(out), cwd=tmp_path)
    evaluated = run_cli("three_layer", "evaluate", "--out", str(out), cwd=tmp_path).stdout
    assert sorted(p.name for p in out.iterdir()) == ["checksums.json", "config.json", "metrics.json", "model.pt",
                                                     "study.json", "train_config.json"]
    study = json.loads((out / "study.json").read_text())
    assert study["name"] == "three_layer" and study["steps"] == 10
    assert json.loads(evaluated)["test_acc"] == pytest.approx(study["final"]["test_acc"])  # same model, same metric


def test_cli_refuses_an_unknown_study(tmp_path):
    with pytest.raises(subprocess.CalledProcessError, match="returned non-zero exit status 2") as error:
        run_cli("nope", "train", cwd=tmp_path)
    assert "invalid choice: 'nope'" in error.value.stderr
