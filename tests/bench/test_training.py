"""The training benchmark's helpers, on a few steps (no timing is asserted: it depends on the machine)."""
import json

import pytest
import torch

from mechlab.bench.training import examples_within, machine_info, time_to_target, training_throughput


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_training_throughput_reports_a_consistent_row(precision):
    row = training_throughput(torch.device("cpu"), steps=1, batch_size=2, precision=precision)
    assert row["precision"] == precision and row["compile"] is False and row["timed_steps"] == 1
    assert row["examples_per_s"] == pytest.approx(2 / row["seconds_per_step"])
    assert row["gflops"] == pytest.approx(6 * row["parameters"] * row["tokens_per_s"] / 1e9)


def test_machine_info_says_whether_bfloat16_is_native():
    machine = machine_info()
    assert isinstance(machine["native_bfloat16"], bool) and machine["logical_cpus"] >= 1


def test_time_to_target_reads_the_first_row_past_the_target(tmp_path):
    record = tmp_path / "metrics.json"
    record.write_text(json.dumps([{"step": 500, "seconds": 60, "val_exact": 0.5},
                                  {"step": 1000, "seconds": 150, "val_exact": 0.992}]))
    assert time_to_target(record) == {"reached": True, "step": 1000, "minutes": 2.5, "val_exact": 0.992}
    assert time_to_target(record, target=0.999)["reached"] is False
    assert time_to_target(tmp_path / "missing.json")["reached"] is False


def test_examples_within_a_budget_come_from_the_fastest_step_timed():
    bench = {"training": {"eager float32": {"batch_size": 128, "examples_per_s": 500.0},
                          "compiled bfloat16": {"batch_size": 128, "examples_per_s": 30.0}},
             "by_batch_size": [{"batch_size": 512, "examples_per_s": 700.0}]}
    assert examples_within(bench, minutes=30) == {"way": "compiled bfloat16", "batch_size": 512,
                                                  "examples_per_s": 700.0, "examples": 700.0 * 1800}
    del bench["by_batch_size"]  # (a benchmark run with no batch sizes)
    assert examples_within(bench, minutes=1)["way"] == "eager float32"
