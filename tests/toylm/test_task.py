import torch

from mechlab.core.model import build_model
from mechlab.core.train import TrainConfig, train
from mechlab.toylm.studies import toy_config
from mechlab.toylm.task import NextTokenTask, window_starts, windows


def test_windows_are_consecutive_tokens_from_evenly_spaced_starts():
    stream = torch.arange(20)
    starts = window_starts(len(stream), n_ctx=4, n_windows=3)
    assert starts.tolist() == [0, 8, 15]
    assert windows(stream, starts, 4)[2].tolist() == [15, 16, 17, 18, 19]


def test_batches_depend_only_on_the_step():
    stream = torch.arange(1000) % 65
    task = NextTokenTask(stream, stream[:200], n_ctx=8, batch_size=4, seed=3, n_eval_windows=2)
    assert torch.equal(task.batch(7), task.batch(7))
    assert not torch.equal(task.batch(7), task.batch(8))
    assert task.batch(7).shape == (4, 9)


def test_the_one_training_loop_learns_a_periodic_text():
    torch.manual_seed(0)
    stream = torch.arange(3000) % 5  # 0 1 2 3 4 0 1 ...: every next token is determined by the current one
    cfg = toy_config(1, n_heads=1)
    model = build_model(cfg, "cpu")
    task = NextTokenTask(stream, stream[:300], n_ctx=16, batch_size=8, n_eval_windows=4)
    before = task.evaluate(model)["val_loss"]
    result = train(model, task, TrainConfig(max_steps=60, lr=1e-2, eval_every=60, checkpoint_every=60), progress=False)
    assert before > 3.0 and result.history[-1]["val_loss"] < 0.2
