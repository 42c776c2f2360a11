"""Subgoal latent codec: parity with diffusers AutoencoderKL, patchify, sizes, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from emcot.tokenizers.vae import LatentCodec, VAEConfig


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Random offsets on every parameter so that a wrong normalisation or mapping shows up."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=gen))


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = VAEConfig.tiny().replace(scaling_factor=0.7, shift_factor=0.25)
    reference = AutoencoderKL(**cfg.diffusers_kwargs()).eval()
    _perturb(reference, 1)
    folder = tmp_path_factory.mktemp("vae")
    reference.save_pretrained(folder)
    return folder


def test_encode_decode_match_diffusers(vae_folder):
    codec = LatentCodec.from_pretrained(vae_folder).eval()
    reference = AutoencoderKL.from_pretrained(vae_folder).eval()
    assert codec.config.scaling_factor == 0.7 and codec.config.shift_factor == 0.25
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        latents = codec.encode(images)
        ref_z = reference.encode(images).latent_dist.mean
        decoded = codec.decode(latents)
        ref_images = reference.decode(ref_z).sample
    assert latents.shape == (2, 16, 16, 16)
    assert (latents - (ref_z - 0.25) * 0.7).abs().max().item() <= 1e-5
    assert (decoded - ref_images).abs().max().item() <= 1e-5


def test_sampling_modes(vae_folder):
    codec = LatentCodec.from_pretrained(vae_folder)
    images = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        codec.eval()
        mean = codec.encode(images)
        codec.train()
        drawn = codec.encode(images, generator=torch.Generator().manual_seed(0))
        again = codec.encode(images, generator=torch.Generator().manual_seed(0))
        forced_mean = codec.encode(images, sample=False)
    assert torch.equal(drawn, again) and not torch.allclose(drawn, mean)
    assert torch.allclose(forced_mean, mean)
    codec_no_sample = LatentCodec.from_pretrained(vae_folder, sample_posterior=False).train()
    with torch.no_grad():
        assert torch.allclose(codec_no_sample.encode(images), mean)


def test_patchify_round_trip_and_layout():
    codec = LatentCodec.from_config(VAEConfig.tiny())
    latents = torch.randn(2, 16, 6, 10)
    tokens, grid = codec.patchify(latents)
    assert grid == (3, 5) and tokens.shape == (2, 15, 64) and codec.token_dim == 64
    assert torch.equal(codec.unpatchify(tokens, grid), latents)
    # Channels-last inside a patch (BAGEL): element (i*p + j)*C + c of token (r, k) is latent[c, 2r+i, 2k+j].
    assert tokens[1, 1 * 5 + 3, (1 * 2 + 0) * 16 + 7] == latents[1, 7, 2 * 1 + 1, 2 * 3 + 0]
    with pytest.raises(ValueError, match="multiples of 2"):
        codec.patchify(torch.randn(1, 16, 5, 4))
    with pytest.raises(ValueError, match="tokens must have shape"):
        codec.unpatchify(tokens, (4, 4))


def test_grid_sizes_and_frozen():
    codec = LatentCodec.from_config(VAEConfig.tiny(image_size=(32, 48)))
    assert codec.config.downsample == 2 and codec.grid_for((32, 48)) == (8, 12) and codec.num_tokens == 96
    assert not any(p.requires_grad for p in codec.parameters())
    assert all(
        p.requires_grad for p in LatentCodec.from_config(VAEConfig.tiny(), trainable=True).parameters()
    )
    with pytest.raises(ValueError, match="multiples of 4"):
        codec.grid_for((30, 48))
    with torch.no_grad():
        latents = codec.encode(torch.zeros(1, 3, 32, 48))
    assert latents.shape == (1, 16, 16, 24) and codec.decode(latents).shape == (1, 3, 32, 48)
    with torch.device("meta"):
        flux = LatentCodec.from_config(VAEConfig.flux())
    assert flux.config.downsample == 8 and flux.num_tokens == 256 and flux.token_dim == 64
    assert 80e6 < sum(p.numel() for p in flux.parameters()) < 90e6
    assert flux.vae.quant_conv is None and flux.vae.post_quant_conv is None


def test_pre_and_postprocess():
    codec = LatentCodec.from_config(VAEConfig.tiny(image_size=(16, 24)))
    image = np.random.default_rng(0).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    pixels = codec.preprocess(image)
    assert pixels.shape == (3, 16, 24) and pixels.min() >= -1 and pixels.max() <= 1
    native = np.random.default_rng(1).integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    restored = codec.postprocess(codec.preprocess(native))
    assert isinstance(restored, Image.Image) and restored.size == (24, 16)
    assert np.array_equal(np.asarray(restored), native)
    with pytest.raises(ValueError, match="uint8"):
        codec.preprocess(image.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        codec.preprocess(image[..., 0])
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        codec.postprocess(torch.zeros(1, 3, 4, 4))


def test_encode_decode_validation():
    codec = LatentCodec.from_config(VAEConfig.tiny())
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        codec.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        codec.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="downsample"):
        codec.encode(torch.zeros(1, 3, 33, 32))
    with pytest.raises(ValueError, match="latents must have shape"):
        codec.decode(torch.zeros(1, 4, 8, 8))


def test_config_round_trip_and_validation(tmp_path):
    cfg = VAEConfig.tiny(image_size=(32, 64)).replace(sample_posterior=False, use_quant_conv=True)
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg
    flux = VAEConfig.flux()
    assert (flux.block_out_channels, flux.latent_channels, flux.scaling_factor, flux.shift_factor) == (
        (128, 256, 512, 512),
        16,
        0.3611,
        0.1159,
    )
    with pytest.raises(ValueError, match="multiples of downsample"):
        VAEConfig.flux(image_size=(200, 256))
    with pytest.raises(ValueError, match="norm_num_groups"):
        VAEConfig.tiny().replace(norm_num_groups=5)
    with pytest.raises(ValueError, match="unknown keys"):
        VAEConfig.from_dict({"latent_chanels": 4})
    with pytest.raises(ValueError, match="config.json"):
        LatentCodec.from_pretrained(tmp_path)


def test_from_pretrained_rejects_architecture_overrides(vae_folder):
    with pytest.raises(ValueError, match="cannot be overridden"):
        LatentCodec.from_pretrained(vae_folder, latent_channels=4)
    codec = LatentCodec.from_pretrained(vae_folder, image_size=(64, 32))
    assert codec.num_tokens == 128 and set(codec.state_dict()) == {
        f"vae.{k}" for k in AutoencoderKL.from_pretrained(vae_folder).state_dict()
    }


def test_small_codec_targets_are_posterior_means_in_training_mode():
    # A trained small codec leaves most channels at the prior (posterior std ≈ 1); sampling them
    # would bury the subgoal targets in noise, so training-mode encodes stay deterministic.
    codec = LatentCodec.from_config(VAEConfig.small()).train()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    first = codec.encode(images, generator=torch.Generator().manual_seed(0))
    second = codec.encode(images, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, codec.eval().encode(images))
