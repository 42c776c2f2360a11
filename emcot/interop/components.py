"""Reading public component checkpoints (Hugging Face Qwen2/Qwen2.5/Qwen3 folders) into our layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from emcot.experts.config import ExpertConfig
from emcot.io_utils import load_safetensors_folder, read_json

LLM_MODEL_TYPES = ("qwen2", "qwen3")


def llm_expert_config(hf_config: dict, qk_norm: bool | None = None) -> tuple[ExpertConfig, dict]:
    """Expert geometry and shared settings (vocab, tying, RoPE θ) from a Qwen2/Qwen3 ``config.json``.

    ``qk_norm=True`` on a Qwen2 checkpoint adds QK-norm initialised to ones (identity up to
    scale), as BAGEL/HALO do when they start from Qwen2.5.
    """
    model_type = hf_config.get("model_type")
    if model_type not in LLM_MODEL_TYPES:
        raise ValueError(f"llm checkpoint has model_type '{model_type}'; supported: {LLM_MODEL_TYPES}")
    hidden, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    is_qwen3 = model_type == "qwen3"
    bias = bool(hf_config.get("attention_bias", False)) if is_qwen3 else True
    expert = ExpertConfig(
        hidden_size=hidden,
        num_layers=hf_config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf_config.get("num_key_value_heads") or heads,
        head_dim=hf_config.get("head_dim") or hidden // heads,
        intermediate_size=hf_config["intermediate_size"],
        rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
        qkv_bias=bias,
        o_bias=bias if is_qwen3 else False,
        qk_norm=is_qwen3 if qk_norm is None else qk_norm,
    )
    if hf_config.get("use_sliding_window"):
        raise ValueError(
            "sliding-window attention checkpoints are not supported; set use_sliding_window=false"
        )
    rope = hf_config.get("rope_parameters") or {}
    shared = dict(
        vocab_size=hf_config["vocab_size"],
        tie_word_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        rope_theta=float(rope.get("rope_theta", hf_config.get("rope_theta", 10000.0))),
    )
    if rope.get("rope_type", "default") != "default" or hf_config.get("rope_scaling"):
        raise ValueError("only default RoPE is supported; this checkpoint uses RoPE scaling")
    return expert, shared


def llm_state_dict_to_ours(
    hf: dict[str, torch.Tensor], num_layers: int, tie: bool
) -> dict[str, torch.Tensor]:
    """Rename a Qwen2/Qwen3 causal-LM state dict into the understanding expert of our model."""
    out = {"understanding.embed_tokens.weight": hf["model.embed_tokens.weight"]}
    if not tie:
        if "lm_head.weight" not in hf:
            raise ValueError("checkpoint has untied embeddings but no lm_head.weight")
        out["understanding.lm_head.weight"] = hf["lm_head.weight"]
    out["backbone.norms.und.weight"] = hf["model.norm.weight"]
    for i in range(num_layers):
        src, dst = f"model.layers.{i}.", f"backbone.layers.{i}.experts.und."
        for key, value in hf.items():
            if not key.startswith(src):
                continue
            name = key[len(src) :].replace("self_attn.", "")
            out[dst + name] = value
    return out


@dataclass(frozen=True)
class ComponentSources:
    """What :meth:`EmCoTModel.from_components` builds a model from (see there for each field)."""

    llm: Path
    vision: Path | None = None
    vae: Path | None = None
    preset: str = "halo-4.5b"
    qk_norm: bool | None = None
    expert_overrides: dict[str, dict] = field(default_factory=dict)
    vision_overrides: dict = field(default_factory=dict)


class _Parts(NamedTuple):
    config: Any
    num_layers: int
    llm_tied: bool  # whether the LLM checkpoint ties its embeddings (overrides may untie the model)
    vision_encoder: Any
    codec: Any


def _component_config(sources: ComponentSources, overrides: dict) -> _Parts:
    """The model config: the preset, the LLM's geometry per expert, the encoders' own configs."""
    from emcot.config import EmCoTConfig
    from emcot.experts.config import EXPERT_NAMES
    from emcot.presets import PRESETS

    if sources.preset not in PRESETS:
        raise ValueError(f"unknown preset '{sources.preset}'; available presets: {sorted(PRESETS)}")
    expert, shared = llm_expert_config(read_json(sources.llm / "config.json"), sources.qk_norm)
    unknown = sorted(set(sources.expert_overrides) - set(EXPERT_NAMES))
    if unknown:
        raise ValueError(
            f"expert_overrides names unknown experts {unknown}; experts are {list(EXPERT_NAMES)}"
        )
    experts = {
        name: ExpertConfig.from_dict({**expert.to_dict(), **sources.expert_overrides.get(name, {})})
        for name in EXPERT_NAMES
    }
    kwargs = PRESETS[sources.preset]()
    kwargs.update(experts=experts, **shared)
    vision_encoder = codec = None
    if sources.vision is not None:
        from emcot.tokenizers.vision import VisionEncoder

        vision_encoder = VisionEncoder.from_pretrained(sources.vision, **sources.vision_overrides)
        kwargs["vision"] = vision_encoder.config
    if sources.vae is not None:
        from emcot.tokenizers.vae import LatentCodec

        codec = LatentCodec.from_pretrained(sources.vae)
        kwargs["vae"] = codec.config
    kwargs.update(overrides)
    return _Parts(
        EmCoTConfig(**kwargs), expert.num_layers, shared["tie_word_embeddings"], vision_encoder, codec
    )


def build_from_components(cls, sources: ComponentSources, overrides: dict):
    """Implementation of :meth:`EmCoTModel.from_components` (see there); ``cls`` is the model class."""
    from emcot.experts.block import copy_expert_weights

    parts = _component_config(sources, overrides)
    model = cls(parts.config)
    ours = llm_state_dict_to_ours(load_safetensors_folder(sources.llm), parts.num_layers, parts.llm_tied)
    target = model.state_dict()
    unexpected = sorted(k for k in ours if k not in target)
    if unexpected:
        raise ValueError(f"llm checkpoint has weights with no place in the model: {unexpected[:10]}")
    for key, value in ours.items():
        if value.shape != target[key].shape:
            raise ValueError(
                f"llm weight '{key}' has shape {tuple(value.shape)}, model expects {tuple(target[key].shape)}"
            )
    model.load_state_dict(ours, strict=False)
    for layer in model.backbone.layers:
        for name in ("gen", "act"):
            copy_expert_weights(layer.experts["und"], layer.experts[name])
    with torch.no_grad():
        for name in ("gen", "act"):
            model.backbone.norms[name].weight.copy_(model.backbone.norms["und"].weight)
    if parts.vision_encoder is not None:
        model.vision.load_state_dict(parts.vision_encoder.state_dict())
    if parts.codec is not None:
        model.latent_codec.load_state_dict(parts.codec.state_dict())
    return model
