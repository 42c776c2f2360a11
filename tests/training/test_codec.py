"""Latent codec training: statistics and calibration, PSNR, exact resume, checkpoint damage, validation."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from emcot.tokenizers.vae import LatentCodec, VAEConfig
from emcot.training.codec import (
    PSNR_CAP_DB,
    CodecTrainConfig,
    LatentStatistics,
    calibrated,
    fit_codec,
    latent_statistics,
    psnr,
    psnr_per_image,
    reconstruction_psnr,
    save_codec,
)

SIZE = (16, 16)
RUN = CodecTrainConfig(
    steps=6, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=3, eval_every=3, keep_last=5
)


def _frames(count: int, seed: int = 0) -> np.ndarray:
    """Smooth random scenes: a coloured gradient plus a bright square, uint8 (N, 16, 16, 3)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, SIZE[0])[None, :, None, None] * rng.uniform(40, 160, (count, 1, 1, 3))
    frames = np.broadcast_to(ramp, (count, *SIZE, 3)).copy() + rng.uniform(0, 60, (count, 1, 1, 3))
    for frame, (r, c) in zip(frames, rng.integers(0, 12, (count, 2))):
        frame[r : r + 4, c : c + 4] = 230
    return frames.round().astype(np.uint8)


def _codec(seed: int = 0, config: VAEConfig | None = None) -> LatentCodec:
    torch.manual_seed(seed)
    return LatentCodec.from_config(config or VAEConfig.tiny(image_size=SIZE))


def _weights(codec: LatentCodec) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in codec.vae.state_dict().items()}


