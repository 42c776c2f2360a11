"""Classifier-free guidance of the action chunk: off at scale 1 (free), deterministic when on, and each
branch equal to the training forward of an action-only sample whose condition the collator dropped."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from emcot.inference import stages
from emcot.model.flow import FlowSamplerConfig
from emcot.model.inputs import SegmentInputs
from emcot.policy.policy import EmCoTPolicy
from emcot.sequence.plan import SequencePlan
from emcot.synthetic.world import synthetic_action_samples
from emcot.training.collate import ConditionDropout, SampleCollator

_spec = importlib.util.spec_from_file_location(
    "teacher_forcing", Path(__file__).with_name("teacher_forcing.py")
)
teacher_forcing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(teacher_forcing)

GUIDED = {"action_text_guidance": 2.0, "action_image_guidance": 1.5}


@pytest.fixture(scope="module")
def policy():
    return EmCoTPolicy.synthetic()


@pytest.fixture(scope="module")
def sample():
    return synthetic_action_samples(1, seed=2)[0]


@pytest.fixture
def velocity_fns(monkeypatch):
    """The velocity function of every denoising run, in order (the last one is the action chunk's)."""
    captured = []
    real = stages.euler_sample

    def spy(velocity_fn, noise, cfg, **kwargs):
        captured.append(velocity_fn)
        return real(velocity_fn, noise, cfg, **kwargs)

    monkeypatch.setattr(stages, "euler_sample", spy)
    return captured


def act(policy, sample, mode="reactive", **options):
    return policy.generate_trace(sample.observation, sample.instruction, mode=mode, seed=0, **options)


def test_unit_scales_are_the_unguided_actions_at_no_cost(policy, sample, monkeypatch):
    plain = act(policy, sample)
    plain_calls = teacher_forcing.backbone_calls(policy, lambda: act(policy, sample))
    steps = policy.config.action_sampler.num_steps
    assert plain_calls == 2 + steps  # prefix, <|action_start|>, one pass per Euler step
    guided = FlowSamplerConfig.actions(text_guidance=2.0, image_guidance=1.5)
    monkeypatch.setattr(policy.model.config, "action_sampler", guided)
    unit = {"action_text_guidance": 1.0, "action_image_guidance": 1.0}
    assert np.array_equal(act(policy, sample, **unit).actions, plain.actions)
    assert teacher_forcing.backbone_calls(policy, lambda: act(policy, sample, **unit)) == plain_calls
    # Unset options take the config's scales; both branches cost the no-image prefill and 2 passes a step.
    from_config = act(policy, sample)
    assert np.array_equal(from_config.actions, act(policy, sample, **GUIDED).actions)
    assert teacher_forcing.backbone_calls(policy, lambda: act(policy, sample)) == plain_calls + 1 + 2 * steps


@pytest.mark.parametrize("mode", ["reactive", "full"])
def test_guidance_changes_only_the_actions_and_is_deterministic(policy, sample, mode):
    plain = act(policy, sample, mode)
    for options in (GUIDED, {"action_text_guidance": 3.0}, {"action_image_guidance": 3.0}):
        guided = act(policy, sample, mode, **options)
        assert guided.actions.shape == plain.actions.shape
        assert not np.allclose(guided.actions, plain.actions)
        assert np.array_equal(guided.actions, act(policy, sample, mode, **options).actions)
        assert guided.reasoning == plain.reasoning
        if mode == "full":
            assert np.array_equal(np.asarray(guided.subgoal), np.asarray(plain.subgoal))
    with pytest.raises(ValueError, match="action_text_guidance must be ≥ 0"):
        act(policy, sample, mode, action_text_guidance=-1.0)


@torch.no_grad()
def test_reactive_branches_equal_training_forwards_with_dropped_conditions(policy, sample, velocity_fns):
    act(policy, sample, **GUIDED)
    velocity = velocity_fns[-1]
    action = policy.config.action
    x_t = torch.randn(1, action.horizon, action.action_dim, generator=torch.Generator().manual_seed(0))
    t = 0.63
    out = velocity(x_t, t)

    rng = np.random.default_rng(0)
    batch = SampleCollator(policy.processor)([sample])
    no_text = SampleCollator(policy.processor, ConditionDropout(text=1.0))([sample], rng=rng)
    no_camera = SampleCollator(policy.processor, ConditionDropout(vit=1.0))([sample], rng=rng)
    assert no_text.key_drop is not None and not any(s.role == "camera" for s in no_camera.plan.segments)
    for got, reference in ((out.cond, batch), (out.no_text, no_text), (out.no_image, no_camera)):
        want = teacher_forcing.noisy_velocity(policy.model, reference, x_t, t)
        assert (got - want).abs().max() <= 1e-5
    assert out.cond.abs().mean() > 1e-3
    assert (out.no_text - out.cond).abs().max() > 1e-3 and (out.no_image - out.cond).abs().max() > 1e-3


@torch.no_grad()
def test_no_image_branch_is_the_reactive_sample_whatever_the_mode(policy, sample, velocity_fns):
    """After reasoning and a subgoal, the no-image branch still holds only state, plain prompt and marker."""
    act(policy, sample, "full", **GUIDED)
    full = velocity_fns[-1]
    act(policy, sample, "reactive", **GUIDED)
    reactive = velocity_fns[-1]
    action = policy.config.action
    x_t = torch.randn(1, action.horizon, action.action_dim, generator=torch.Generator().manual_seed(1))
    a, b = full(x_t, 0.4), reactive(x_t, 0.4)
    assert (a.no_image - b.no_image).abs().max() <= 1e-6
    assert (a.cond - b.cond).abs().max() > 1e-3


@torch.no_grad()
def test_full_mode_no_text_branch_sees_only_the_observation(policy, sample, velocity_fns):
    """The full trace's plan with every key but cameras and state hidden: what those hidden segments
    hold (here random embeddings) cannot change the no-text velocity."""
    plan = act(policy, sample, "full", **GUIDED).layout
    model, action = policy.model, policy.config.action
    x_t = torch.randn(1, action.horizon, action.action_dim, generator=torch.Generator().manual_seed(2))
    t = 0.63
    out = velocity_fns[-1](x_t, t)

    observed = [s.role in ("camera", "state") for s in plan.segments]
    n_obs = observed.index(False)
    assert all(observed[:n_obs]) and not any(observed[n_obs:]) and plan.segments[-1].role == "actions"
    batch = SampleCollator(policy.processor)([sample])
    obs = model.embed(
        SequencePlan(plan.segments[:n_obs]),
        SegmentInputs(
            batch.text_ids[:0], model.encode_images(batch.vit_patches, batch.vit_grids), batch.states
        ),
    )
    n_hidden = sum(s.length for s in plan.segments[n_obs:-1])
    junk = torch.randn(1, n_hidden, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    acts = model.action.embed_actions(x_t, torch.full((1,), t))
    drop = teacher_forcing.segment_key_drop(plan, [not o for o in observed[:-1]] + [False])
    hidden = model.run_plan(torch.cat([obs, junk, acts], 1), plan, key_drop=drop)[0]
    want = model.action.velocity(hidden[-action.horizon :][None])
    assert (out.no_text - want).abs().max() <= 1e-5
    assert (out.no_text - out.cond).abs().max() > 1e-3
