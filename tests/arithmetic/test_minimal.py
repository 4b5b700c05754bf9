"""The minimal-model grid's table and the design document's claims: planted tables for the rules,
one tiny exported model for the table."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from mechlab.arithmetic.minimal import design_claims, grid_table, minimal_table, point_config, smallest_reaching
from mechlab.arithmetic.task import ArithmeticSplit, evaluate_split
from mechlab.core.io import write_json_atomic
from mechlab.core.model import CheckpointMismatchError, build_model, load_checkpoint, save_checkpoint


def planted(points: dict[tuple[int, int], float]) -> pd.DataFrame:
    """A minimal_table-shaped frame: (layers, heads per layer) -> test exact match."""
    rows = [{"point": f"n_layers={l},n_heads={h},seed=0", "layers": l, "heads per layer": h, "total heads": l * h,
             "seed": 0, "parameters": 100_000 * l + 1_000 * h, "test exact": exact} for (l, h), exact in points.items()]
    return pd.DataFrame(rows).set_index("point")


def test_the_smallest_point_reaching_a_target_is_the_one_with_fewest_parameters():
    table = planted({(1, 8): 0.40, (2, 1): 0.96, (2, 8): 0.997, (4, 8): 0.999})
    assert smallest_reaching(table, 0.95)["layers"] == 2 and smallest_reaching(table, 0.95)["heads per layer"] == 1
    assert smallest_reaching(table, 0.99)["heads per layer"] == 8
    assert smallest_reaching(table, 0.9999) is None


def test_of_two_seeds_of_the_smallest_shape_the_lowest_is_named():
    seed_0 = planted({(2, 8): 0.995})
    seed_1 = seed_0.rename(index=lambda point: point.replace("seed=0", "seed=1")).assign(seed=1)
    assert smallest_reaching(pd.concat([seed_1, seed_0]), 0.99).name == "n_layers=2,n_heads=8,seed=0"


def test_a_two_layer_point_above_82_percent_fails_both_of_its_claims():
    claims = design_claims(planted({(2, 8): 0.997, (4, 8): 0.999}))
    assert claims.loc["at least 3 layers and 6 total heads are needed for 95%", "verdict"] == "failed"
    assert claims.loc["2 layers reach at most 82%", "verdict"] == "failed"
    assert claims.loc["4 heads or fewer in all reach at most 82%", "verdict"] == "untested"
    assert claims.loc["4 heads or fewer per layer reach at most 82%", "verdict"] == "untested"


def test_four_heads_per_layer_and_four_heads_in_all_are_judged_apart():
    claims = design_claims(planted({(2, 4): 0.93, (1, 4): 0.60}))  # 8 heads in all at 0.93; 4 in all at 0.60
    assert claims.loc["4 heads or fewer per layer reach at most 82%", "verdict"] == "failed"
    assert claims.loc["4 heads or fewer in all reach at most 82%", "verdict"] == "held"


def test_claims_hold_when_the_small_points_stay_below_the_ceiling():
    claims = design_claims(planted({(2, 2): 0.80, (1, 4): 0.30, (3, 8): 0.99}))
    assert set(claims["verdict"]) == {"held"}
    assert "n_layers=2,n_heads=2,seed=0: 0.8000" in claims.loc["2 layers reach at most 82%", "evidence"]


def export_point(exports: Path, result: dict) -> None:
    """Save an untrained model of the row's config under exports/<id>, with a two-row history."""
    config = point_config(result)
    save_checkpoint(build_model(config, device="cpu"), config, exports / result["id"] / "model.pt")
    (exports / result["id"] / "metrics.json").write_text(json.dumps([{"step": 500, "val_exact": 0.1},
                                                                     {"step": 1000, "val_exact": 0.3}]))


def row(n_layers: int, n_heads: int, parameters: int, **width) -> dict:
    """A sweep results row (as `core.sweep.run_point` writes it) of a finished point."""
    point = ",".join([f"n_layers={n_layers}", f"n_heads={n_heads}", *(f"d_model={w}" for w in width.values()), "seed=0"])
    return {"id": point, "n_layers": n_layers, "n_heads": n_heads, **width, "seed": 0, "parameters": parameters,
            "steps": 1000, "seconds": 60.0, "stopped_because": "max_steps"}


def test_minimal_table_evaluates_exported_points_and_leaves_the_rest_empty(tmp_path, generated_data):
    data_dir, _ = generated_data
    exported, not_exported, narrow = row(1, 2, 9_000, d_model=32), row(1, 2, 5_000), row(1, 1, 2_000, d_model=16)
    export_point(tmp_path, exported)
    table = minimal_table([exported, not_exported, narrow], tmp_path, data_dir, limit=50)
    assert list(table.index) == [narrow["id"], not_exported["id"], exported["id"]]  # by parameter count
    assert list(table["d_model"]) == [16, 128, 32]  # a sweep that does not vary the width has the main model's
    assert table.loc[[narrow["id"], not_exported["id"]], "test exact"].isna().all()
    measured = table.loc[exported["id"]]
    model = load_checkpoint(tmp_path / exported["id"] / "model.pt")
    assert measured["test exact"] == evaluate_split(model, ArithmeticSplit.load(data_dir, "test", 50), "test")["test_exact"]
    assert measured["total heads"] == 2 and measured["seed"] == 0 and measured["minutes"] == 1.0
    assert measured["best val exact"] == 0.3
    assert re.fullmatch(r"\d\+\d", measured["weakest layout"])


def test_an_export_of_another_point_is_refused(tmp_path, generated_data):
    data_dir, _ = generated_data
    wide, narrow = row(1, 2, 9_000), row(1, 2, 2_000, d_model=32)
    export_point(tmp_path, narrow)
    (tmp_path / narrow["id"]).rename(tmp_path / wide["id"])  # the narrow model filed under the wide point's name
    with pytest.raises(CheckpointMismatchError, match="d_model"):
        minimal_table([wide], tmp_path, data_dir, limit=50)


def test_grid_table_joins_the_sweeps_that_have_results_and_skips_the_rest(tmp_path, generated_data):
    data_dir, _ = generated_data
    bfloat16 = {"recipe": {"precision": "bfloat16"}}
    write_json_atomic(tmp_path / "grid.json", {"sweep": bfloat16, "rows": [row(2, 8, 9_000)]})
    write_json_atomic(tmp_path / "widths.json", {"sweep": {"recipe": {}}, "rows": [row(2, 8, 3_000, d_model=32)]})
    table = grid_table(("grid", "widths", "not_run_yet"), tmp_path, data_dir, limit=50)
    assert list(table["d_model"]) == [32, 128]
    assert list(table["sweep"]) == ["widths", "grid"] and list(table["precision"]) == ["float32", "bfloat16"]
    assert grid_table(("not_run_yet",), tmp_path, data_dir, limit=50).empty
