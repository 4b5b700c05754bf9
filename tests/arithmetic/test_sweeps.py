"""The main study's sweeps: the replication sweep changes the seed only, and the minimal-model grid holds
the main model itself."""
import dataclasses

from mechlab.arithmetic.study import MAIN, TRAIN_CONFIG
from mechlab.arithmetic.sweeps import MAIN_MINIMAL, MAIN_SEEDS
from mechlab.core.sweep import points


def test_main_seeds_is_the_main_recipe_at_three_other_seeds_with_fast_steps():
    found = points(MAIN_SEEDS)
    assert [p.id for p in found] == ["seed=1", "seed=2", "seed=3"]
    for point, seed in zip(found, (1, 2, 3)):
        assert point.train_config == dataclasses.replace(TRAIN_CONFIG, seed=seed, precision="bfloat16", compile=True)
        assert point.model_config == dataclasses.replace(MAIN.model_config, seed=seed)
    assert MAIN_SEEDS.export_root.as_posix() == "checkpoints/sweeps/main_seeds"  # where notebook 13 reads seed=N/


def test_main_minimal_is_layers_by_heads_two_layers_first_and_holds_the_main_architecture():
    found = points(MAIN_MINIMAL)
    assert len(found) == 16 and found[0].id == "n_layers=2,n_heads=8,seed=0"  # the design document's 2-layer claim first
    main_point = {p.id: p for p in found}["n_layers=4,n_heads=8,seed=0"]
    assert main_point.model_config == MAIN.model_config
    assert main_point.train_config == dataclasses.replace(MAIN.train_config, precision="bfloat16", compile=True)
