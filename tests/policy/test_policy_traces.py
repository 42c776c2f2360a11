"""A tiny policy learns the synthetic task and generates full traces; layouts, streaming, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from emcot.synthetic.world import build_synthetic_policy, synthetic_samples
from emcot.training.collate import SampleCollator
from emcot.training.quick_fit import fit_latent_codec, fit_policy
from emcot.types import Observation

FIT_STEPS = 800


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    samples = synthetic_samples(4, seed=1)
    policy = build_synthetic_policy(samples)
    images = [s.subgoal for s in samples] + [s.observation.images["head"] for s in samples]
    fit_latent_codec(policy.model.latent_codec, images, steps=300)
    losses = fit_policy(policy, samples, steps=FIT_STEPS, lr=5e-3)
    return policy, samples, losses


def test_tiny_model_overfits_reasoning_subgoal_and_actions(fitted):
    policy, samples, losses = fitted
    assert losses[-1] < 0.25 * losses[0]
    actions = np.stack([s.actions for s in samples])
    baseline_mae = np.abs(actions - actions.mean(0)).mean()
    for sample in samples:
        trace = policy.generate_trace(sample.observation, sample.instruction, seed=0)
        assert trace.reasoning == sample.reasoning
        subgoal = np.asarray(trace.subgoal, np.float32) / 255
        target = sample.subgoal.astype(np.float32) / 255
        current = sample.observation.images["head"].astype(np.float32) / 255
        # The subgoal must show the block moved: nearer the goal image than the current view.
        assert np.mean((subgoal - target) ** 2) < 0.015
        assert np.mean((subgoal - target) ** 2) < np.mean((subgoal - current) ** 2)
        assert trace.actions.shape == sample.actions.shape
        assert np.abs(trace.actions - sample.actions).mean() < 0.25 * baseline_mae


def test_training_and_generation_layouts_are_identical(fitted):
    policy, samples, _ = fitted
    sample = samples[0]
    generated = policy.generate_trace(sample.observation, sample.instruction, seed=0).layout.segments
    trained = SampleCollator(policy.processor)([sample]).plan.segments
    assert generated == trained


@pytest.mark.parametrize("mode", ["reason", "reactive"])
def test_reduced_modes(fitted, mode):
    policy, samples, _ = fitted
    trace = policy.generate_trace(samples[1].observation, samples[1].instruction, mode=mode, seed=0)
    assert trace.subgoal is None and trace.mode == mode
    assert trace.actions.shape == (8, 4)
    assert (trace.reasoning == "") == (mode == "reactive")
    generated = trace.layout.segments
    assert not any(s.role.startswith("subgoal") for s in generated)


def test_same_seed_same_trace_other_seed_other_subgoal(fitted):
    policy, samples, _ = fitted
    obs, instr = samples[2].observation, samples[2].instruction
    a = policy.generate_trace(obs, instr, seed=7)
    b = policy.generate_trace(obs, instr, seed=7)
    c = policy.generate_trace(obs, instr, seed=8)
    assert a.reasoning == b.reasoning and np.array_equal(a.actions, b.actions)
    assert np.array_equal(np.asarray(a.subgoal), np.asarray(b.subgoal))
    assert not np.array_equal(a.actions, c.actions)


def test_stream_yields_reasoning_then_subgoal_then_actions(fitted):
    policy, samples, _ = fitted
    events = list(policy.stream_trace(samples[0].observation, samples[0].instruction, seed=0))
    kinds = [e.kind for e in events]
    assert kinds[-3:] == ["subgoal", "actions", "done"]
    assert set(kinds[:-3]) == {"reasoning"} and len(kinds) > 5
    trace = events[-1].trace
    assert "".join(e.text for e in events if e.kind == "reasoning") == trace.reasoning
    assert set(trace.timings) >= {"prefix", "reasoning", "subgoal", "actions", "total"}


def test_guidance_runs_and_changes_the_subgoal(fitted):
    policy, samples, _ = fitted
    obs, instr = samples[0].observation, samples[0].instruction
    plain = policy.generate_trace(obs, instr, seed=0, text_guidance=1.0, image_guidance=1.0)
    guided = policy.generate_trace(obs, instr, seed=0, text_guidance=3.0, image_guidance=1.5)
    assert guided.subgoal.size == plain.subgoal.size
    assert not np.array_equal(np.asarray(guided.subgoal), np.asarray(plain.subgoal))


def test_trace_saves_and_loads(fitted, tmp_path):
    from emcot.inference.trace import Trace

    policy, samples, _ = fitted
    trace = policy.generate_trace(samples[0].observation, samples[0].instruction, seed=0)
    back = Trace.load(trace.save(tmp_path / "t"))
    assert back.reasoning == trace.reasoning and np.allclose(back.actions, trace.actions)
    assert np.array_equal(np.asarray(back.subgoal), np.asarray(trace.subgoal))
    assert (tmp_path / "t" / "subgoal.png").is_file() and (tmp_path / "t" / "reasoning.txt").is_file()
    # with the observation it was made from: one PNG per camera and the state, named in trace.json
    observation = samples[0].observation
    trace.save(tmp_path / "o", observation)
    saved = json.loads((tmp_path / "o" / "trace.json").read_text())
    assert saved["observations"] == {"head": "observation_head.png"}
    assert np.allclose(saved["state"], observation.state)
    back = np.asarray(Image.open(tmp_path / "o" / "observation_head.png"))
    assert np.array_equal(back, observation.images["head"])


def test_input_validation(fitted):
    policy, samples, _ = fitted
    good = samples[0].observation
    instr = samples[0].instruction
    image = good.images["head"]
    cases = [
        (Observation({"head": image.astype(np.float32)}, good.state), "uint8"),
        (Observation({"head": image[..., :2]}, good.state), r"\(H, W, 3\)"),
        (Observation({"wrist": image}, good.state), "unknown \\['wrist'\\]"),
        (Observation({"head": image}, good.state[:3]), "state must have shape"),
        (Observation({"head": image}, None), "needs a state vector"),
    ]
    for obs, match in cases:
        with pytest.raises(ValueError, match=match):
            policy.generate_trace(obs, instr)
    with pytest.raises(ValueError, match="non-empty"):
        policy.generate_trace(good, "   ")
    with pytest.raises(ValueError, match="unknown mode"):
        policy.generate_trace(good, instr, mode="dream")
    with pytest.raises(ValueError, match="unknown generation options"):
        policy.generate_trace(good, instr, temprature=0.5)
