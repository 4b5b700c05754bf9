"""The training loop, checkpoints and the main task's loss, on a tiny model (seconds)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from mechlab.arithmetic.task import ArithmeticTask, answer_loss
from mechlab.arithmetic.tokenizer import VOCAB
from mechlab.core.model import CheckpointMismatchError, ModelConfig, build_model, load_checkpoint, save_checkpoint
from mechlab.core.train import TrainConfig, learning_rate, load_history, train

TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_head=16, d_mlp=64, d_vocab=len(VOCAB), vocab=tuple(VOCAB))


def tiny_train_config(**overrides) -> TrainConfig:
    return TrainConfig(**{"max_steps": 30, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10, "checkpoint_every": 10, **overrides})


def test_loss_falls_on_a_tiny_config(tiny_task):
    model = build_model(TINY, device="cpu")
    before = answer_loss(model, tiny_task.train.tokens[:200]).item()
    result = train(model, tiny_task, tiny_train_config(), progress=False)
    after = answer_loss(model, tiny_task.train.tokens[:200]).item()
    assert after < before - 0.5, (before, after)
    assert [row["step"] for row in result.history] == [10, 20, 30]
    assert {"val_loss", "val_exact", "train_exact", "grad_norm/blocks.0", "val_exact/no_wrap"} <= set(result.history[0])


def test_resume_after_interrupt_reproduces_the_uninterrupted_run(tiny_task, tmp_path):
    uninterrupted = build_model(TINY, device="cpu")
    train(uninterrupted, tiny_task, tiny_train_config(), tmp_path / "a", progress=False)

    interrupted = build_model(TINY, device="cpu")
    first = train(interrupted, tiny_task, tiny_train_config(), tmp_path / "b", progress=False, stop_after_steps=20)
    assert first.stopped_because == "interrupted" and first.steps == 20
    resumed = build_model(TINY, device="cpu")  # a fresh process would start from fresh weights
    result = train(resumed, tiny_task, tiny_train_config(), tmp_path / "b", progress=False)

    assert result.steps == 30
    for (name, p), q in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(load_history(tmp_path / "a")) == strip(load_history(tmp_path / "b"))
    assert sorted(p.name for p in (tmp_path / "b").glob("step_*.pt")) == ["step_000010.pt", "step_000020.pt", "step_000030.pt"]


def test_resume_refuses_a_run_with_another_train_config(tiny_task, tmp_path):
    train(build_model(TINY, device="cpu"), tiny_task, tiny_train_config(max_steps=10), tmp_path, progress=False)
    with pytest.raises(ValueError, match="another TrainConfig"):
        train(build_model(TINY, device="cpu"), tiny_task, tiny_train_config(lr=1e-2), tmp_path, progress=False)


def test_resume_may_extend_the_run_and_re_aim_its_decay(tiny_task, tmp_path):
    model = build_model(TINY, device="cpu")
    train(model, tiny_task, tiny_train_config(max_steps=20), tmp_path, progress=False)
    longer = tiny_train_config(max_steps=30, decay_steps=20)  # then constant at the floor
    result = train(model, tiny_task, longer, tmp_path, progress=False)
    assert [row["step"] for row in result.history] == [10, 20, 30]
    assert result.history[-1]["lr"] == pytest.approx(longer.lr * longer.min_lr_frac)


def test_checkpoint_round_trip(tmp_path):
    model = build_model(TINY, device="cpu")
    save_checkpoint(model, TINY, tmp_path / "model.pt")
    loaded = load_checkpoint(tmp_path / "model.pt", expected=TINY, device="cpu")
    tokens = torch.randint(0, len(VOCAB), (3, 20))
    assert torch.equal(model(tokens), loaded(tokens))
    assert json.loads((tmp_path / "config.json").read_text())["n_layers"] == 1


def test_loading_a_checkpoint_with_another_config_or_vocabulary_raises(tmp_path):
    save_checkpoint(build_model(TINY, device="cpu"), TINY, tmp_path / "model.pt")
    bigger = ModelConfig(**{**TINY.to_json(), "n_layers": 2, "vocab": TINY.vocab})
    with pytest.raises(CheckpointMismatchError, match="n_layers: checkpoint has 1, expected 2"):
        load_checkpoint(tmp_path / "model.pt", expected=bigger)
    other_vocab = ModelConfig(**{**TINY.to_json(), "vocab": tuple(reversed(TINY.vocab))})
    with pytest.raises(CheckpointMismatchError, match="vocab"):
        load_checkpoint(tmp_path / "model.pt", expected=other_vocab)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(max_steps=100, lr=1.0, warmup_steps=10, min_lr_frac=0.1)
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 9) == pytest.approx(1.0)
    assert learning_rate(cfg, 55) == pytest.approx(0.55)
    assert learning_rate(cfg, 100) == pytest.approx(0.1)
    early_floor = TrainConfig(max_steps=100, lr=1.0, warmup_steps=10, min_lr_frac=0.1, decay_steps=50)
    assert learning_rate(early_floor, 50) == learning_rate(early_floor, 99) == pytest.approx(0.1)


def test_stop_metric_ends_training_early(tiny_task):
    cfg = tiny_train_config(stop_metric="val_loss", stop_value=-1.0)  # val_loss >= -1 always holds
    result = train(build_model(TINY, device="cpu"), tiny_task, cfg, progress=False)
    assert result.steps == 10 and result.stopped_because == "val_loss >= -1.0"


def test_recipe_table_reports_when_each_target_was_first_reached():
    from mechlab.arithmetic.study import recipe_table

    fast = [{"step": 500, "seconds": 60, "val_exact": 0.2}, {"step": 1000, "seconds": 120, "val_exact": 0.6},
            {"step": 1500, "seconds": 180, "val_exact": 0.995}]
    slow = [{"step": 500, "seconds": 60, "val_exact": 0.01}, {"step": 1000, "seconds": 120, "val_exact": 0.02}]
    fast_row, slow_row = recipe_table({"fast": fast, "slow": slow}, at_step=1000)
    assert fast_row["val exact at step 1,000"] == 0.6 and fast_row["best val exact"] == 0.995
    assert (fast_row["step to 50%"], fast_row["minutes to 50%"]) == (1000, 2.0)
    assert (fast_row["step to 99%"], fast_row["minutes to 99%"]) == (1500, 3.0)
    assert slow_row["step to 50%"] is None and slow_row["steps run"] == 1000
    assert fast_row["steps per second"] == slow_row["steps per second"] == pytest.approx(8.33)


def test_recipe_table_counts_examples_when_batch_sizes_differ():
    from mechlab.arithmetic.study import recipe_table

    history = [{"step": 500, "seconds": 60, "val_exact": 0.6}, {"step": 1000, "seconds": 120, "val_exact": 0.995}]
    small, large = recipe_table({"small": history, "large": history}, at_step=1000, batch_sizes={"small": 128, "large": 256})
    assert (small["examples to 99% (M)"], large["examples to 99% (M)"]) == (0.128, 0.256)
    assert "examples to 99% (M)" not in recipe_table({"small": history}, at_step=1000)[0]


def test_a_continuation_is_drawn_from_where_it_branched_off_its_parent():
    from mechlab.arithmetic.study import continuation_part

    parent = [{"step": 500, "val_exact": 0.1}, {"step": 1000, "val_exact": 0.5}, {"step": 1500, "val_exact": 0.9}]
    continued = parent[:2] + [{"step": 1500, "val_exact": 0.7}, {"step": 2000, "val_exact": 0.8}]
    assert [row["step"] for row in continuation_part(continued, parent)] == [1000, 1500, 2000]
    unrelated = [{"step": 500, "val_exact": 0.3}, {"step": 1000, "val_exact": 0.4}]
    assert continuation_part(unrelated, parent) == unrelated


def test_largest_rise_finds_where_a_run_left_its_plateau():
    from mechlab.arithmetic.study import largest_rise

    history = [{"step": s, "val_exact": v} for s, v in [(500, 0.3), (1000, 0.35), (1500, 0.8), (2000, 0.9)]]
    before, after = largest_rise(history)
    assert (before["step"], after["step"]) == (1000, 1500)
    with pytest.raises(ValueError, match="at least two evaluations"):
        largest_rise(history[:1])


def test_the_main_recipe_can_be_rerun_with_another_schedule(generated_data, tmp_path):
    """How a committed record's command such as `train --max-steps 12000 --min-lr-frac 0.05` works."""
    from mechlab.arithmetic.study import train_main

    data_dir, _ = generated_data
    result = train_main(data_dir, tmp_path, quick=True, progress=False, max_steps=20, decay_steps=10, min_lr_frac=0.5)
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert (saved["max_steps"], saved["decay_steps"], saved["min_lr_frac"]) == (20, 10, 0.5)
    assert result.history[-1]["lr"] == pytest.approx(saved["lr"] * 0.5)  # at the floor since step 10


