"""Camera keypoints: the spatial softmax against hand-computed points, config errors, and the
model integration — a fresh module changes nothing, it reads the pixels the processor made of the
camera in training and at run time alike, a hidden camera hides it too, and it round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emcot.cli.main import main
from emcot.experts.keypoints import CameraKeypoints, KeypointConfig, spatial_softmax
from emcot.model.embedding import state_camera_pixels
from emcot.policy.policy import EmCoTPolicy
from emcot.synthetic.world import build_synthetic_policy, synthetic_samples
from emcot.training.collate import SampleCollator

SMALL = KeypointConfig(num_keypoints=4, channels=16, head_hidden=16)


def test_spatial_softmax_finds_the_peak_cell_centre_and_spreads_uniform_maps():
    logits = torch.zeros(1, 2, 4, 8)
    logits[0, 0, 3, 1] = 50.0  # row 3 of 4, column 1 of 8
    points, peaks = spatial_softmax(logits, torch.tensor(1.0))
    assert points[0, 0].tolist() == pytest.approx([(1.5 / 8) * 2 - 1, (3.5 / 4) * 2 - 1], abs=1e-6)
    assert peaks[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert points[0, 1].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)  # uniform: the centre
    assert peaks[0, 1].item() == pytest.approx(1 / 32)


def test_keypoint_config_errors_name_the_field():
    with pytest.raises(ValueError, match="multiple of 16"):
        KeypointConfig(channels=12)
    with pytest.raises(ValueError, match="target_mean needs 6 values"):
        KeypointConfig(target_mean=(0.0,), target_std=(1.0,))
    with pytest.raises(ValueError, match="target_std must be positive"):
        KeypointConfig(targets=1, target_mean=(0.0,), target_std=(0.0,))
    with pytest.raises(ValueError, match="Unknown keypoints keys"):
        KeypointConfig.from_dict({"num_keypoint": 3})
    config = KeypointConfig(targets=2, target_mean=(1, 2), target_std=(3, 4))
    assert KeypointConfig.from_dict(config.to_dict()) == config


def test_positions_normalise_and_back():
    config = KeypointConfig(targets=2, target_mean=(1.0, -2.0), target_std=(0.5, 4.0))
    module = CameraKeypoints(config, 8)
    x = torch.tensor([[2.0, 2.0]])
    assert module.normalise(x).tolist() == [[2.0, 1.0]]
    assert torch.allclose(module.denormalise(module.normalise(x)), x)


@pytest.fixture(scope="module")
def samples():
    return synthetic_samples(4, seed=0)


def _policy(samples, keypoints=SMALL, seed=0):
    policy = build_synthetic_policy(samples, seed=seed, keypoints=keypoints)
    policy.model.eval()
    return policy


def _perturbed(policy):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)  # zero-initialised heads hide differences
    return policy


def _loss(policy, samples):
    batch = SampleCollator(policy.processor)(samples, rng=np.random.default_rng(0))
    return float(policy.model.compute_loss(batch, torch.Generator().manual_seed(0)).loss.detach())


def test_a_fresh_module_changes_nothing_and_only_its_embedding_learns(samples):
    plain, with_keypoints = _policy(samples, keypoints=None), _policy(samples)
    missing, unexpected = with_keypoints.model.load_state_dict(plain.model.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("keypoints.") for k in missing)
    assert _loss(with_keypoints, samples) == pytest.approx(_loss(plain, samples), abs=1e-6)
    _perturbed(with_keypoints).model.train()
    batch = SampleCollator(with_keypoints.processor)(samples, rng=np.random.default_rng(0))
    with_keypoints.model.compute_loss(batch).loss.backward()
    module = with_keypoints.model.keypoints
    assert module.embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in module.named_parameters() if not n.startswith("embed."))


def test_a_trainable_localiser_gets_gradients(samples):
    policy = _perturbed(_policy(samples, KeypointConfig(num_keypoints=4, channels=16, trainable=True)))
    policy.model.train()
    policy.model.compute_loss(SampleCollator(policy.processor)(samples)).loss.backward()
    assert policy.model.keypoints.features[0].weight.grad.abs().sum() > 0


def test_training_and_run_time_feed_the_same_camera_pixels(samples):
    policy = _perturbed(_policy(samples))
    seen: list[torch.Tensor] = []
    policy.model.keypoints.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    sample = next(s for s in samples if s.actions is not None)
    batch = SampleCollator(policy.processor)([sample], rng=np.random.default_rng(0))
    policy.model.compute_loss(batch, torch.Generator().manual_seed(0))
    policy.generate_trace(sample.observation, sample.instruction, mode="reactive", seed=0)
    assert len(seen) == 2 and seen[0].shape[0] == 1
    torch.testing.assert_close(seen[0], seen[1])


def test_the_camera_moves_the_actions_and_a_hidden_camera_hides_the_keypoints(samples):
    policy = _perturbed(_policy(samples))
    with torch.no_grad():
        policy.model.keypoints.embed.weight.normal_(0, 0.5)
    sample = samples[0]
    black = type(sample.observation)(
        images={k: np.zeros_like(v) for k, v in sample.observation.images.items()},
        state=sample.observation.state,
    )
    chunk = policy.generate_trace(sample.observation, sample.instruction, mode="reactive", seed=0).actions
    blind = policy.generate_trace(black, sample.instruction, mode="reactive", seed=0).actions
    assert not np.allclose(chunk, blind, atol=1e-4)
    batch = SampleCollator(policy.processor)([sample], rng=np.random.default_rng(0))
    shown = state_camera_pixels(policy.model, batch.plan, batch.vit_patches, batch.vit_grids)
    assert shown is not None and shown[0] is not None
    hidden = state_camera_pixels(
        policy.model,
        batch.plan,
        batch.vit_patches,
        batch.vit_grids,
        torch.ones(batch.num_tokens, dtype=torch.bool),
    )
    assert hidden == [None] * len(shown)
    assert (
        state_camera_pixels(
            _policy(samples, keypoints=None).model, batch.plan, batch.vit_patches, batch.vit_grids
        )
        is None
    )


def test_a_saved_policy_keeps_its_keypoints(samples, tmp_path, capsys):
    policy = _perturbed(_policy(samples))
    policy.save_pretrained(tmp_path / "policy")
    loaded = EmCoTPolicy.from_pretrained(tmp_path / "policy")
    assert loaded.model.config.keypoints == policy.model.config.keypoints
    sample = samples[0]
    a = policy.generate_trace(sample.observation, sample.instruction, mode="reactive", seed=0).actions
    b = loaded.generate_trace(sample.observation, sample.instruction, mode="reactive", seed=0).actions
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert main(["info", str(tmp_path / "policy")]) == 0
    out = capsys.readouterr().out
    assert "camera keypoints: 4 points, 16 channels, 6 positions read out, localiser frozen" in out
    assert "keypoints" in out.split("parameters:")[1]


def test_keypoints_need_a_vision_encoder(samples):
    with pytest.raises(ValueError, match="config.keypoints reads the camera, so it needs config.vision"):
        build_synthetic_policy(samples, keypoints=SMALL, vision=None)
