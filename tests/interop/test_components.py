"""from_components with real folder formats: Qwen2 + SigLIP/SigLIP2 vision + diffusers AutoencoderKL."""

from __future__ import annotations

import pytest
import torch

from emcot.model.modeling import EmCoTModel
from emcot.tokenizers.vision_processing import patchify


@pytest.fixture
def vision_folder(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(1)
    cfg = SiglipVisionConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    model = SiglipVisionModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "siglip")
    return tmp_path / "siglip", model


@pytest.fixture
def vae_folder(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path / "vae", vae


def test_from_components_loads_all_three_parts(make_llm, vision_folder, vae_folder):
    llm_path, llm = make_llm("qwen2")
    vit_path, vit = vision_folder
    vae_path, vae = vae_folder
    model = EmCoTModel.from_components(llm=llm_path, vision=vit_path, vae=vae_path, preset="tiny").eval()
    assert model.config.vision.hidden_size == 48 and model.config.vae.latent_channels == 16
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ours = model.vision(patchify(pixels[0], 8), [(4, 4)])
        theirs = vit(pixel_values=pixels).last_hidden_state[0]
        assert (ours - theirs).abs().max() <= 1e-4
        latents = model.latent_codec.encode(pixels, sample=False)
        ref = (vae.encode(pixels).latent_dist.mode() - 0.1159) * 0.3611
        assert (latents - ref).abs().max() <= 1e-5
        decoded = model.latent_codec.decode(latents)
        assert (decoded - vae.decode(ref / 0.3611 + 0.1159).sample).abs().max() <= 1e-5
        ids = torch.randint(0, 320, (1, 7))
        assert (model(input_ids=ids).logits - llm(ids).logits).abs().max() <= 1e-4


def test_from_components_vision_overrides_and_fresh_parts(make_llm, vision_folder):
    llm_path, _ = make_llm("qwen2")
    vit_path, _ = vision_folder
    model = EmCoTModel.from_components(
        llm=llm_path, vision=vit_path, preset="tiny", vision_overrides={"drop_last_layer": True}
    )
    assert model.config.vision.drop_last_layer
    assert len(model.vision.layers) == 2
    assert model.config.vae is not None  # not given → the preset's fresh VAE


def test_from_components_errors(make_llm, tmp_path):
    llm_path, _ = make_llm("qwen2")
    with pytest.raises(ValueError, match="unknown preset"):
        EmCoTModel.from_components(llm=llm_path, preset="giant")
    with pytest.raises(ValueError, match="unknown experts"):
        EmCoTModel.from_components(llm=llm_path, preset="tiny", expert_overrides={"vision": {}})
    with pytest.raises(ValueError, match="config.json"):
        EmCoTModel.from_components(llm=tmp_path, preset="tiny")
