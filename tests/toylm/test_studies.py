import json

import torch

from mechlab.core.studies import get_study
from mechlab.toylm.studies import TOYLM_STUDIES


def test_the_toy_models_are_registered_with_their_layer_counts():
    layers = {name: get_study(name).model_config.n_layers for name in TOYLM_STUDIES}
    assert layers == {"toylm_zero_layer": 0, "toylm_attn_only_1l": 1, "toylm_attn_only_2l": 2, "toylm_attn_only_2l_ctx256": 2,
                      "toylm_attn_only_2l_lr1e2": 2, "toylm_attn_only_2l_ctx256_lr1e2": 2}
    assert all(get_study(name).model_config.d_mlp is None for name in TOYLM_STUDIES)  # attention-only


def test_a_quick_run_trains_exports_and_evaluates(tmp_path, shakespeare):
    study = get_study("toylm_zero_layer")
    result = study.train(tmp_path / "run", quick=True, progress=False)
    assert result.steps == study.quick_steps
    study.export(tmp_path / "run", tmp_path / "out", quick=True)
    corpus = json.loads((tmp_path / "out" / "corpus.json").read_text())
    assert corpus["n_val"] == 111_540 and torch.tensor(corpus["val_bigrams"]).sum() == 111_540 - 1
    metrics = study.evaluate(tmp_path / "out", limit=4)
    assert 0 < metrics["val_loss"] < result.history[0]["val_loss"] + 1.0