TRAIN, VAL = _frames(12, seed=1), _frames(4, seed=2)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Six steps without interruption: (codec, result, metrics lines)."""
    out = tmp_path_factory.mktemp("straight")
    codec = _codec()
    result = fit_codec(codec, TRAIN, VAL, RUN, out_dir=out, progress=False)
    return codec, result, (out / "metrics.jsonl").read_text().splitlines()


def test_statistics_match_a_direct_computation_and_calibration_gives_unit_latents():
    codec = _codec().eval()
    frames = _frames(10)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        raw = codec.vae.encode(x).latent_dist.mean.double()
    stats = latent_statistics(codec, frames, batch_size=3)  # a short last batch is counted right
    assert stats.images == 10 and len(stats.channel_mean) == len(stats.channel_std) == 16
    # float32 convolutions round differently per batch size: agreement to ~1e-6, not bit for bit.
    assert math.isclose(stats.mean, raw.mean().item(), rel_tol=1e-5)
    assert math.isclose(stats.std, raw.std(unbiased=False).item(), rel_tol=1e-5)
    per_channel = raw.transpose(0, 1).flatten(1)
    assert np.allclose(stats.channel_mean, per_channel.mean(1).numpy(), rtol=1e-4, atol=1e-6)
    assert np.allclose(stats.channel_std, per_channel.std(1, unbiased=False).numpy(), rtol=1e-4)
    # Under the FLUX constants this codec's latents are far from unit scale; calibrated ones are not.
    before = latent_statistics(codec, frames, normalised=True)
    assert abs(before.std - 1) > 0.05
    codec.config = calibrated(codec.config, stats)
    after = latent_statistics(codec, frames, normalised=True)
    assert abs(after.mean) < 0.05 and abs(after.std - 1) < 0.05
    assert abs(after.mean) < 1e-6 and abs(after.std - 1) < 1e-6  # exact up to float error, in fact


def test_calibration_refuses_constant_latents():
    with pytest.raises(ValueError, match="constant latents"):
        calibrated(VAEConfig.tiny(), LatentStatistics(0.3, 0.0, (0.3,), (0.0,), 1))


def test_psnr_truth_table():
    a = np.full((2, 8, 8, 3), 100, np.uint8)
    assert psnr(a[0], a[0]) == PSNR_CAP_DB  # identical: the cap, not inf
    assert psnr(np.zeros((4, 4)), np.full((4, 4), 255.0)) == pytest.approx(0.0)
    # A constant error e has MSE e², so PSNR = 20 log10(255 / e).
    assert psnr(a[0], a[0] + 5) == pytest.approx(20 * math.log10(255 / 5))
    noisy = np.stack([a[0], a[1] + 10])
    assert psnr_per_image(a, noisy) == pytest.approx([PSNR_CAP_DB, 20 * math.log10(25.5)])
    # uint8 inputs do not wrap around: 100 - 110 is an error of 10, not 246.
    assert psnr(a[0], a[0] + 10) == pytest.approx(psnr(a[0] + 10, a[0]))
    with pytest.raises(ValueError, match="one shape"):
        psnr_per_image(a, a[:1])


def test_resume_is_exact(straight, tmp_path):
    codec, result, metrics = straight
    assert result.finished and result.step == 6 and result.resumed_from is None
    assert [r["step"] for r in result.history] == [3, 6]
    first = fit_codec(_codec(), TRAIN, VAL, RUN, out_dir=tmp_path, progress=False, stop_after=3)
    assert not first.finished and first.step == 3 and first.after is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "metrics.jsonl"]
    # A new process: other initial weights, which the checkpoint must replace.
    again = _codec(seed=7)
    second = fit_codec(again, TRAIN, VAL, RUN, out_dir=tmp_path, progress=False)
    assert second.resumed_from == 3 and second.finished
    reference = _weights(codec)
    assert all(torch.equal(v, reference[k]) for k, v in _weights(again).items())
    assert second.config == result.config  # the same calibration
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == metrics


def test_partial_and_damaged_checkpoints_are_skipped(straight, tmp_path):
    codec, _, _ = straight
    fit_codec(_codec(), TRAIN, VAL, RUN, out_dir=tmp_path, progress=False, stop_after=3)
    # A kill while writing leaves the hidden temporary folder; a cut-off copy leaves a broken one.
    (tmp_path / ".checkpoint-6.tmp").mkdir()
    (tmp_path / ".checkpoint-6.tmp" / "state.json").write_text(json.dumps({"step": 6}))
    shutil.copytree(tmp_path / "checkpoint-3", tmp_path / "checkpoint-5")
    model = tmp_path / "checkpoint-5" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    again = _codec(seed=7)
    with pytest.warns(UserWarning, match=r"checkpoint-5 \("):
        result = fit_codec(again, TRAIN, VAL, RUN, out_dir=tmp_path, progress=False)
    assert result.resumed_from == 3
    reference = _weights(codec)
    assert all(torch.equal(v, reference[k]) for k, v in _weights(again).items())


def test_resume_refuses_other_settings_and_all_damaged(tmp_path):
    fit_codec(_codec(), TRAIN, VAL, RUN, out_dir=tmp_path, progress=False, stop_after=3)
    with pytest.raises(ValueError, match="other settings"):
        fit_codec(_codec(), TRAIN, VAL, dataclasses.replace(RUN, lr=1e-3), out_dir=tmp_path)
    (tmp_path / "checkpoint-3" / "optimizer.pt").unlink()
    with pytest.raises(ValueError, match="can be resumed from: checkpoint-3"):
        fit_codec(_codec(), TRAIN, VAL, RUN, out_dir=tmp_path, progress=False)


def test_fit_calibrates_and_saves(straight, tmp_path):
    codec, result, _ = straight
    assert result.before is not None and result.after is not None
    assert abs(result.after.mean) < 0.05 and abs(result.after.std - 1) < 0.05
    assert codec.config.scaling_factor == result.config.scaling_factor != VAEConfig().scaling_factor
    assert not any(p.requires_grad for p in codec.parameters()) and not codec.training
    assert result.val_psnr == pytest.approx(reconstruction_psnr(codec, VAL))
    save_codec(codec, tmp_path)
    loaded = LatentCodec.from_pretrained(tmp_path, image_size=SIZE).eval()
    assert loaded.config == codec.config
    assert json.loads((tmp_path / "vae_config.json").read_text()) == codec.config.to_dict()
    x = torch.from_numpy(VAL).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), codec.encode(x))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "steps must be ≥ 1"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"kl_weight": float("nan")}, "kl_weight must be a finite number"),
        ({"batch_size": "8"}, "batch_size must be an integer"),
        ({"min_lr_ratio": 2.0}, "min_lr_ratio must be ≤ 1"),
        ({"checkpoint_every": 0}, "checkpoint_every must be ≥ 1"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        CodecTrainConfig(**changes)


def test_small_config_geometry():
    codec = LatentCodec.from_config(VAEConfig.small())
    assert codec.config.downsample == 4 and codec.num_tokens == 64 and codec.token_dim == 32
    assert sum(p.numel() for p in codec.parameters()) < 1_000_000
    with torch.no_grad():
        assert codec.encode(torch.zeros(1, 3, 64, 64)).shape == (1, 8, 16, 16)
