"""EmCoTConfig: presets, validation, serialisation and the halo-4.5b parameter count."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from emcot.config import EmCoTConfig
from emcot.experts.config import ExpertConfig
from emcot.model.modeling import EmCoTModel
from emcot.model.summary import parameter_breakdown


def test_tiny_preset_round_trips_through_json(tmp_path):
    cfg = EmCoTConfig.from_preset("tiny")
    cfg.save_pretrained(tmp_path)
    back = EmCoTConfig.from_pretrained(tmp_path)
    assert back.to_dict() == cfg.to_dict()
    assert isinstance(back.experts["act"], ExpertConfig)
    assert back.vae == cfg.vae and back.vision == cfg.vision and back.action == cfg.action


def test_auto_classes_know_emcot(tmp_path):
    from transformers import AutoModel

    cfg = EmCoTConfig.from_preset("tiny")
    cfg.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), EmCoTConfig)
    assert isinstance(AutoModel.from_config(cfg), EmCoTModel)


def test_tiny_preset_is_small():
    with torch.device("meta"):
        model = EmCoTModel(EmCoTConfig.from_preset("tiny"))
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 10_000_000


def test_small_preset_is_the_cpu_metaworld_size():
    cfg = EmCoTConfig.from_preset("small")
    assert (cfg.action.action_dim, cfg.action.state_dim, cfg.action.horizon) == (4, 4, 8)
    assert cfg.vision is not None and cfg.vision.max_side_px // cfg.vision.patch_size == 8
    assert cfg.vae is not None and cfg.vae.image_size == (64, 64)
    with torch.device("meta"):
        model = EmCoTModel(cfg)
    assert 5_000_000 < sum(p.numel() for p in model.parameters()) < 15_000_000


def test_halo_preset_dimensions_and_parameter_count():
    cfg = EmCoTConfig.from_preset("halo-4.5b")
    und = cfg.experts["und"]
    assert (und.hidden_size, und.num_layers, und.num_heads, und.num_kv_heads, und.intermediate_size) == (
        1536,
        28,
        12,
        2,
        8960,
    )
    assert cfg.vocab_size == 151936 and cfg.rope_theta == 1e6 and cfg.tie_word_embeddings
    assert cfg.vision.patch_size == 14 and cfg.vae.latent_channels == 16
    assert cfg.action.action_dim == 14 and cfg.action.horizon == 16
    with torch.device("meta"):
        model = EmCoTModel(cfg)
    parts = parameter_breakdown(model)
    total = sum(parts.values())
    assert 4.4e9 < total < 4.8e9
    assert parts["expert:und"] == parts["expert:gen"] == parts["expert:act"]
    assert 3.8e8 < parts["vision"] < 4.2e8


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(hidden_size=100, num_heads=3), "does not divide hidden_size"),
        (dict(num_heads=12, num_kv_heads=5), "does not divide num_heads"),
        (dict(num_layers=0), "must be positive"),
    ],
)
def test_expert_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExpertConfig(**kwargs)


def test_experts_with_different_attention_widths_are_rejected():
    experts = {
        name: ExpertConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
        for name in ("und", "gen")
    }
    experts["act"] = ExpertConfig(hidden_size=64, num_layers=2, num_heads=8, num_kv_heads=2)
    with pytest.raises(ValueError, match="share one attention"):
        EmCoTConfig(experts=experts)


def test_experts_may_differ_in_mlp_width():
    experts = {
        name: ExpertConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
        for name in ("und", "gen")
    }
    experts["act"] = ExpertConfig(
        hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=32
    )
    assert EmCoTConfig(experts=experts).experts["act"].intermediate_size == 32


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown preset"):
        EmCoTConfig.from_preset("huge")
    with pytest.raises(ValueError, match="attention_backend"):
        EmCoTConfig.from_preset("tiny", attention_backend="magic")
    with pytest.raises(ValueError, match="missing"):
        EmCoTConfig(experts={"und": ExpertConfig()})
    with pytest.raises(ValueError, match="unknown ExpertConfig keys"):
        ExpertConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="action_loss"):
        EmCoTConfig.from_preset("tiny", loss={"action_loss": "huber"})
