"""The seed-replication findings: planted measurements and histories for the rules and the table,
tiny models for the measurements."""
import json

import pandas as pd
import pytest
import torch

from mechlab.arithmetic.data import Example, bucket_of, write_jsonl
from mechlab.arithmetic.replication import (
    FINDINGS,
    answer_writers,
    findings_from_splits,
    holds,
    layout_weakness,
    load_seed_run,
    operand_readers,
    plateau_exit,
    replication_from_checkpoints,
    replication_table,
    seed_findings,
    training_findings,
)
from mechlab.arithmetic.task import ArithmeticSplit, main_model_config
from mechlab.core.model import CheckpointMismatchError, build_model, save_checkpoint

PLATEAU = [0.02, 0.2, 0.38, 0.3, 0.41, 0.35, 0.4, 0.82, 0.9, 0.995]  # exit between steps 3,000 and 3,500
RAMP = [0.0, 0.12, 0.24, 0.36, 0.48, 0.6, 0.72, 0.84, 0.96, 0.97]  # steady climb: no plateau


def history(values, metric="val_exact"):
    return [{"step": 500 * (i + 1), metric: v} for i, v in enumerate(values)]


def layer0(masses, drops):
    """A layer0 table (as `layer0_table` returns) from {head: (mass on a, mass on b)} and drops."""
    return pd.DataFrame({"mass:a": [m[0] for m in masses.values()], "mass:b": [m[1] for m in masses.values()],
                         "label": "mixed", "drop": drops,
                         "impact": ["critical" if d >= 0.1 else "redundant" for d in drops]}, index=list(masses))


def dla_diff(values):
    """A `mean_by_bucket` table with one bucket and answer digit: component -> mean DLA."""
    return pd.DataFrame({"bucket": "b", "answer_pos": 0, "component": list(values), "value": list(values.values())})


def layouts(exact_by_layout, overall):
    return {"test_exact": overall} | {f"test_exact/digits_{k}": v for k, v in exact_by_layout.items()}


def findings(readers=None, drops=(0.9, 0.8, 0.5), writers=None, layout=None, values=PLATEAU):
    """The findings of one planted seed: every part made by the library's own functions."""
    table = layer0(readers or {"L0H0": (0.05, 0.5), "L0H1": (0.45, 0.1), "L0H2": (0.1, 0.1)}, list(drops))
    return {"layer0": table, "readers": operand_readers(table),
            "writers": answer_writers(dla_diff(writers or {"L0H0": 0.1, "L1H0": 0.5, "MLP0": 0.2, "MLP1": 5.0})),
            "layout": layout_weakness(layouts(layout or {"2+2": 1.0, "3+1": 0.8, "1+3": 1.0}, 0.99)),
            "training": training_findings(history(values))}


# --- the training record --------------------------------------------------------------------------------

def test_a_planted_plateau_gives_its_exit_step_and_level():
    exit_ = plateau_exit(history(PLATEAU))
    assert (exit_["from_step"], exit_["to_step"]) == (3500, 4000)
    assert exit_["before"] == 0.4 and exit_["after"] == 0.82
    assert (exit_["level_low"], exit_["level_high"]) == (0.3, 0.41)  # the 5 evaluations up to the exit
    assert training_findings(history(PLATEAU))["step_to_target"] == 5000


def test_a_steady_climb_or_a_small_rise_has_no_plateau():
    assert plateau_exit(history(RAMP)) is None  # rises of 0.12: below the sudden rise
    assert plateau_exit(history([0.0, 0.3, 0.35, 0.4])) is None  # a 0.3 rise straight from the start
    assert plateau_exit(history([0.0, 0.05, 0.15, 0.25, 0.35, 0.45, 0.72])) is None  # the rise is within the climb before it
    assert plateau_exit(history([0.0, 0.05, 0.3, 0.3, 0.3, 0.3, 0.6])) == pytest.approx(
        {"from_step": 3000, "to_step": 3500, "before": 0.3, "after": 0.6, "rise": 0.3, "level_low": 0.05,
         "level_high": 0.3, "evals_below": 6})  # ... but a flat stretch before it is a plateau
    f = training_findings(history(RAMP))
    assert f["plateau"] is None and f["step_to_target"] is None
    assert not holds("a plateau, left abruptly", f, {"training": f}) and not holds("validation reaches 99%", f, {"training": f})


