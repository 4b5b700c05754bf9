"""Several models trained at once by the one training loop: each member ends where it would reach trained alone."""
import dataclasses

import pytest
import torch

from mechlab.arithmetic.task import ArithmeticTask
from mechlab.core.ensemble import Ensemble, EnsembleTask, stack_batches
from mechlab.core.model import ModelConfig, build
from mechlab.core.train import TrainConfig, train
from mechlab.modular.mlp import MLPConfig
from mechlab.modular.task import ModularTask, P, make_split, vocab

RECIPE = TrainConfig(max_steps=6, lr=3e-3, warmup_steps=2, grad_clip=0.5, eval_every=3, checkpoint_every=3)
SEEDS = (0, 1)


def member_tasks(tiny_task) -> list[ArithmeticTask]:
    """The tiny main task with one data seed per member."""
    return [ArithmeticTask(tiny_task.train, tiny_task.val, batch_size=32, seed=s, train_eval_size=100) for s in SEEDS]


def assert_same_weights(model, reference, tol: float):
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(p, q, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


def test_the_ensemble_forward_is_each_members_forward(tiny_config, tiny_task):
    models = [build(dataclasses.replace(tiny_config, seed=s), "cpu") for s in SEEDS]
    ensemble = Ensemble(models)
    tokens = torch.stack([tiny_task.batch(s) for s in SEEDS])[..., :-1]  # (N, batch, pos)
    logits = ensemble(tokens)
    assert logits.shape == (2, *tokens.shape[1:], tiny_config.d_vocab)
    for i, model in enumerate(models):
        torch.testing.assert_close(logits[i], model(tokens[i]))
    assert ensemble.state_dict()["blocks.0.attn.W_Q"].shape == (2, *models[0].blocks[0].attn.W_Q.shape)


def test_a_member_is_a_standalone_copy_of_its_weights_and_config(tiny_config):
    models = [build(dataclasses.replace(tiny_config, seed=s), "cpu") for s in SEEDS]
    ensemble = Ensemble(models)
    member = ensemble.member(1)
    assert member.mechlab_config.seed == 1 and member.cfg.device == "cpu"
    assert_same_weights(member, models[1], tol=0)
    with torch.no_grad():
        member.embed.W_E.zero_()
    assert ensemble.embed.W_E[1].abs().sum() > 0  # the ensemble's weights are untouched


def test_members_of_another_shape_are_refused(tiny_config):
    wider = dataclasses.replace(tiny_config, d_mlp=64)
    with pytest.raises(ValueError, match="share one config .*model 1 differs"):
        Ensemble([build(tiny_config, "cpu"), build(wider, "cpu")])
    with pytest.raises(ValueError, match="of one family"):
        EnsembleTask([object(), "a task"])


def test_each_member_is_clipped_by_its_own_norm(tiny_config, tiny_task):
    models = [build(dataclasses.replace(tiny_config, seed=s), "cpu") for s in SEEDS]
    ensemble, tasks = Ensemble(models), member_tasks(tiny_task)
    task = EnsembleTask(tasks)
    task.loss(ensemble, task.batch(0)).backward()
    norms = ensemble.clip_grad_norm_(0.5)
    for i, (model, member_task) in enumerate(zip(models, tasks)):
        member_task.loss(model, member_task.batch(0)).backward()
        alone = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        assert alone > 0.5  # so clipping is exercised
        torch.testing.assert_close(norms[i], alone)
        for (name, p), q in zip(ensemble.named_parameters(), model.parameters()):
            torch.testing.assert_close(p.grad[i], q.grad, msg=lambda m: f"{name}: {m}")


def test_training_an_ensemble_equals_training_each_member_alone(tiny_config, tiny_task):
    """In float64, where the weights agree to 1e-10. In float32 all but the key biases agree to 1e-7, but
    theirs differ by ~1e-4: their true gradient is zero (softmax ignores a shift of every key score), so
    what they get is rounding noise, which AdamW scales up to steps of order `lr` when it is not far below
    its eps (1e-8)."""
    tasks = member_tasks(tiny_task)
    ensemble = Ensemble.from_config(tiny_config, SEEDS, "cpu").to(torch.float64)
    result = train(ensemble, EnsembleTask(tasks), RECIPE, progress=False)
    for i, task in enumerate(tasks):
        alone = build(dataclasses.replace(tiny_config, seed=SEEDS[i]), "cpu").to(torch.float64)
        history = train(alone, task, RECIPE, progress=False).history
        assert_same_weights(ensemble.member(i), alone, tol=1e-10)
        for row, row_alone in zip(result.history, history):
            assert row[f"m{i}/val_loss"] == pytest.approx(row_alone["val_loss"], rel=1e-10)
    last = result.history[-1]
    assert last["mean/val_loss"] == pytest.approx((last["m0/val_loss"] + last["m1/val_loss"]) / 2)
    assert last["min/val_loss"] == min(last["m0/val_loss"], last["m1/val_loss"])


def test_an_interrupted_ensemble_run_resumes_to_the_same_weights(tiny_config, tiny_task, tmp_path):
    task = EnsembleTask(member_tasks(tiny_task))
    reference = Ensemble.from_config(tiny_config, SEEDS, "cpu")
    train(reference, task, RECIPE, progress=False)
    paused = train(Ensemble.from_config(tiny_config, SEEDS, "cpu"), task, RECIPE, tmp_path, progress=False,
                   stop_after_steps=4)
    assert paused.stopped_because == "interrupted"
    resumed = Ensemble.from_config(tiny_config, SEEDS, "cpu")
    assert train(resumed, task, RECIPE, tmp_path, progress=False).steps == RECIPE.max_steps
    assert_same_weights(resumed, reference, tol=0)


MODULAR_MODELS = {
    "three_layer": ModelConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=P + 2, n_ctx=4,
                               act_fn="relu", vocab=vocab("three_layer")),
    "pair": MLPConfig(p=P, d_embed=8, d_hidden=16),
}


@pytest.mark.parametrize("fmt", MODULAR_MODELS)
def test_the_modular_models_and_loss_are_vectorised_too(fmt):
    """The grokking MLP, and a transformer whose training loss reads its last position through a hook."""
    task = ModularTask(make_split(P, n_train=64, n_test=64), fmt, batch_size=16)
    ensemble = Ensemble.from_config(MODULAR_MODELS[fmt], SEEDS, "cpu")
    batch = stack_batches([task.batch(0)] * 2)  # one task shared by both members
    losses = ensemble.map(task.loss, batch)
    assert losses.dtype == torch.float64 and losses[0] != losses[1]
    for i in range(2):
        torch.testing.assert_close(losses[i], task.loss(ensemble.member(i), task.batch(0)))
