"""The minimal-model grid's table and the design document's claims: planted tables for the rules,
one tiny exported model for the table."""
import json
import re

import numpy as np
import pandas as pd

from mechlab.arithmetic.minimal import design_claims, minimal_table, smallest_reaching
from mechlab.core.model import build_model, save_checkpoint


def planted(points: dict[tuple[int, int], float]) -> pd.DataFrame:
    """A minimal_table-shaped frame: (layers, heads per layer) -> test exact match."""
    rows = [{"point": f"n_layers={l},n_heads={h},seed=0", "layers": l, "heads per layer": h, "total heads": l * h,
             "parameters": 100_000 * l + 1_000 * h, "test exact": exact} for (l, h), exact in points.items()]
    return pd.DataFrame(rows).set_index("point")


def test_the_smallest_point_reaching_a_target_is_the_one_with_fewest_parameters():
    table = planted({(1, 8): 0.40, (2, 1): 0.96, (2, 8): 0.997, (4, 8): 0.999})
    assert smallest_reaching(table, 0.95)["layers"] == 2 and smallest_reaching(table, 0.95)["heads per layer"] == 1
    assert smallest_reaching(table, 0.99)["heads per layer"] == 8
    assert smallest_reaching(table, 0.9999) is None


def test_a_two_layer_point_above_82_percent_fails_both_of_its_claims():
    claims = design_claims(planted({(2, 8): 0.997, (4, 8): 0.999}))
    assert claims.loc["at least 3 layers and 6 total heads are needed for 95%", "verdict"] == "failed"
    assert claims.loc["2 layers reach at most 82%", "verdict"] == "failed"
    assert claims.loc["4 heads or fewer reach at most 82%", "verdict"] == "untested"


def test_claims_hold_when_the_small_points_stay_below_the_ceiling():
    claims = design_claims(planted({(2, 2): 0.80, (1, 4): 0.30, (3, 2): 0.99}))
    assert set(claims["verdict"]) == {"held"}
    assert "n_layers=2,n_heads=2,seed=0: 0.8000" in claims.loc["2 layers reach at most 82%", "evidence"]


def test_minimal_table_evaluates_exported_points_and_leaves_the_rest_empty(tmp_path, tiny_config, generated_data):
    data_dir, _ = generated_data
    export = tmp_path / "n_layers=2,n_heads=2,seed=0"
    save_checkpoint(build_model(tiny_config, device="cpu"), tiny_config, export / "model.pt")
    (export / "metrics.json").write_text(json.dumps([{"step": 500, "val_exact": 0.1}, {"step": 1000, "val_exact": 0.3}]))
    results = [{"id": export.name, "n_layers": 2, "n_heads": 2, "parameters": 9_000, "steps": 1000, "seconds": 60.0,
                "stopped_because": "max_steps"},
               {"id": "n_layers=1,n_heads=2,seed=0", "n_layers": 1, "n_heads": 2, "parameters": 5_000, "steps": 1000,
                "seconds": 30.0, "stopped_because": "max_steps"},
               {"id": "n_layers=1,n_heads=2,d_model=32,seed=0", "n_layers": 1, "n_heads": 2, "d_model": 32,
                "parameters": 2_000, "steps": 1000, "seconds": 20.0, "stopped_because": "max_steps"}]
    table = minimal_table(results, tmp_path, data_dir, limit=50)
    assert list(table.index) == ["n_layers=1,n_heads=2,d_model=32,seed=0", "n_layers=1,n_heads=2,seed=0",
                                 export.name]  # by parameter count
    assert np.isnan(table.loc["n_layers=1,n_heads=2,seed=0", "test exact"])
    assert list(table["d_model"]) == [32, 128, 128]  # a sweep that does not vary the width has the main model's
    row = table.loc[export.name]
    assert row["total heads"] == 4 and row["minutes"] == 1.0 and row["best val exact"] == 0.3
    assert row["weakest layout exact"] <= row["test exact"]  # the weakest layout is at most the overall
    assert re.fullmatch(r"\d\+\d", row["weakest layout"])
