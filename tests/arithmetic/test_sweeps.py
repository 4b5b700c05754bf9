"""The main study's sweeps: the replication sweep changes the seed only, the minimal-model grid holds
the main model itself, its 1-layer points also run in float32, and the widths sweep narrows only the
residual stream."""
import dataclasses

from mechlab.arithmetic.study import MAIN, TRAIN_CONFIG
from mechlab.arithmetic.sweeps import MAIN_MINIMAL, MAIN_MINIMAL_1LAYER_FP32, MAIN_SEEDS, MAIN_WIDTHS
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
    assert len(found) == 32 and [p.id for p in found[:3]] == [  # the design document's 2-layer claim first
        "n_layers=2,n_heads=8,seed=0", "n_layers=2,n_heads=8,seed=1", "n_layers=2,n_heads=4,seed=0"]
    main_point = {p.id: p for p in found}["n_layers=4,n_heads=8,seed=0"]
    assert main_point.model_config == MAIN.model_config
    assert main_point.train_config == dataclasses.replace(MAIN.train_config, precision="bfloat16", compile=True)


def test_main_widths_narrows_the_residual_stream_of_the_two_layer_point_only():
    found = points(MAIN_WIDTHS)
    assert [p.id for p in found] == ["n_layers=2,n_heads=8,d_model=64,seed=0", "n_layers=2,n_heads=8,d_model=32,seed=0"]
    two_layers = {p.id: p for p in points(MAIN_MINIMAL)}["n_layers=2,n_heads=8,seed=0"]
    for point, width in zip(found, (64, 32)):
        assert point.model_config == dataclasses.replace(two_layers.model_config, d_model=width)
        assert point.train_config == dataclasses.replace(two_layers.train_config, precision="float32")


def test_the_float32_one_layer_sweep_is_main_minimals_one_layer_points_in_float32():
    one_layer = {p.id: p for p in points(MAIN_MINIMAL) if p.model_config.n_layers == 1 and p.seed == 0}
    found = points(MAIN_MINIMAL_1LAYER_FP32)
    assert [p.id for p in found] == list(one_layer) == [f"n_layers=1,n_heads={h},seed=0" for h in (8, 4, 2, 1)]
    for point in found:
        assert point.model_config == one_layer[point.id].model_config
        assert point.train_config == dataclasses.replace(one_layer[point.id].train_config, precision="float32")