def test_a_recipe_record_keeps_the_history_the_command_and_the_batch_size(tmp_path):
    from mechlab.arithmetic.study import write_recipe_record

    history = [{"step": 500, "seconds": 60, "val_exact": 0.2}]
    path = write_recipe_record("fast", "batch 256, lr 2e-3", history, "python -m mechlab main train ...", tmp_path, 256)
    assert path == tmp_path / "sweep" / "fast.json"
    assert json.loads(path.read_text()) == {"description": "batch 256, lr 2e-3", "history": history,
                                            "command": "python -m mechlab main train ...", "batch_size": 256}


def test_recipe_records_gather_the_committed_run_the_tried_recipes_and_the_other_seeds(tmp_path):
    from mechlab.arithmetic.study import MAIN_RECORD, recipe_records, recipe_table, write_recipe_record

    committed = [{"step": 1000, "seconds": 60, "val_exact": 0.995}]
    (tmp_path / "metrics.json").write_text(json.dumps(committed))
    write_recipe_record("fast", "batch 256", [{"step": 500, "seconds": 30, "val_exact": 0.991}], "cmd", tmp_path, 256)
    seed_run = tmp_path / "seeds" / "seed=1"
    seed_run.mkdir(parents=True)
    (seed_run / "metrics.json").write_text(json.dumps([{"step": 800, "seconds": 50, "val_exact": 0.99}]))

    records = recipe_records(tmp_path / "metrics.json", tmp_path / "sweep", tmp_path / "seeds")
    assert list(records) == [MAIN_RECORD, "batch 256", "main recipe, seed=1 (compiled bfloat16)"]
    assert [r["other_seed"] for r in records.values()] == [False, False, True]
    assert list(recipe_records(tmp_path / "metrics.json", tmp_path / "sweep")) == [MAIN_RECORD, "batch 256"]
    table = recipe_table({name: r["history"] for name, r in records.items()}, at_step=0, targets=(0.99,),
                         batch_sizes={name: r["batch_size"] for name, r in records.items()})
    assert [row["examples to 99% (M)"] for row in table] == [0.128, 0.128, 0.1024]  # the fewest: the other seed


