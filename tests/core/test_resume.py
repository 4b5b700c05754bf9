"""Nothing lost, nothing repeated: pauses, crashes, damaged checkpoints and finished runs."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mechlab.arithmetic.tokenizer import VOCAB
from mechlab.core.io import CheckpointFileError, load_torch_dict
from mechlab.core.model import ModelConfig, build_model
from mechlab.core.train import RunInUseError, TrainConfig, load_history, train

SMALL = ModelConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=len(VOCAB), vocab=tuple(VOCAB))


def recipe(**overrides) -> TrainConfig:
    return TrainConfig(**{"max_steps": 12, "lr": 3e-3, "warmup_steps": 2, "eval_every": 4, "checkpoint_every": 4,
                          **overrides})


def run(task, run_dir, cfg=None, **kwargs):
    """Train a fresh model (as a new process would) into run_dir; returns (model, result)."""
    model = build_model(SMALL, device="cpu")
    return model, train(model, task, cfg or recipe(), run_dir, progress=False, **kwargs)


def same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def without_time(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.fixture(scope="module")
def reference(tiny_task, tmp_path_factory):
    """The uninterrupted run: (model, history)."""
    model, result = run(tiny_task, tmp_path_factory.mktemp("reference"))
    return model, result.history


def test_a_pause_between_checkpoints_saves_the_step_it_reports(tiny_task, reference, tmp_path):
    _, paused = run(tiny_task, tmp_path, stop_after_steps=6)  # checkpoints fall at 4 and 8
    assert paused.stopped_because == "interrupted" and paused.steps == 6
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 6
    resumed, result = run(tiny_task, tmp_path)
    assert result.steps == 12 and same_weights(resumed, reference[0])
    assert without_time(result.history) == without_time(reference[1])  # train_loss averages over steps 5-8 too


def test_a_finished_run_is_not_trained_again_and_its_record_is_not_rewritten(tiny_task, tmp_path):
    cfg = recipe(stop_metric="val_loss", stop_value=-1.0)  # fires at the first evaluation (step 4)
    _, first = run(tiny_task, tmp_path, cfg)
    assert first.steps == 4
    recorded = (tmp_path / "train_config.json").read_text()
    for _ in range(2):
        _, again = run(tiny_task, tmp_path, dataclasses.replace(cfg, decay_steps=8))
        assert again.steps == 4 and again.stopped_because == "already finished: val_loss >= -1.0"
    assert (tmp_path / "train_config.json").read_text() == recorded


def test_a_run_that_spent_its_budget_may_be_extended(tiny_task, reference, tmp_path):
    run(tiny_task, tmp_path, recipe(max_steps=8))
    _, same = run(tiny_task, tmp_path, recipe(max_steps=8))
    assert same.stopped_because == "already finished: max_steps"
    _, longer = run(tiny_task, tmp_path, recipe(max_steps=12))
    assert longer.steps == 12 and [row["step"] for row in longer.history] == [4, 8, 12]


@pytest.mark.parametrize("overrides, message", [
    ({"max_steps": -5}, "max_steps must be >= 1, got -5"),
    ({"decay_steps": -100}, r"decay_steps must be >= 1 and >= warmup_steps \(2\), got -100"),
    ({"schedule": "linear"}, "schedule must be one of"),
    ({"eval_every": 0}, "eval_every must be >= 1"),
])
def test_invalid_recipes_are_refused_before_anything_is_written(overrides, message):
    with pytest.raises(ValueError, match=f"invalid TrainConfig: {message}"):
        recipe(**overrides)


def test_a_crash_between_last_pt_and_metrics_json_leaves_a_consistent_record(tiny_task, reference, tmp_path):
    run(tiny_task, tmp_path, stop_after_steps=8)
    (tmp_path / "metrics.json").write_text(json.dumps(json.loads((tmp_path / "metrics.json").read_text())[:1]))
    assert [row["step"] for row in load_history(tmp_path)] == [4, 8]  # read from last.pt, not the stale file
    resumed, result = run(tiny_task, tmp_path)
    assert same_weights(resumed, reference[0])
    assert [row["step"] for row in json.loads((tmp_path / "metrics.json").read_text())] == [4, 8, 12]


def test_leftover_temporary_files_are_removed_on_resume(tiny_task, tmp_path):
    run(tiny_task, tmp_path, stop_after_steps=4)
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"\0" * 1000)
    run(tiny_task, tmp_path, stop_after_steps=8)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_damaged_last_pt_falls_back_to_the_previous_checkpoint(tiny_task, reference, tmp_path, capsys):
    run(tiny_task, tmp_path, stop_after_steps=8)
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])  # truncated
    resumed, result = run(tiny_task, tmp_path)
    printed = capsys.readouterr().out
    assert "last.pt" in printed and "resuming from" in printed and "previous.pt (step 4)" in printed
    assert result.steps == 12 and same_weights(resumed, reference[0])


def test_with_no_intact_checkpoint_the_error_names_the_files(tiny_task, tmp_path):
    run(tiny_task, tmp_path, stop_after_steps=8)
    for name in ("last.pt", "previous.pt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointFileError, match=r"no intact checkpoint .*last.pt.*previous.pt"):
        run(tiny_task, tmp_path)


def test_a_resume_with_another_recipe_names_the_field(tiny_task, tmp_path):
    run(tiny_task, tmp_path, stop_after_steps=4)
    with pytest.raises(ValueError, match=r"another TrainConfig \(lr: run has 0.003, asked for 0.01\)"):
        run(tiny_task, tmp_path, recipe(lr=1e-2))


def test_a_run_directory_that_is_a_file_is_named(tiny_task, tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError, match="run directory .*afile is a file"):
        run(tiny_task, tmp_path / "afile")


class SlowTask:
    """`task`, sleeping before each step's loss: a run slow enough to be killed in the middle."""

    def __init__(self, task, seconds: float = 0.3):
        self.task, self.seconds = task, seconds

    def batch(self, step):
        return self.task.batch(step)

    def loss(self, model, batch):
        time.sleep(self.seconds)
        return self.task.loss(model, batch)

    def evaluate(self, model):
        return self.task.evaluate(model)


