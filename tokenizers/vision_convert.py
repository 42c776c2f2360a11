"""Convert transformers SigLIP / SigLIP2 vision weights into :class:`VisionEncoder` weights.

Handles ``SiglipVisionModel``, ``SiglipModel`` (its vision tower), ``Siglip2VisionModel`` and
``Siglip2Model`` state dicts, with or without the ``vision_model.`` prefix (transformers 5 saves
stand-alone vision models without it; hub checkpoints from transformers 4 carry it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor
from transformers import Siglip2VisionConfig, SiglipVisionConfig

from emcot.io_utils import load_safetensors_folder, read_json
from emcot.tokenizers.vision_config import VisionEncoderConfig

_PATCH_KEY = "embeddings.patch_embedding.weight"
SIGLIP_LAYER_RENAMES = {
    # transformers SigLIP layer module names → ours (shared with the HALO converter)
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.out_proj": "attn.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VISION_TYPES = {"siglip_vision_model": "siglip", "siglip2_vision_model": "siglip2"}
_DUAL_TYPES = {"siglip": "siglip", "siglip2": "siglip2"}


def _vision_config_dict(hf_config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Return (family, vision config with library defaults filled in) from a config.json dict."""
    model_type = hf_config.get("model_type")
    if model_type in _DUAL_TYPES:
        family, raw = _DUAL_TYPES[model_type], dict(hf_config.get("vision_config") or {})
    elif model_type in _VISION_TYPES:
        family, raw = _VISION_TYPES[model_type], dict(hf_config)
    else:
        raise ValueError(
            f"Unsupported vision checkpoint model_type {model_type!r}; expected one of "
            f"{sorted(_VISION_TYPES) + sorted(_DUAL_TYPES)} (a transformers SigLIP or SigLIP2 folder)."
        )
    # Hub configs omit fields equal to the library defaults; let transformers fill them in.
    config_cls = SiglipVisionConfig if family == "siglip" else Siglip2VisionConfig
    filled = config_cls.from_dict(raw).to_dict()
    return family, filled


def _find_prefix(hf_state_dict: dict[str, Tensor]) -> str:
    """Prefix before ``embeddings.patch_embedding.weight`` of the (single) vision tower."""
    prefixes = [
        k[: -len(_PATCH_KEY)] for k in hf_state_dict if k.endswith(_PATCH_KEY) and "text_model" not in k
    ]
    if len(prefixes) != 1:
        raise ValueError(
            f"Expected exactly one SigLIP vision tower (a key ending in {_PATCH_KEY!r}), found {len(prefixes)}; "
            "pass the state dict of a SiglipVisionModel/SiglipModel/Siglip2VisionModel/Siglip2Model."
        )
    return prefixes[0]


