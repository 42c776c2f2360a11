"""What FSDP needs from the model: every trainable weight takes part in every training pass."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from emcot.synthetic.world import build_synthetic_policy, synthetic_samples, synthetic_vqa_samples
from emcot.training.collate import SampleCollator
from emcot.training.recipes import load_recipe
from emcot.training.sharding import root_parameters
from emcot.training.trainer import LossModule, Trainer


@pytest.fixture(scope="module")
def policy():
    return build_synthetic_policy(synthetic_samples(4, seed=0))


def backward(module: LossModule, batch) -> float:
    module.zero_grad(set_to_none=True)
    counts = {"text": 1.0, "subgoal": 1.0, "action": 1.0}
    weights = {"text": 1.0, "subgoal": 1.0, "action": 1.0}
    loss, _ = module(batch, torch.Generator().manual_seed(0), weights, counts, 1.0)
    loss.backward()
    return float(loss.detach())


def test_idle_experts_and_heads_get_zero_gradients_without_changing_the_loss(policy):
    model = policy.model.train()
    # A VQA-only pack: no latent or action tokens, so two experts and their heads sit idle.
    batch = SampleCollator(policy.processor)(synthetic_vqa_samples(2, seed=1))
    plain = LossModule(model)
    loss_plain = backward(plain, batch)
    action_layer = [p for p in model.backbone.layers[0].experts["act"].parameters()]
    assert all(p.grad is None for p in action_layer)
    assert any(p.grad is None for p in model.action.parameters())

    model.backbone.route_idle_experts = True
    try:
        touched = LossModule(model, touch_all=True)
        loss_touched = backward(touched, batch)
    finally:
        model.backbone.route_idle_experts = False
    assert loss_touched == pytest.approx(loss_plain, abs=1e-6)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(float(p.grad.abs().max()) == 0.0 for p in action_layer)
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.action.parameters())
    inside = {id(p) for layer in model.backbone.layers for p in layer.parameters()}
    assert {id(p) for p in root_parameters(touched)}.isdisjoint(inside)


def test_idle_routing_leaves_used_experts_unchanged(policy):
    model = policy.model.train()
    batch = SampleCollator(policy.processor)(synthetic_samples(2, seed=2))
    expected = model.compute_loss(batch, torch.Generator().manual_seed(3)).terms
    model.backbone.route_idle_experts = True
    try:
        got = model.compute_loss(batch, torch.Generator().manual_seed(3)).terms
    finally:
        model.backbone.route_idle_experts = False
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_fsdp_without_a_distributed_launch_is_a_clear_error(tmp_path):
    recipe = load_recipe("stage2-tiny")
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, fsdp=True, total_steps=1))
    with pytest.raises(ValueError, match="distributed launch"):
        Trainer(recipe, tmp_path / "run")