TESTS = Path(__file__).resolve().parents[1]
KILLED_RUN = f"""
import sys
sys.path[:0] = [{str(TESTS)!r}, {str(TESTS / "core")!r}]
from conftest import make_tiny_task
from test_resume import SMALL, SlowTask, recipe
from mechlab.core.model import build_model
from mechlab.core.train import train
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 0.3
train(build_model(SMALL, device="cpu"), SlowTask(make_tiny_task(), seconds), recipe(), sys.argv[1], progress=False)
"""


def test_a_run_killed_by_sigkill_resumes_to_the_same_weights(tiny_task, reference, tmp_path):
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path)], env=os.environ.copy())
    deadline = time.time() + 300
    while not (tmp_path / "step_000004.pt").exists():  # the first checkpoint (every 4 steps)
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.5)  # into steps 5-6
    process.kill()
    assert process.wait() == -9
    assert load_torch_dict(tmp_path / "last.pt")["step"] in (4, 8)  # killed before the end
    resumed, result = run(tiny_task, tmp_path)  # a fresh model: the weights come from disk
    assert result.steps == 12 and same_weights(resumed, reference[0])
    assert without_time(result.history) == without_time(reference[1])


class SignalAtStep:
    """`task`, sending this process signal `number` while it draws the batch of step `at`."""

    def __init__(self, task, number: int, at: int):
        self.task, self.number, self.at = task, number, at

    def batch(self, step):
        if step == self.at:
            os.kill(os.getpid(), self.number)
        return self.task.batch(step)

    def loss(self, model, batch):
        return self.task.loss(model, batch)

    def evaluate(self, model):
        return self.task.evaluate(model)


@pytest.fixture
def default_signal_handlers():
    """Python's own SIGINT and SIGTERM handling, even where the test run inherited SIGINT as ignored."""
    previous = {n: signal.signal(n, h) for n, h in [(signal.SIGINT, signal.default_int_handler),
                                                    (signal.SIGTERM, signal.SIG_DFL)]}
    yield
    for number, handler in previous.items():
        signal.signal(number, handler)


@pytest.mark.parametrize("number, raised", [(signal.SIGTERM, SystemExit), (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_saves_the_step_it_stopped_at_and_the_run_resumes(tiny_task, reference, tmp_path,
                                                                   default_signal_handlers, number, raised):
    handler = signal.getsignal(number)
    with pytest.raises(raised):  # as the signal would have ended the call, once the step is saved
        run(SignalAtStep(tiny_task, number, at=5), tmp_path)  # checkpoints fall at 4 and 8
    assert load_torch_dict(tmp_path / "last.pt")["step"] == 6  # the step under way finished, then saved
    assert signal.getsignal(number) is handler  # training's own handler is gone
    resumed, result = run(tiny_task, tmp_path)
    assert result.steps == 12 and same_weights(resumed, reference[0])
    assert without_time(result.history) == without_time(reference[1])


def test_an_ignored_signal_stays_ignored(tiny_task, reference, tmp_path, default_signal_handlers):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a script's background job
    model, result = run(SignalAtStep(tiny_task, signal.SIGINT, at=5), tmp_path)
    assert result.steps == 12 and same_weights(model, reference[0])
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_second_process_cannot_train_into_a_run_folder_in_use(tiny_task, tmp_path):
    slow = "3.0"  # seconds a step: the first process is still training when the second one starts
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path), slow], env=os.environ.copy())
    try:
        deadline = time.time() + 300
        while not (tmp_path / "train_config.json").exists():  # written once the run folder is locked
            assert process.poll() is None and time.time() < deadline, "the run ended before the test could join it"
            time.sleep(0.05)
        in_use = rf"run directory .* is in use by another process \(pid {process.pid}\)"
        with pytest.raises(RunInUseError, match=in_use):
            run(tiny_task, tmp_path)
    finally:
        process.kill()
        process.wait()
    _, result = run(tiny_task, tmp_path)  # the lock ended with its process: nothing stale is left behind
    assert result.steps == 12
