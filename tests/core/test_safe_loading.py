"""A torch file carrying a pickled payload (here: os.system) is refused at every place mechlab reads
torch files, and the payload never runs: checkpoints, run state, snapshots, series, exports."""
import os

import pytest
import torch

from mechlab.arithmetic.study import evaluate_checkpoint, load_analysis_model
from mechlab.bench.patching import run_benchmark
from mechlab.core.io import CheckpointFileError, load_torch_dict, load_torch_file
from mechlab.core.model import ModelConfig, build_model, load_checkpoint
from mechlab.core.runs import export_run, load_series
from mechlab.core.studies import get_study
from mechlab.core.train import TrainConfig, load_history, train
from mechlab.modular.studies import export_progress
from mechlab.modular.studies import load_series as load_study_series

SMALL = ModelConfig(n_layers=1, n_heads=1, d_model=8, d_head=8, d_mlp=16, d_vocab=19, n_ctx=32)


class RunsCode:
    """Unpickling this calls os.system: what a hostile file would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(tmp_path):
    """hostile(path, contents): write `contents` plus a payload to `path` (as torch.save would)."""
    marker = tmp_path / "PWNED"

    def write(path, contents):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({**contents, "note": RunsCode(marker)}, path)
        return path

    yield write
    assert not marker.exists(), "the payload ran"


def weights():
    return build_model(SMALL, device="cpu").state_dict()


def model_file(hostile, folder):
    return hostile(folder / "model.pt", {"config": SMALL.to_json(), "state_dict": weights(), "step": 1})


def run_state(hostile, run_dir):
    return hostile(run_dir / "last.pt", {"step": 1, "history": [], "state_dict": weights(),
                                         "train_config": TrainConfig(max_steps=2).to_json()})


def good_last_pt_and_hostile_snapshot(hostile, run_dir):
    torch.save({"step": 1, "history": [], "state_dict": weights(), "train_config": TrainConfig(max_steps=2).to_json()},
               run_dir / "last.pt")
    hostile(run_dir / "step_000001.pt", {"step": 1, "state_dict": weights()})


SITES = {
    "load_torch_file": lambda h, d: load_torch_file(model_file(h, d)),
    "load_torch_dict": lambda h, d: load_torch_dict(model_file(h, d)),
    "load_checkpoint": lambda h, d: load_checkpoint(model_file(h, d)),
    "load_analysis_model": lambda h, d: load_analysis_model(model_file(h, d)),
    "evaluate_checkpoint": lambda h, d: evaluate_checkpoint(model_file(h, d), d / "no_data"),
    "study evaluate": lambda h, d: get_study("three_layer").evaluate(model_file(h, d).parent),
    "bench run_benchmark": lambda h, d: run_benchmark(checkpoint=model_file(h, d), verbose=False),
    "export_progress (final model)": lambda h, d: export_progress(run_dir=d, out_dir=model_file(h, d).parent),
    "export_run (last.pt)": lambda h, d: export_run(run_state(h, d).parent, d / "out", SMALL),
    "export_run (snapshot)": lambda h, d: export_run(good_last_pt_and_hostile_snapshot(h, d) or d, d / "out", SMALL,
                                                     n_series=1),
    "study export (last.pt)": lambda h, d: get_study("three_layer").export(run_state(h, d).parent, d / "out"),
    "load_series": lambda h, d: load_series(h(d / "series.pt", {"steps": [1], "state_dicts": [weights()]}), SMALL),
    "modular load_series": lambda h, d: load_study_series(h(d / "series.pt", {"steps": [], "state_dicts": []}),
                                                          "three_layer"),
    "load_history (run state)": lambda h, d: load_history(run_state(h, d).parent),
    "train resume (run state)": lambda h, d: train(build_model(SMALL, device="cpu"), None, TrainConfig(max_steps=2),
                                                   run_state(h, d).parent, progress=False),
}


@pytest.mark.parametrize("site", SITES)
def test_a_pickled_payload_is_refused_at_every_load_site(site, hostile, tmp_path):
    with pytest.raises(CheckpointFileError, match=r"is not a plain weights file .* it asks for GLOBAL posix.system"):
        SITES[site](hostile, tmp_path)  # (a resume reports it among the checkpoints it could not use)
