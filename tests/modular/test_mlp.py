"""The grokking MLP: a HookedRootModule whose hidden neurons pass through `hook_hidden`; it saves
and loads through the one checkpoint loader, and the committed checkpoint still loads."""
from __future__ import annotations

import torch

from mechlab.core.model import load_checkpoint, save_checkpoint
from mechlab.modular.mlp import MLPConfig, ModularMLP, build_mlp
from mechlab.modular.studies import MODULAR_STUDIES
from mechlab.modular.task import all_pairs, evaluate_pairs

CFG = MLPConfig(p=7, d_embed=4, d_hidden=8, seed=0)


def test_hook_hidden_sees_and_can_change_the_neurons():
    model = build_mlp(CFG, device="cpu")
    pairs = all_pairs(7)
    _, cache = model.run_with_cache(pairs)
    assert torch.equal(cache["hook_hidden"], model.hidden(pairs))
    zeroed = model.run_with_hooks(pairs, fwd_hooks=[("hook_hidden", lambda h, hook: torch.zeros_like(h))])
    assert torch.allclose(zeroed, model.out.bias.expand_as(zeroed))
    assert torch.equal(model(pairs), model.out(model.hidden(pairs)))  # hooks are gone again


def test_state_dict_has_only_the_weights():
    assert list(ModularMLP(CFG).state_dict()) == ["embed_a.weight", "embed_b.weight", "hidden_layer.weight",
                                                  "hidden_layer.bias", "out.weight", "out.bias"]


def test_save_and_load_round_trip(tmp_path):
    model = build_mlp(CFG, device="cpu")
    save_checkpoint(model, CFG, tmp_path / "model.pt")
    loaded = load_checkpoint(tmp_path / "model.pt", expected=CFG, device="cpu")
    assert isinstance(loaded, ModularMLP)
    assert torch.equal(loaded(all_pairs(7)), model(all_pairs(7)))


def test_committed_checkpoint_loads_and_generalises(repo_root):
    study = MODULAR_STUDIES["grokking_mlp"]
    model = load_checkpoint(repo_root / "checkpoints" / "grokking_mlp" / "model.pt", expected=study.model_config,
                            device="cpu")
    test = all_pairs(study.model_config.p)[study.split().test]
    assert evaluate_pairs(model, test, "pair", "test", study.model_config.p)["test_acc"] > 0.99
