import math

import pytest
import torch

from mechlab.core.model import ModelConfig, build_model, count_parameters
from mechlab.core.studies import get_study
from mechlab.core.train import learning_rate
from mechlab.shakespeare.studies import SEEDS, SHAKESPEARE_STUDIES, full_val_loss, gpt_config, parameter_count


def test_the_seed_studies_have_nanogpts_cpu_configuration():
    for seed in SEEDS:
        study = get_study(f"shakespeare_char_seed{seed}")
        cfg, recipe = study.model_config, study.train_config
        assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.n_ctx, cfg.d_vocab) == (4, 4, 128, 32, 512, 64, 65)
        assert (cfg.normalization_type, cfg.act_fn, cfg.positional_embedding_type) == ("LN", "gelu", "standard")
        assert (recipe.max_steps, recipe.lr, recipe.betas, recipe.weight_decay, recipe.grad_clip) == (2000, 1e-3, (0.9, 0.99), 0.1, 1.0)
        assert SHAKESPEARE_STUDIES[study.name].batch_size == 12
        assert cfg.seed == recipe.seed == seed


def test_the_schedule_warms_up_then_decays_from_1e3_to_1e4():
    recipe = get_study("shakespeare_char_seed0").train_config
    assert learning_rate(recipe, 0) == pytest.approx(1e-5)
    assert learning_rate(recipe, 99) == pytest.approx(1e-3)
    assert learning_rate(recipe, 1999) == pytest.approx(1e-4, rel=1e-3)


def test_the_gpu_study_is_the_seed_documents_model_with_10_7_million_parameters():
    cfg = get_study("shakespeare_char_gpu").model_config
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.n_ctx) == (6, 6, 384, 128)
    assert parameter_count(cfg) == 10_746_689  # not the seed document's ~2.5 M


@pytest.mark.parametrize("cfg", [
    gpt_config(n_layers=2, n_heads=2, d_model=16, n_ctx=8),
    ModelConfig(n_layers=1, n_heads=3, d_model=12, d_head=5, d_mlp=None, d_vocab=7, n_ctx=6, normalization_type=None),
    ModelConfig(n_layers=0, n_heads=1, d_model=8, d_head=8, d_mlp=None, d_vocab=5, n_ctx=4,
                normalization_type=None, positional_embedding_type="shortformer"),
])
def test_parameter_count_matches_the_built_model(cfg):
    assert parameter_count(cfg) == count_parameters(build_model(cfg, "cpu"))


def test_the_cpu_model_has_818241_parameters():
    assert parameter_count(gpt_config()) == 818_241


def test_gpt_config_refuses_a_width_the_heads_do_not_divide():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        gpt_config(n_heads=3, d_model=128)


def test_full_val_loss_of_a_model_with_uniform_predictions_is_log_vocab():
    model = build_model(gpt_config(n_layers=1, n_heads=1, d_model=8, n_ctx=8), "cpu")
    with torch.no_grad():
        for p in model.unembed.parameters():
            p.zero_()  # logits 0 everywhere: uniform over 65 characters
    val = torch.randint(0, 65, (100,), generator=torch.Generator().manual_seed(0))
    assert full_val_loss(model, val, n_ctx=8) == pytest.approx(math.log(65), rel=1e-5)