def test_an_unknown_recipe_variant_is_a_clear_error(tmp_path):
    from mechlab.arithmetic.study import train_variant

    with pytest.raises(ValueError, match="unknown recipe variant 'fast'.*uniform_sampling"):
        train_variant("fast", tmp_path, tmp_path)


def test_rebalancing_draws_every_digit_length_class_equally_often_from_its_step(tiny_task):
    from collections import defaultdict

    from mechlab.arithmetic.task import digit_lengths

    task = ArithmeticTask(tiny_task.train, tiny_task.val, batch_size=32, length_balance=1.0, rebalance_from=10)
    assert torch.equal(task.sampling_weights(9), torch.ones(len(task.train)))
    mass = defaultdict(float)
    for row, w in zip(task.train.rows, task.sampling_weights(10).tolist()):
        mass[digit_lengths(row)] += w
    assert len(mass) > 1 and max(mass.values()) == pytest.approx(min(mass.values()))


TRAIN_IN_A_FRESH_PROCESS = """
import hashlib, torch
from mechlab.arithmetic.task import ArithmeticSplit, ArithmeticTask, main_model_config
from mechlab.arithmetic.data import make_splits
from mechlab.core.model import build_model
from mechlab.core.train import TrainConfig, train
rows = [e.to_json() for e in make_splits()["train"][:2000]]
task = ArithmeticTask(ArithmeticSplit.from_rows(rows), ArithmeticSplit.from_rows(rows[:200]), batch_size=128)
model = build_model(main_model_config(), device="cpu")
train(model, task, TrainConfig(max_steps=30, eval_every=30, checkpoint_every=30), progress=False)
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
"""


