"""The Shakespeare benchmark's accounting of a run's time by part."""
import pytest

from mechlab.bench.shakespeare import accounted


def test_the_full_recipe_is_accounted_as_steps_evaluations_and_checkpoints():
    costs = {"seconds_per_step": 0.05, "seconds_per_eval": 1.0, "seconds_per_checkpoint": 0.2}
    parts = accounted(costs, "shakespeare_char_seed0")  # 2,000 steps, evaluations every 250, checkpoints every 100
    assert (parts["n_evals"], parts["n_checkpoints"]) == (8, 20)
    assert parts["total"] == pytest.approx(2000 * 0.05 + 8 * 1.0 + 20 * 0.2)
