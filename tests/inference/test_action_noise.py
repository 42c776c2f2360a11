"""The action chunk's starting-noise scale: 1 is today's sampling, s scales the very noise the seed
draws, and 0 makes the chunk independent of the seed; bad values fail by the option's name."""

from __future__ import annotations

import pytest
import torch

from emcot.inference import stages
from emcot.inference.options import GenerationOptions
from emcot.model.flow import FlowSamplerConfig
from emcot.policy.policy import EmCoTPolicy
from emcot.synthetic.world import synthetic_action_samples


@pytest.fixture(scope="module")
def policy():
    return EmCoTPolicy.synthetic()


@pytest.fixture(scope="module")
def sample():
    return synthetic_action_samples(1, seed=3)[0]


@pytest.fixture
def start_noise(monkeypatch):
    """The starting noise of every denoising run, in order."""
    captured: list[torch.Tensor] = []
    real = stages.euler_sample

    def spy(velocity_fn, noise, cfg, **kwargs):
        captured.append(noise.clone())
        return real(velocity_fn, noise, cfg, **kwargs)

    monkeypatch.setattr(stages, "euler_sample", spy)
    return captured


def act(policy, sample, seed, **options):
    trace = policy.generate_trace(
        sample.observation, sample.instruction, mode="reactive", seed=seed, **options
    )
    return trace.actions


def test_the_scale_multiplies_the_seeded_noise(policy, sample, start_noise):
    plain = act(policy, sample, seed=0)
    assert (act(policy, sample, seed=0, action_noise_scale=1.0) == plain).all()
    act(policy, sample, seed=0, action_noise_scale=0.5)
    full, _, half = start_noise
    assert full.abs().sum() > 0
    torch.testing.assert_close(half, 0.5 * full)
    assert not (act(policy, sample, seed=0, action_noise_scale=0.5) == plain).all()


def test_zero_noise_gives_the_same_chunk_for_every_seed(policy, sample, start_noise):
    a, b = (
        act(policy, sample, seed=0, action_noise_scale=0.0),
        act(policy, sample, seed=7, action_noise_scale=0.0),
    )
    assert (a == b).all()
    assert all(noise.abs().sum() == 0 for noise in start_noise)
    assert not (act(policy, sample, seed=0) == act(policy, sample, seed=7)).all()


def test_policy_defaults_carry_the_scale(policy, sample, tmp_path):
    policy.generation = policy.generation.replace(action_noise_scale=0.0)
    try:
        folder = policy.save_pretrained(tmp_path / "p")
        loaded = EmCoTPolicy.from_pretrained(folder)
    finally:
        policy.generation = policy.generation.replace(action_noise_scale=None)
    assert loaded.generation.action_noise_scale == 0.0
    assert (act(loaded, sample, seed=1) == act(loaded, sample, seed=2)).all()


@pytest.mark.parametrize("value", [-0.5, float("nan")])
def test_bad_scales_fail_by_name(value):
    with pytest.raises(ValueError, match="action_noise_scale"):
        GenerationOptions(action_noise_scale=value)
    with pytest.raises(ValueError, match="noise_scale"):
        FlowSamplerConfig(noise_scale=value)
