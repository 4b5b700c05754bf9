"""The CLI reports a user's mistakes in one line, without a traceback."""
import subprocess
import sys

import pytest
import torch


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mechlab", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("setup, args, message", [
    (lambda d: None, ("main", "evaluate", "--out", "nowhere"), "error: no checkpoint file at nowhere/model.pt"),
    (lambda d: (d / "afile").write_text(""), ("three_layer", "train", "--quick", "--run-dir", "afile"),
     "error: run directory afile is a file"),
    (lambda d: None, ("main", "train", "--quick", "--max-steps", "-5", "--data-dir", "nodata"),
     "error: invalid TrainConfig: max_steps must be >= 1, got -5"),
    (lambda d: (d / "ck").mkdir() or torch.save({"step": 1}, d / "ck" / "model.pt"), ("three_layer", "evaluate", "--out", "ck"),
     "error: ck/model.pt is not a model checkpoint"),
    (lambda d: (d / "afile").write_text(""), ("three_layer", "evaluate", "--out", "afile"),
     "error: --out afile is a file, not a folder"),
    (lambda d: (d / "afile").write_text(""), ("three_layer", "export", "--out", "afile"),
     "error: --out afile is a file, not a folder"),
    (lambda d: (d / "ck" / "model.pt").mkdir(parents=True), ("three_layer", "evaluate", "--out", "ck"),
     "error: ck/model.pt is a directory, not a checkpoint file"),
])
def test_mistakes_end_with_one_line_naming_them(tmp_path, setup, args, message):
    setup(tmp_path)
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(message), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("option, value", [("--limit", "0"), ("--limit", "-1"), ("--threads", "0"),
                                           ("--stop-after-steps", "0"), ("--stop-after-steps", "-3")])
def test_counts_must_be_at_least_one(tmp_path, option, value):
    done = cli("three_layer", "train", "--quick", option, value, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(f"argument {option}: must be >= 1, got {value}"), done.stderr
    assert not (tmp_path / "runs").exists()


def test_evaluate_writes_into_the_checkpoint_folder_only_when_asked(tmp_path, repo_root, generated_data):
    import json
    import shutil

    shutil.copytree(repo_root / "checkpoints" / "main", tmp_path / "ck", ignore=shutil.ignore_patterns("sweep", "final_eval.json"))
    before = sorted(p.name for p in (tmp_path / "ck").iterdir())
    args = ("main", "evaluate", "--out", "ck", "--limit", "20", "--data-dir", str(generated_data[0]))
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == before
    assert cli(*args, "--save", cwd=tmp_path).returncode == 0
    saved = json.loads((tmp_path / "ck" / "final_eval.json").read_text())
    assert saved["test"]["test_exact"] >= 0.95  # the committed model, on the first 20 test rows



def test_sweep_runs_a_registered_sweep_and_main_sweep_still_means_the_recipe_variants(tmp_path, monkeypatch, capsys):
    import json

    from mechlab.__main__ import main, parser, sweep_parser

    monkeypatch.chdir(tmp_path)
    main(["sweep", "grokking_mlp_width", "--quick", "--where", "d_hidden=128"])
    assert "[1/1] d_hidden=128,seed=0: trained" in capsys.readouterr().out
    main(["sweep", "grokking_mlp_width", "--quick"])
    out = capsys.readouterr().out
    assert "d_hidden=64,seed=0: trained" in out and "d_hidden=128,seed=0: skipped" in out
    assert out.strip().endswith("wrote runs/sweeps/grokking_mlp_width/quick/results.json")
    table = json.loads((tmp_path / "runs/sweeps/grokking_mlp_width/quick/results.json").read_text())
    assert [row["id"] for row in table["rows"]] == ["d_hidden=64,seed=0", "d_hidden=128,seed=0"]
    where = sweep_parser().parse_args(["main_minimal", "--where", "n_layers=3", "n_heads=8", "--where", "seed=0"]).where
    assert where == [("n_layers", "3"), ("n_heads", "8"), ("seed", "0")]  # a second --where adds to the first
    args = parser().parse_args(["main", "sweep", "--variant", "seed_lr"])  # notebook 01's command, unchanged
    assert (args.study, args.command, args.variant) == ("main", "sweep", ["seed_lr"])