# --- the rules -------------------------------------------------------------------------------------------

def test_the_operand_reader_rule_reads_roles_not_head_numbers():
    masses = {"L0H0": (0.05, 0.5), "L0H1": (0.45, 0.1), "L0H2": (0.1, 0.1)}
    permuted = {"L0H2": masses["L0H0"], "L0H0": masses["L0H1"], "L0H1": masses["L0H2"]}
    ref, other = findings(readers=masses), findings(readers=permuted)
    assert ref["readers"]["b"]["head"] == "L0H0" and other["readers"]["b"]["head"] == "L0H2"
    for name in ("a layer-0 head reads a, another reads b", "ablating either operand reader is critical"):
        assert holds(name, ref, ref) and holds(name, ref, other)


def test_the_operand_reader_rule_fails_when_one_head_reads_both_or_reads_weakly():
    ref = findings()
    both = findings(readers={"L0H0": (0.4, 0.45), "L0H1": (0.1, 0.1), "L0H2": (0.1, 0.1)})
    weak = findings(readers={"L0H0": (0.05, 0.2), "L0H1": (0.45, 0.1), "L0H2": (0.1, 0.1)})
    assert both["readers"]["a"]["head"] == both["readers"]["b"]["head"] == "L0H0"
    assert not holds("a layer-0 head reads a, another reads b", ref, both)
    assert not holds("a layer-0 head reads a, another reads b", ref, weak)  # 0.2 on b is below 0.25


def test_critical_rules_follow_the_ablation_drops():
    ref = findings()
    spared_b = findings(drops=(0.05, 0.8, 0.5))  # L0H0 reads b
    assert holds("every layer-0 head is critical", ref, ref)
    assert not holds("ablating either operand reader is critical", ref, spared_b)
    assert not holds("every layer-0 head is critical", ref, findings(drops=(0.9, 0.8, 0.09)))


def test_the_writer_rule_needs_the_last_mlp_on_top_with_half_the_total():
    w = findings()["writers"]
    assert w["last_mlp"] == "MLP1" and w["mlps"] == pytest.approx(5.2) and w["heads"] == pytest.approx(0.6)
    assert w["share"] == pytest.approx(5.0 / 5.8)
    ref = findings()
    head_on_top = findings(writers={"L0H0": 3.0, "L1H0": 0.5, "MLP0": 0.2, "MLP1": 2.5})
    small_share = findings(writers={"L0H0": 1.0, "L1H0": 1.0, "MLP0": 1.0, "MLP1": 1.5})
    assert holds("the last MLP writes most of the answer", ref, ref)
    assert not holds("the last MLP writes most of the answer", ref, head_on_top)
    assert not holds("the last MLP writes most of the answer", ref, small_share)  # top, but 1.5 / 4.5


def test_the_layout_rule_asks_for_the_reference_seeds_weakest_layout():
    ref = findings()
    assert ref["layout"]["weakest"] == "3+1" and ref["layout"]["gap"] == pytest.approx(0.19)
    other_layout = findings(layout={"2+2": 1.0, "3+1": 0.95, "1+3": 0.7})
    mild = findings(layout={"2+2": 1.0, "3+1": 0.92, "1+3": 1.0})
    name = "the reference's weakest layout (3 + 1) is the weakest"
    assert holds(name, ref, ref) and not holds(name, ref, other_layout) and not holds(name, ref, mild)
    with pytest.raises(KeyError, match="unknown finding"):
        holds("L0H0 reads b", ref, ref)


# --- the table ---------------------------------------------------------------------------------------------

def test_the_table_marks_a_failing_seed_and_counts_the_seeds():
    seeds = {0: findings(), 1: findings(readers={"L0H2": (0.05, 0.5), "L0H0": (0.45, 0.1), "L0H1": (0.1, 0.1)}),
             2: findings(values=RAMP)}
    table = replication_table(seeds)
    assert list(table.index) == list(FINDINGS)
    assert list(table.columns) == ["seed 0", "seed 1", "seed 2", "replicates", "in every seed"]
    plateau = table.loc["a plateau, left abruptly"]
    assert plateau["seed 0"].endswith("✓") and plateau["seed 2"].endswith("✗") and plateau["seed 2"].startswith("none")
    assert plateau["replicates"] == "2 of 3" and not plateau["in every seed"]
    readers = table.loc["a layer-0 head reads a, another reads b"]
    assert readers["replicates"] == "3 of 3" and readers["in every seed"]
    assert "L0H2 reads b" in readers["seed 1"]
    with pytest.raises(ValueError, match="no seeds"):
        replication_table({})