def test_two_processes_training_the_main_model_end_with_identical_weights():
    import subprocess
    import sys

    runs = [subprocess.Popen([sys.executable, "-c", TRAIN_IN_A_FRESH_PROCESS], stdout=subprocess.PIPE, text=True)
            for _ in range(2)]  # side by side, as on a busy CPU
    hashes = [run.communicate(timeout=600)[0].strip() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert hashes[0] == hashes[1]


def test_bfloat16_steps_train_a_float32_model_close_to_the_float32_run(tiny_task):
    full, half = build_model(TINY, device="cpu"), build_model(TINY, device="cpu")
    train(full, tiny_task, tiny_train_config(), progress=False)
    result = train(half, tiny_task, tiny_train_config(precision="bfloat16"), progress=False)
    assert all(p.dtype == torch.float32 for p in half.parameters())  # autocast: only the matmuls run in bfloat16
    drift = max((p - q).abs().max().item() for p, q in zip(full.parameters(), half.parameters()))
    assert 0 < drift < 0.05  # not the same run, but the same trajectory
    assert result.history[-1]["val_loss"] == pytest.approx(train_loss_of(full, tiny_task), rel=0.1)


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_on_a_cpu_without_it_warns_that_float32_is_faster(tiny_task, monkeypatch, native):
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, check, lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(build_model(TINY, device="cpu"), tiny_task, tiny_train_config(precision="bfloat16", max_steps=1),
              progress=False)
    slow = [w for w in caught if "precision='float32' is faster here" in str(w.message)]
    assert len(slow) == (0 if native else 1)


def train_loss_of(model: torch.nn.Module, task) -> float:
    model.eval()
    with torch.no_grad():
        return task.evaluate(model)["val_loss"]


def test_a_run_resumed_with_compilation_switched_on_follows_the_eager_run(tiny_task, tmp_path):
    eager = train(build_model(TINY, device="cpu"), tiny_task, tiny_train_config(max_steps=20), progress=False)
    train(build_model(TINY, device="cpu"), tiny_task, tiny_train_config(max_steps=10), tmp_path, progress=False)
    compiled = train(build_model(TINY, device="cpu"), tiny_task, tiny_train_config(max_steps=20, compile=True), tmp_path,
                     progress=False)  # `compile` may change on resume: it changes how the steps run, not the recipe
    assert compiled.steps == 20
    # Fused kernels sum in another order, and Adam's first steps amplify the difference (an update is about
    # lr * sign(gradient) while the second moment is small), so the runs agree closely, not bit for bit.
    for metric in ("train_loss", "val_loss"):
        assert compiled.history[-1][metric] == pytest.approx(eager.history[-1][metric], rel=0.05)


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny_train_config(precision="float8")


def test_step_rate_is_steps_over_recorded_seconds_between_two_evaluations():
    from mechlab.arithmetic.study import step_rate
    history = [{"step": 500, "seconds": 100.0}, {"step": 1000, "seconds": 250.0}, {"step": 1500, "seconds": 350.0}]
    assert step_rate(history, 1000, 1500) == 5.0
    assert step_rate(history, 500, 1500) == 4.0
