"""Understanding-image encoder: parity with transformers SigLIP/SigLIP2, packing, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    Siglip2VisionConfig,
    Siglip2VisionModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from emcot.tokenizers.vision import VisionEncoder, VisionEncoderConfig
from emcot.tokenizers.vision_convert import resize_position_table, vision_state_dict_from_hf
from emcot.tokenizers.vision_processing import VisionImageProcessor, patchify, unpatchify

TOL = 1e-4
HF_SHAPE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, patch_size=8
)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Random offsets on every parameter so that swapped or missing mappings change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = SiglipVisionModel(SiglipVisionConfig(image_size=32, **HF_SHAPE)).eval()
    _perturb(model, 1)
    folder = tmp_path_factory.mktemp("siglip")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def siglip2_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = Siglip2VisionModel(Siglip2VisionConfig(num_patches=16, **HF_SHAPE)).eval()
    _perturb(model, 2)
    folder = tmp_path_factory.mktemp("siglip2")
    model.save_pretrained(folder)
    return folder, model


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_siglip_v1_parity_full_and_drop_last(siglip_folder):
    folder, hf = siglip_folder
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True)
        ours_full = VisionEncoder.from_pretrained(folder).eval()
        ours_drop = VisionEncoder.from_pretrained(folder, drop_last_layer=True).eval()
        patches = patchify(pixels[0], 8)
        full = ours_full(patches, [(4, 4)])
        dropped = ours_drop(patches, [(4, 4)])
        ref_drop = hf.post_layernorm(ref.hidden_states[-2])[0]
    assert ours_full.config.position_mode == "table" and ours_full.config.max_grid == 4
    assert len(ours_drop.layers) == 2 and ours_drop.config.num_layers == 3
    assert _max_err(full, ref.last_hidden_state[0]) <= TOL
    assert _max_err(dropped, ref_drop) <= TOL
    assert _max_err(dropped, full) > 1e-2


def test_siglip_dual_model_vision_tower(tmp_path):
    torch.manual_seed(0)
    vision = SiglipVisionConfig(image_size=16, **HF_SHAPE).to_dict()
    text = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64
    )
    text.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    hf = SiglipModel(SiglipConfig(vision_config=vision, text_config=text)).eval()
    _perturb(hf, 4)
    hf.save_pretrained(tmp_path)
    pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = hf.vision_model(pixel_values=pixels).last_hidden_state[0]
        ours = VisionEncoder.from_pretrained(tmp_path).eval()(patchify(pixels[0], 8), [(2, 2)])
    assert _max_err(ours, ref) <= TOL


def test_siglip2_parity_non_square(siglip2_folder):
    folder, hf = siglip2_folder
    rows, cols, p = 3, 5, 8
    pixels = torch.randn(3, rows * p, cols * p, generator=torch.Generator().manual_seed(6))
    ours_patches = patchify(pixels, p)
    # transformers' SigLIP2 flattens each patch channels-last.
    hf_patches = ours_patches.reshape(-1, 3, p, p).permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    spatial = torch.tensor([[rows, cols]])
    with torch.no_grad():
        ref = hf(
            pixel_values=hf_patches,
            pixel_attention_mask=torch.ones(1, rows * cols, dtype=torch.long),
            spatial_shapes=spatial,
            output_hidden_states=True,
        )
        ours = VisionEncoder.from_pretrained(folder).eval()
        dropped = VisionEncoder.from_pretrained(folder, drop_last_layer=True).eval()
        out = ours(ours_patches, spatial)
        out_drop = dropped(ours_patches, spatial)
        ref_drop = hf.post_layernorm(ref.hidden_states[-2])[0]
    assert ours.config.position_mode == "interpolate"
    assert _max_err(out, ref.last_hidden_state[0]) <= TOL
    assert _max_err(out_drop, ref_drop) <= TOL


@pytest.mark.parametrize("mode", ["table", "interpolate"])
def test_packed_images_match_single_calls(mode):
    torch.manual_seed(0)
    cfg = VisionEncoderConfig.tiny().replace(position_mode=mode)
    model = VisionEncoder.from_config(cfg).eval()
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(3 * 5, cfg.patch_dim, generator=gen)
    b = torch.randn(6 * 2, cfg.patch_dim, generator=gen)
    c = torch.randn(5 * 3, cfg.patch_dim, generator=gen)
    with torch.no_grad():
        packed = model(torch.cat([a, b, c]), torch.tensor([[3, 5], [6, 2], [5, 3]]))
        alone = torch.cat([model(a, [(3, 5)]), model(b, [(6, 2)]), model(c, [(5, 3)])])
        same_size = model(torch.cat([a, c]), [(3, 5), (5, 3)])
    assert packed.shape == (42, cfg.hidden_size)
    assert _max_err(packed, alone) <= 1e-5
    assert _max_err(same_size, torch.cat([alone[:15], alone[27:]])) <= 1e-5


def test_forward_validation():
    cfg = VisionEncoderConfig.tiny()
    model = VisionEncoder.from_config(cfg)
    with pytest.raises(ValueError, match="grid_hw covers"):
        model(torch.zeros(10, cfg.patch_dim), [(3, 3)])
    with pytest.raises(ValueError, match="patches must have shape"):
        model(torch.zeros(9, cfg.patch_dim + 1), [(3, 3)])
    with pytest.raises(ValueError, match="exceed the position table"):
        model(torch.zeros(17, cfg.patch_dim), [(1, 17)])
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(0, cfg.patch_dim), [])


def test_converter_overrides_and_errors(siglip_folder):
    _, hf = siglip_folder
    hf_state = hf.state_dict()
    hf_config = hf.config.to_dict()
    state, cfg = vision_state_dict_from_hf(hf_state, hf_config, max_grid=6, min_side_px=16)
    assert cfg.max_grid == 6 and cfg.max_side_px == 48 and state["pos_embed.weight"].shape == (36, 32)
    VisionEncoder(cfg).load_state_dict(state)
    broken = {k: v for k, v in hf_state.items() if "layers.1.mlp.fc2" not in k}
    with pytest.raises(ValueError, match="missing"):
        vision_state_dict_from_hf(broken, hf_config)
    with pytest.raises(ValueError, match="model_type"):
        vision_state_dict_from_hf(hf_state, {"model_type": "clip_vision_model"})
    with pytest.raises(ValueError, match="Unknown VisionEncoderConfig overrides"):
        vision_state_dict_from_hf(hf_state, hf_config, max_gird=6)


def test_resize_position_table_identity_and_shape():
    table = torch.randn(16, 8)
    assert resize_position_table(table, 4) is table
    assert resize_position_table(table, 7).shape == (49, 8)


def test_from_pretrained_folder_errors(tmp_path, siglip_folder):
    with pytest.raises(ValueError, match="config.json"):
        VisionEncoder.from_pretrained(tmp_path)
    folder, hf = siglip_folder
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ValueError, match="safetensors"):
        VisionEncoder.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"image_mean": [0.1, 0.2, 0.3]}')
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
    loaded = VisionEncoder.from_pretrained(tmp_path)
    assert loaded.config.image_mean == (0.1, 0.2, 0.3) and loaded.config.image_std == (0.5, 0.5, 0.5)


def test_config_round_trip_presets_and_validation():
    cfg = VisionEncoderConfig.tiny().replace(position_mode="interpolate", image_mean=[0.1, 0.2, 0.3])
    assert VisionEncoderConfig.from_dict(cfg.to_dict()) == cfg
    big = VisionEncoderConfig.siglip_so400m_14()
    assert (big.hidden_size, big.num_layers, big.effective_layers, big.max_grid, big.patch_dim) == (
        1152,
        27,
        26,
        70,
        588,
    )
    with torch.device("meta"):
        meta = VisionEncoder(big)
    assert meta.pos_embed.weight.shape == (4900, 1152) and len(meta.layers) == 26
    with pytest.raises(ValueError, match="must divide hidden_size"):
        VisionEncoderConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="position_mode"):
        VisionEncoderConfig(position_mode="rope")
    with pytest.raises(ValueError, match="unknown keys"):
        VisionEncoderConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="min_side_px"):
        VisionEncoderConfig(min_side_px=4)


def test_processor_sizes_and_normalisation():
    cfg = VisionEncoderConfig.tiny().replace(max_side_px=64, min_side_px=16, max_grid=6)
    proc = VisionImageProcessor(cfg)
    # The 6-cell position table (48 px) is a tighter long-side limit than max_side_px=64.
    assert proc.target_size(100, 200) == (24, 48)
    assert proc.target_size(40, 40) == (40, 40)
    assert proc.target_size(4, 8) == (16, 32)  # upscaled so the short side reaches 16 px
    assert proc.target_size(2, 200) == (8, 48)  # long-side cap wins over the short-side minimum
    white = np.full((40, 24, 3), 255, dtype=np.uint8)
    patches, grid = proc(white)
    assert grid == (5, 3) and patches.shape == (15, cfg.patch_dim)
    assert torch.allclose(patches, torch.ones_like(patches))
    interp = VisionImageProcessor(cfg.replace(position_mode="interpolate"))
    assert interp.target_size(100, 200) == (32, 64)


def test_processor_patch_order_and_cameras():
    cfg = VisionEncoderConfig.tiny().replace(max_side_px=32, min_side_px=8)
    proc = VisionImageProcessor(cfg)
    image = np.random.default_rng(0).integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    patches, grid = proc(image)
    pixels = unpatchify(patches, grid, cfg.patch_size)
    expected = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0
    assert torch.allclose(pixels, expected, atol=1e-6)
    # Patch 1 is the second patch of the first row; element c*p*p + i*p + j is channel c, row i, col j.
    assert patches[1, 2 * 64 + 3 * 8 + 5].item() == pytest.approx(expected[2, 3, 8 + 5].item())
    small = np.zeros((8, 8, 3), dtype=np.uint8)
    packed, grids = proc.cameras({"wrist": small, "head": image}, order=["head", "wrist"])
    assert grids == [(2, 3), (1, 1)] and packed.shape == (7, cfg.patch_dim)
    with pytest.raises(ValueError, match="Missing camera"):
        proc.cameras({"head": image}, order=["head", "left"])


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((8, 8), dtype=np.uint8), r"\(H, W, 3\)"),
        (np.zeros((8, 8, 4), dtype=np.uint8), r"\(H, W, 3\)"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), "numpy array"),
    ],
)
def test_processor_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        VisionImageProcessor(VisionEncoderConfig.tiny())(bad)
