"""Visual generation without a trace: the training layout, cache = training forward for every
guidance branch, seeds and guidance, and boundary errors."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emcot.inference.frames import FramePredictor
from emcot.inference.guidance import subgoal_query, subgoal_velocity
from emcot.model.flow import FlowSamplerConfig
from emcot.policy.policy import EmCoTPolicy
from emcot.synthetic.world import synthetic_samples
from emcot.training.collate import ConditionDropout, SampleCollator
from emcot.types import EmCoTSample, Observation, SampleKind

_spec = importlib.util.spec_from_file_location(
    "teacher_forcing", Path(__file__).with_name("teacher_forcing.py")
)
teacher_forcing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(teacher_forcing)

PROMPT = "Imagine the next scene: push the red block to the left."


@pytest.fixture(scope="module")
def policy():
    return EmCoTPolicy.synthetic()


@pytest.fixture(scope="module")
def scene():
    """Two context frames of different shapes (a cropped one gives another ViT grid) and a target."""
    a, b = synthetic_samples(2, seed=3)
    frames = {"frame_0": a.observation.images["head"], "frame_1": np.ascontiguousarray(b.subgoal[:, :24])}
    sample = EmCoTSample(
        observation=Observation(dict(frames)),
        instruction=PROMPT,
        subgoal=b.subgoal,
        kind=SampleKind.GENERATION,
    )
    return frames, sample


@pytest.mark.parametrize("vae_context", [True, False])
def test_prediction_layout_equals_the_training_layout(policy, scene, vae_context):
    frames, sample = scene
    sample = dataclasses.replace(sample, vae_context=vae_context)
    batch = SampleCollator(policy.processor)([sample])
    # predict_frame is prefill + imagine; the state they share holds the layout.
    predictor = FramePredictor(policy.model, policy.processor)
    state = predictor.prefill(frames, PROMPT, vae_context, seed=0)
    predictor.imagine(state, dataclasses.replace(policy.config.subgoal_sampler, num_steps=2))
    predicted = state.layout.segments
    assert predicted == batch.plan.segments
    assert sum(s.role == "context_latent" for s in predicted) == (2 if vae_context else 0)
    assert [t for ids in state.text_ids for t in ids] == batch.text_ids.tolist()


@pytest.mark.parametrize("vae_context", [True, False])
@torch.no_grad()
def test_cached_branch_velocities_equal_the_training_forward(policy, scene, vae_context):
    """cond, no-text and no-image at one (x_t, t) equal the teacher-forced forward of the same
    generation sample without dropout, with its text dropped, and with its ViT and VAE frames dropped."""
    frames, sample = scene
    sample = dataclasses.replace(sample, vae_context=vae_context)
    model = policy.model
    state = FramePredictor(model, policy.processor).prefill(frames, PROMPT, vae_context)
    sampler = FlowSamplerConfig.subgoal(text_guidance=2.0, image_guidance=2.0)
    velocity = subgoal_velocity(model, state, sampler)  # what FramePredictor.imagine denoises with
    token_dim = model.config.latent_token_dim
    n_target = subgoal_query(model).segment.length
    x_t = torch.randn(1, n_target, token_dim, generator=torch.Generator().manual_seed(0))
    t = 0.63
    out = velocity(x_t, t)
    rng = np.random.default_rng(0)
    for got, dropout in (
        (out.cond, None),
        (out.no_text, ConditionDropout(text=1.0)),
        (out.no_image, ConditionDropout(vit=1.0, vae=1.0)),
    ):
        batch = SampleCollator(policy.processor, dropout)([sample], rng=rng)
        want = teacher_forcing.noisy_velocity(model, batch, x_t, t)
        assert (got - want).abs().max() <= 1e-5
    assert out.cond.abs().mean() > 1e-3
    assert (out.no_text - out.cond).abs().max() > 1e-3 and (out.no_image - out.cond).abs().max() > 1e-3


def test_seeds_and_guidance(policy, scene, monkeypatch):
    frames, _ = scene
    steps = 4

    def predict(**kw):
        return np.asarray(policy.predict_frame(frames, PROMPT, steps=steps, **kw))

    a, b, c = predict(seed=1), predict(seed=1), predict(seed=2)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)

    # Scale 1.0 per call overrides guided defaults: the unguided image, with no extra forward pass.
    plain_calls = teacher_forcing.backbone_calls(policy, lambda: predict(seed=1))
    assert plain_calls == 1 + steps
    guided_config = FlowSamplerConfig.subgoal(text_guidance=3.0, image_guidance=2.0)
    monkeypatch.setattr(policy.model.config, "subgoal_sampler", guided_config)
    unit = {"text_guidance": 1.0, "image_guidance": 1.0}
    assert np.array_equal(predict(seed=1, **unit), a)
    assert teacher_forcing.backbone_calls(policy, lambda: predict(seed=1, **unit)) == plain_calls
    for kw in ({"text_guidance": 1.0}, {"image_guidance": 1.0}, {}):
        guided = predict(seed=1, **kw)
        assert not np.array_equal(guided, a)
        assert np.array_equal(guided, predict(seed=1, **kw))
    # Both branches: the no-image prefill, then two extra passes per step (all 4 steps lie in t > 0.4).
    assert teacher_forcing.backbone_calls(policy, lambda: predict(seed=1)) == plain_calls + 1 + 2 * steps


def test_single_array_list_and_dict_frames_agree(policy, scene):
    frames, _ = scene
    first = frames["frame_0"]
    one = np.asarray(policy.predict_frame(first, PROMPT, seed=0, steps=3))
    assert np.array_equal(one, np.asarray(policy.predict_frame([first], PROMPT, seed=0, steps=3)))
    assert np.array_equal(one, np.asarray(policy.predict_frame({"x": first}, PROMPT, seed=0, steps=3)))


def test_errors_name_the_fix(policy, scene):
    from emcot.config import EmCoTConfig
    from emcot.model.modeling import EmCoTModel
    from emcot.policy.processor import EmCoTProcessor

    frames, _ = scene
    image = frames["frame_0"]
    cases = [
        ([], "at least one context frame"),
        ({}, "at least one context frame"),
        (Image.fromarray(image), "got Image"),
        ([image.astype(np.float32)], "frame 0 must have dtype uint8"),
        ({"wrist": image[..., 0]}, r"frame 'wrist' must have shape \(H, W, 3\)"),
        ([image, "x.png"], "frame 1 must be a numpy array"),
    ]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            policy.predict_frame(bad, PROMPT)
    with pytest.raises(ValueError, match="non-empty"):
        policy.predict_frame(image, "  ")
    with pytest.raises(ValueError, match="num_steps"):
        policy.predict_frame(image, PROMPT, steps=0)

    proc = policy.processor
    config = EmCoTConfig.from_preset("tiny", vocab_size=policy.config.vocab_size, vae=None)
    no_vae = EmCoTPolicy(
        EmCoTModel(config), EmCoTProcessor(config, proc.tokenizer, proc.norm_stats, proc.settings)
    )
    with pytest.raises(ValueError, match="needs a model with a VAE"):
        no_vae.predict_frame(image, PROMPT)
