"""The ensemble benchmark's timing through the training loop, on a tiny shape."""
import pytest
import torch

from mechlab.arithmetic.task import ArithmeticTask
from mechlab.bench.ensemble import Shape, seconds_per_step, table, throughput
from mechlab.core.model import build


class NoEvaluation(ArithmeticTask):
    def evaluate(self, model):
        raise AssertionError("the benchmark evaluated")


def test_a_timed_run_trains_without_evaluating(tiny_config, tiny_task):
    task = NoEvaluation(tiny_task.train, tiny_task.val, batch_size=8)
    assert seconds_per_step(build(tiny_config, "cpu"), task, steps=2, warmup=1) > 0


def test_throughput_compares_ensembles_with_one_model_at_a_time(tiny_config, tiny_task):
    shape = Shape("tiny", tiny_config, lambda s: ArithmeticTask(tiny_task.train, tiny_task.val, 8, seed=s), 8)
    result = throughput(shape, sizes=[1, 2], steps=1, warmup=1, device=torch.device("cpu"))
    alone, rows = result["alone"], result["ensembles"]
    assert [row["n"] for row in rows] == [1, 2]
    for row in rows:
        assert row["examples_per_s"] == pytest.approx(row["n"] * row["examples_per_s_per_model"])
        assert row["speedup_vs_one_after_another"] == pytest.approx(row["n"] * alone["seconds_per_step"]
                                                                     / row["seconds_per_step"])
    assert table({"tiny": result}).splitlines()[-2].startswith("tiny           2")