def resize_position_table(table: Tensor, new_side: int) -> Tensor:
    """Bicubically resize a square position table [g*g, D] to [new_side*new_side, D] (fp32 math)."""
    side = math.isqrt(table.shape[0])
    if side == new_side:
        return table
    square = table.float().reshape(side, side, -1).permute(2, 0, 1).unsqueeze(0)
    resized = F.interpolate(square, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return resized[0].permute(1, 2, 0).reshape(new_side * new_side, -1).to(table.dtype)


def _encoder_config(
    hf_config: dict[str, Any], overrides: dict[str, Any]
) -> tuple[VisionEncoderConfig, int, int]:
    """Our encoder config for a transformers vision config.json dict, with the checkpoint's own patch
    size and position grid (overrides of either do not change how its weights read)."""
    family, vc = _vision_config_dict(hf_config)
    patch = int(vc["patch_size"])
    if family == "siglip":
        native_grid, mode = int(vc["image_size"]) // patch, "table"
    else:
        native_grid, mode = math.isqrt(int(vc["num_patches"])), "interpolate"
        if native_grid * native_grid != int(vc["num_patches"]):
            raise ValueError(
                f"SigLIP2 num_patches={vc['num_patches']} is not a square; cannot build a table."
            )
    if int(vc.get("num_channels", 3)) != 3:
        raise ValueError(f"Only RGB vision checkpoints are supported, got num_channels={vc['num_channels']}.")
    inferred = dict(
        hidden_size=int(vc["hidden_size"]),
        intermediate_size=int(vc["intermediate_size"]),
        num_layers=int(vc["num_hidden_layers"]),
        num_heads=int(vc["num_attention_heads"]),
        patch_size=patch,
        max_grid=native_grid,
        layer_norm_eps=float(vc["layer_norm_eps"]),
        hidden_act=str(vc["hidden_act"]),
        drop_last_layer=False,
        position_mode=mode,
        max_side_px=native_grid * patch,
        min_side_px=patch,
    )
    if "max_grid" in overrides and "max_side_px" not in overrides:
        inferred["max_side_px"] = int(overrides["max_grid"]) * patch
    unknown = sorted(set(overrides) - set(VisionEncoderConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"Unknown VisionEncoderConfig overrides {unknown}.")
    config = VisionEncoderConfig(**{**inferred, **overrides})
    if config.max_grid != native_grid and config.position_mode != "table":
        raise ValueError(
            "max_grid can only be overridden in position_mode='table'; 'interpolate' resizes the "
            f"checkpoint's {native_grid}x{native_grid} table per image already."
        )
    return config, patch, native_grid


def _tower_weights(
    src: dict[str, Tensor], config: VisionEncoderConfig, *, patch: int, native_grid: int
) -> dict[str, Tensor]:
    """Our weights from one vision tower's transformers weights (prefix stripped); KeyError if one is missing.

    ``patch`` and ``native_grid`` are the checkpoint's own patch size and position grid.
    """
    out: dict[str, Tensor] = {}
    weight = src["embeddings.patch_embedding.weight"]
    if weight.ndim == 4:
        # Conv2d [D, 3, p, p] flattens channels-first, which is our patch layout already.
        out["patch_embed.weight"] = weight.reshape(weight.shape[0], -1)
    else:
        # SigLIP2 Linear expects channels-last patches (p, p, 3); reorder its columns to (3, p, p).
        out["patch_embed.weight"] = (
            weight.reshape(weight.shape[0], patch, patch, 3).permute(0, 3, 1, 2).reshape(weight.shape[0], -1)
        )
    out["patch_embed.bias"] = src["embeddings.patch_embedding.bias"]
    table = src["embeddings.position_embedding.weight"]
    if table.shape[0] != native_grid * native_grid:
        raise ValueError(
            f"Position table has {table.shape[0]} rows but the config implies {native_grid}x{native_grid}; "
            "the checkpoint and its config.json do not match."
        )
    out["pos_embed.weight"] = resize_position_table(table, config.max_grid)
    for i in range(config.effective_layers):
        for theirs, ours in SIGLIP_LAYER_RENAMES.items():
            for param in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{param}"] = src[f"encoder.layers.{i}.{theirs}.{param}"]
    out["post_norm.weight"] = src["post_layernorm.weight"]
    out["post_norm.bias"] = src["post_layernorm.bias"]
    return out


def vision_state_dict_from_hf(
    hf_state_dict: dict[str, Tensor], hf_config: dict[str, Any], **overrides: Any
) -> tuple[dict[str, Tensor], VisionEncoderConfig]:
    """Map a transformers SigLIP/SigLIP2 state dict + config.json dict to ours.

    SigLIP v1 gives ``position_mode="table"`` with ``max_grid = image_size // patch_size``; SigLIP2
    gives ``"interpolate"`` with ``max_grid = sqrt(num_patches)``. ``overrides`` replace any
    inferred :class:`VisionEncoderConfig` field; a different ``max_grid`` in "table" mode resizes
    the learned table. Pooling heads and text towers are ignored.
    """
    config, patch, native_grid = _encoder_config(hf_config, overrides)
    prefix = _find_prefix(hf_state_dict)
    src = {k[len(prefix) :]: v for k, v in hf_state_dict.items() if k.startswith(prefix)}
    try:
        out = _tower_weights(src, config, patch=patch, native_grid=native_grid)
    except KeyError as err:
        raise ValueError(
            f"SigLIP checkpoint is missing {prefix}{err.args[0]}; the file is corrupt or not a SigLIP vision tower."
        ) from None
    return out, config


def load_hf_vision_folder(
    folder: str | Path, **overrides: Any
) -> tuple[dict[str, Tensor], VisionEncoderConfig]:
    """Read a transformers SigLIP/SigLIP2 folder → (our state dict, config).

    ``image_mean``/``image_std`` come from ``preprocessor_config.json`` when present.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(
            f"{folder} has no config.json; pass a transformers SigLIP/SigLIP2 checkpoint folder."
        )
    hf_config = read_json(config_path, "vision config")
    processor_path = folder / "preprocessor_config.json"
    if processor_path.is_file():
        processor = read_json(processor_path, "image processor config")
        for key in ("image_mean", "image_std"):
            if key in processor and key not in overrides:
                overrides[key] = tuple(processor[key])
    return vision_state_dict_from_hf(load_safetensors_folder(folder), hf_config, **overrides)