# --- measuring models ----------------------------------------------------------------------------------------

def test_findings_of_a_tiny_model_on_the_tiny_task(tiny_model, tiny_task):
    history_ = history(PLATEAU)
    test, reference = (ArithmeticSplit(s.rows[:n], s.tokens[:n]) for s, n in ((tiny_task.val, 300), (tiny_task.train, 100)))
    f = findings_from_splits(tiny_model, history_, test, reference, n_prompts=100)
    assert set(f) == {"layer0", "readers", "writers", "layout", "training"}
    assert list(f["layer0"].index) == ["L0H0", "L0H1"] and set(f["layer0"].columns) >= {"mass:a", "mass:b", "drop", "impact"}
    assert ((f["layer0"][["mass:a", "mass:b"]] > 0) & (f["layer0"][["mass:a", "mass:b"]] < 1)).all().all()
    assert f["writers"]["last_mlp"] == "MLP1" and set(f["writers"]["per_component"]) >= {"MLP0", "MLP1", "L1H1"}
    assert len(f["layout"]["by_layout"]) >= 3 and f["training"]["plateau"]["to_step"] == 4000
    table = replication_table({0: f, 1: f})
    assert table.notna().all().all() and all(r.count("of 2") == 1 for r in table["replicates"])


def test_seed_findings_reads_the_splits_from_a_data_folder(tiny_model, mixed_rows, tmp_path):
    examples = [Example(r["a"], r["b"], r["m"], bucket_of(r["a"], r["b"])) for r in mixed_rows]
    write_jsonl(tmp_path / "test.jsonl", examples)
    write_jsonl(tmp_path / "val.jsonl", examples[::-1])
    f = seed_findings(tiny_model, history(PLATEAU), tmp_path, n=20, n_eval=60, n_reference=30)
    assert f["layout"]["weakest"] in f["layout"]["by_layout"] and 0 <= f["layout"]["overall"] <= 1
    assert len(f["layer0"]) == tiny_model.cfg.n_heads


def export(run_dir, model_seed, config_seed=None, train_seed=None, values=PLATEAU):
    """A run folder as `export_run` writes it, for a main-architecture model initialised with
    `model_seed` and saved under config seed `config_seed`."""
    run_dir.mkdir()
    model = build_model(main_model_config(model_seed), device="cpu")
    save_checkpoint(model, main_model_config(model_seed if config_seed is None else config_seed), run_dir / "model.pt")
    (run_dir / "metrics.json").write_text(json.dumps(history(values)))
    (run_dir / "train_config.json").write_text(json.dumps({"seed": model_seed if train_seed is None else train_seed}))
    return run_dir


def test_seed_runs_must_carry_their_seed(tmp_path):
    model, history_ = load_seed_run(export(tmp_path / "s1", 1), 1)
    assert history_[0]["step"] == 500 and model.cfg.n_heads == 8
    with pytest.raises(CheckpointMismatchError, match="seed: checkpoint has 1, expected 2"):
        load_seed_run(tmp_path / "s1", 2)
    with pytest.raises(ValueError, match="names training seed 0, expected 3"):
        load_seed_run(export(tmp_path / "s3", 3, train_seed=0), 3)


def test_two_seeds_with_the_same_weights_are_refused(tmp_path):
    paths = {1: export(tmp_path / "s1", 1), 2: export(tmp_path / "s2", 1, config_seed=2, train_seed=2)}
    with pytest.raises(ValueError, match="seeds 1 and 2 have identical weights"):
        replication_from_checkpoints(paths, tmp_path)
    assert not torch.equal(load_seed_run(export(tmp_path / "s3", 3), 3)[0].W_E, load_seed_run(paths[1], 1)[0].W_E)
