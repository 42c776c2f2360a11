"""An official HALO (BAGEL-layout MoT) state dict → emcot weights and config (the folder side is
:mod:`emcot.interop.halo`).

Key map (``E`` = ``""`` → ``und``, ``_moe_gen`` → ``gen``, ``_moe_act`` → ``act``):

=================================================================  ===============================================
HALO key                                                           emcot key
=================================================================  ===============================================
``language_model.model.embed_tokens.weight``                       ``understanding.embed_tokens.weight``
``language_model.lm_head.weight``                                  ``understanding.lm_head.weight`` (untied)
``language_model.model.norm{E}.weight``                            ``backbone.norms.{e}.weight``
``language_model.model.layers.{i}.self_attn.{q,k,v,o}_proj{E}.*``  ``backbone.layers.{i}.experts.{e}.{q,k,v,o}_proj.*``
``language_model.model.layers.{i}.self_attn.{q,k}_norm{E}.*``      ``backbone.layers.{i}.experts.{e}.{q,k}_norm.*``
``language_model.model.layers.{i}.mlp{E}.{gate,up,down}_proj.*``   ``backbone.layers.{i}.experts.{e}.mlp.*``
``language_model.model.layers.{i}.{input,post_attention}_layernorm{E}.*``  ``….experts.{e}.{same}.*``
``connector.fc{1,2}.*``                                            ``understanding.connector.fc{1,2}.*``
``vae2llm.*`` / ``llm2vae.*``                                      ``subgoal.latent_in.*`` / ``subgoal.latent_out.*``
``time_embedder.mlp.{0,2}.*``                                      ``subgoal.time_embedder.mlp.{0,2}.*``
``input_linear_layer.*`` / ``output_linear_layer.*``               ``action.action_in.*`` / ``action.action_out.*``
``action_time_embedder.mlp.{0,2}.*``                               ``action.time_embedder.mlp.{0,2}.*``
``vit_model.vision_model.embeddings.patch_embedding.*``            ``vision.patch_embed.*`` (columns reordered)
``vit_model.vision_model.embeddings.position_embedding.weight``    ``vision.pos_embed.weight`` (same h·G+w ids)
``vit_model.vision_model.encoder.layers.{j}.layer_norm{1,2}.*``    ``vision.layers.{j}.norm{1,2}.*``
``vit_model.vision_model.encoder.layers.{j}.self_attn.{q,k,v,out}_proj.*``  ``vision.layers.{j}.attn.{q,k,v,o}_proj.*``
``vit_model.vision_model.encoder.layers.{j}.mlp.fc{1,2}.*``        ``vision.layers.{j}.mlp.fc{1,2}.*``
``vit_model.vision_model.post_layernorm.*``                        ``vision.post_norm.*``
``vit_pos_embed.pos_embed``, ``latent_pos_embed.pos_embed``        dropped (recomputed; checked equal)
``ae.safetensors`` (BFL names)                                     ``latent_codec.vae.*`` (see interop.flux_vae)
=================================================================  ===============================================

What has no counterpart, and what we do instead:

- HALO hard-codes ``ACTION_DIM = 14``; we read ``action_dim`` from ``input_linear_layer`` and
  the chunk length (RoboTwin: 16) is a setting.
- HALO has no state input; the converted policy has ``state_dim=0`` (no state token), so the
  action expert sees exactly HALO's inputs. RoboTwin actions are absolute joint targets without
  normalisation: ``norm_mode="none"`` with identity statistics for the given robot.
- The fixed 2-D sin-cos tables (bf16 in the file) are recomputed on the fly in fp32; they are
  checked against the file up to bf16 rounding and not stored. The 1-D action-step embedding
  and both time embedders already follow HALO's conventions.
- HALO divides generated latents by an unexplained 1.4 before decoding/re-feeding; we do not.
- HALO's ViT patch embedding is a Linear on channels-last patches; ours reads channels-first
  patches, so its columns are permuted. The ViT keeps HALO's depth (last SigLIP layer dropped).
- Vocabulary rows the emcot markers need beyond the file's rows (``<|think_start|>``…) are
  appended to both ``embed_tokens`` and ``lm_head`` as the mean of the existing rows.
- Fine-tuned checkpoints trained with ``--visual_gen False`` lack the generation branch; HALO
  loads its pretrained file first and the fine-tune on top, which ``base=`` reproduces.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor

from emcot.experts.config import ExpertConfig
from emcot.experts.embeddings import grid_sincos
from emcot.interop.flux_vae import flux_ae_to_diffusers, flux_vae_config
from emcot.model.flow import FlowSamplerConfig
from emcot.tokenizers.actions import ActionSpaceConfig
from emcot.tokenizers.vision_config import VisionEncoderConfig
from emcot.tokenizers.vision_convert import SIGLIP_LAYER_RENAMES

WEIGHT_FILES = ("ema.safetensors", "model.safetensors")
HALO_VIT_MIN_SIDE_PX = 378
ROBOTWIN_HORIZON = 16

_SUFFIX_TO_EXPERT = {"": "und", "_moe_gen": "gen", "_moe_act": "act"}
_LAYER_KEY = re.compile(
    r"^language_model\.model\.layers\.(\d+)\.(?:self_attn\.)?"
    r"(q_proj|k_proj|v_proj|o_proj|q_norm|k_norm|mlp|input_layernorm|post_attention_layernorm)"
    r"(_moe_gen|_moe_act)?\.(.+)$"
)
_FINAL_NORM = re.compile(r"^language_model\.model\.norm(_moe_gen|_moe_act)?\.weight$")
_VIT_LAYER = re.compile(r"^vit_model\.vision_model\.encoder\.layers\.(\d+)\.(.+)$")
_PREFIX_RENAMES = {
    "language_model.model.embed_tokens.": "understanding.embed_tokens.",
    "language_model.lm_head.": "understanding.lm_head.",
    "connector.": "understanding.connector.",
    "vae2llm.": "subgoal.latent_in.",
    "llm2vae.": "subgoal.latent_out.",
    "time_embedder.": "subgoal.time_embedder.",
    "input_linear_layer.": "action.action_in.",
    "output_linear_layer.": "action.action_out.",
    "action_time_embedder.": "action.time_embedder.",
    "vit_model.vision_model.embeddings.patch_embedding.": "vision.patch_embed.",
    "vit_model.vision_model.embeddings.position_embedding.": "vision.pos_embed.",
    "vit_model.vision_model.post_layernorm.": "vision.post_norm.",
}
_FIXED_TABLES = ("vit_pos_embed.pos_embed", "latent_pos_embed.pos_embed")


def _our_key(key: str) -> str | None:
    """emcot name of a HALO key (before any tensor transform), or None when it has no rule."""
    m = _LAYER_KEY.match(key)
    if m:
        layer, module, suffix, rest = m[1], m[2], m[3] or "", m[4]
        return f"backbone.layers.{layer}.experts.{_SUFFIX_TO_EXPERT[suffix]}.{module}.{rest}"
    m = _FINAL_NORM.match(key)
    if m:
        return f"backbone.norms.{_SUFFIX_TO_EXPERT[m[1] or '']}.weight"
    m = _VIT_LAYER.match(key)
    if m:
        module, _, param = m[2].rpartition(".")
        if module in SIGLIP_LAYER_RENAMES:
            return f"vision.layers.{m[1]}.{SIGLIP_LAYER_RENAMES[module]}.{param}"
        return None
    # Longest prefix first, so "action_time_embedder." is not taken for "time_embedder.".
    for prefix in sorted(_PREFIX_RENAMES, key=len, reverse=True):
        if key.startswith(prefix):
            return _PREFIX_RENAMES[prefix] + key[len(prefix) :]
    return None


def _need(sd: dict[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise ValueError(f"the HALO checkpoint has no '{key}'; it is incomplete or not a HALO/BAGEL MoT")
    return sd[key]


def _rope_theta(llm_config: dict) -> float:
    if (
        llm_config.get("rope_scaling")
        or (llm_config.get("rope_parameters") or {}).get("rope_type", "default") != "default"
    ):
        raise ValueError("llm_config.json uses RoPE scaling, which HALO never does; pass the Qwen2.5 config")
    params = llm_config.get("rope_parameters") or {}
    return float(params.get("rope_theta", llm_config.get("rope_theta", 10000.0)))


def _expert_configs(sd: dict[str, Tensor], llm_config: dict) -> dict[str, ExpertConfig]:
    layers = {int(m[1]) for m in map(_LAYER_KEY.match, sd) if m}
    num_layers = max(layers) + 1 if layers else 0
    prefix = "language_model.model.layers.0."
    hidden = int(_need(sd, "language_model.model.embed_tokens.weight").shape[1])
    q_rows = int(_need(sd, prefix + "self_attn.q_proj.weight").shape[0])
    k_rows = int(_need(sd, prefix + "self_attn.k_proj.weight").shape[0])
    heads = int(llm_config.get("num_attention_heads", 0))
    if heads <= 0 or q_rows % heads:
        raise ValueError(
            f"llm_config.json num_attention_heads={heads} does not divide the q_proj rows ({q_rows}); "
            "pass the llm_config.json of the checkpoint's language model"
        )
    head_dim = q_rows // heads
    expected = dict(hidden_size=hidden, num_hidden_layers=num_layers, num_key_value_heads=k_rows // head_dim)
    for field, value in expected.items():
        if field in llm_config and int(llm_config[field]) != value:
            raise ValueError(
                f"llm_config.json says {field}={llm_config[field]} but the weights have {value}; "
                "the config belongs to a different model"
            )
    experts = {}
    for suffix, name in _SUFFIX_TO_EXPERT.items():
        attn = f"{prefix}self_attn."
        q_norm = sd.get(f"{attn}q_norm{suffix}.weight")
        if q_norm is not None and int(q_norm.shape[0]) != head_dim:
            raise ValueError(
                f"q_norm{suffix} has width {q_norm.shape[0]} but q_proj rows / num_attention_heads = "
                f"{head_dim}; llm_config.json does not match the weights"
            )
        experts[name] = ExpertConfig(
            hidden_size=hidden,
            num_layers=num_layers,
            num_heads=heads,
            num_kv_heads=k_rows // head_dim,
            head_dim=head_dim,
            intermediate_size=int(_need(sd, f"{prefix}mlp{suffix}.gate_proj.weight").shape[0]),
            rms_norm_eps=float(llm_config.get("rms_norm_eps", 1e-6)),
            qkv_bias=f"{attn}q_proj{suffix}.bias" in sd,
            o_bias=f"{attn}o_proj{suffix}.bias" in sd,
            qk_norm=q_norm is not None,
        )
    return experts


def _vision_config(sd: dict[str, Tensor], vit_config: dict | None) -> VisionEncoderConfig:
    from transformers import SiglipVisionConfig

    patch_weight = _need(sd, "vit_model.vision_model.embeddings.patch_embedding.weight")
    table = _need(sd, "vit_model.vision_model.embeddings.position_embedding.weight")
    hidden = int(patch_weight.shape[0])
    layers = {int(m[1]) for m in map(_VIT_LAYER.match, sd) if m}
    depth = max(layers) + 1 if layers else 0
    grid = math.isqrt(int(table.shape[0]))
    if grid * grid != table.shape[0] or depth == 0:
        raise ValueError("the ViT has no encoder layers or a non-square position table; not a SigLIP-NaViT")
    if vit_config is None:
        preset = VisionEncoderConfig.siglip_so400m_14()
        if hidden != preset.hidden_size:
            raise ValueError(
                f"no vit_config.json and the ViT width {hidden} is not SigLIP so400m's; "
                "put the SigLIP config.json next to the weights as vit_config.json"
            )
        vc: dict[str, Any] = dict(
            hidden_size=hidden,
            intermediate_size=preset.intermediate_size,
            num_attention_heads=preset.num_heads,
            patch_size=preset.patch_size,
            layer_norm_eps=preset.layer_norm_eps,
            hidden_act=preset.hidden_act,
            num_hidden_layers=depth + 1,
        )
    else:
        raw = vit_config.get("vision_config", vit_config)
        vc = SiglipVisionConfig.from_dict({k: v for k, v in raw.items() if k != "model_type"}).to_dict()
    patch = int(vc["patch_size"])
    if int(vc["hidden_size"]) != hidden or patch_weight[0].numel() != 3 * patch * patch:
        raise ValueError(
            f"vit_config.json (hidden {vc['hidden_size']}, patch {patch}) does not match the patch "
            f"embedding {tuple(patch_weight.shape)}; pass the vit_config.json of this checkpoint"
        )
    # HALO builds the ViT with one layer fewer than its config; the file holds only the kept ones.
    drop = int(vc["num_hidden_layers"]) == depth + 1
    max_side = grid * patch
    return VisionEncoderConfig(
        hidden_size=hidden,
        intermediate_size=int(vc["intermediate_size"]),
        num_layers=depth + 1 if drop else depth,
        num_heads=int(vc["num_attention_heads"]),
        patch_size=patch,
        max_grid=grid,
        layer_norm_eps=float(vc["layer_norm_eps"]),
        hidden_act=str(vc["hidden_act"]),
        drop_last_layer=drop,
        position_mode="table",
        max_side_px=max_side,
        min_side_px=min(HALO_VIT_MIN_SIDE_PX, max_side),
    )


def _check_fixed_table(name: str, table: Tensor) -> None:
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0]:
        raise ValueError(f"'{name}' has {table.shape[0]} rows, not a square grid; the file is corrupt")
    ours = grid_sincos(table.shape[1], side, side)
    error = (table.float() - ours).abs().max().item()
    if error > 1e-2:
        raise ValueError(
            f"'{name}' differs from emcot's 2-D sin-cos embedding by {error:.3g} (more than bf16 "
            "rounding); the checkpoint uses another position convention and cannot be converted"
        )


def _reorder_patch_weight(weight: Tensor, patch: int) -> Tensor:
    """HALO Linear columns (row, col, channel) or a Conv2d weight → our channels-first columns."""
    if weight.ndim == 4:
        return weight.reshape(weight.shape[0], -1)
    return weight.reshape(weight.shape[0], patch, patch, 3).permute(0, 3, 1, 2).reshape(weight.shape[0], -1)


def _pad_rows(weight: Tensor, rows: int) -> Tensor:
    if rows <= weight.shape[0]:
        return weight
    extra = weight.float().mean(0, keepdim=True).expand(rows - weight.shape[0], -1).to(weight.dtype)
    return torch.cat([weight, extra])


def _expected_state(kwargs: dict) -> dict[str, torch.Size]:
    from accelerate import init_empty_weights

    from emcot.config import EmCoTConfig
    from emcot.model.modeling import EmCoTModel

    with init_empty_weights(include_buffers=False):
        model = EmCoTModel(EmCoTConfig(**kwargs))
    return {k: v.shape for k, v in model.state_dict().items()}


def _check_against_model(ours: dict[str, Tensor], origin: dict[str, str], kwargs: dict) -> None:
    expected = _expected_state(kwargs)
    missing = sorted(k for k in expected if k not in ours)
    unexpected = sorted(f"{origin.get(k, k)} → {k}" for k in ours if k not in expected)
    shapes = [
        f"{origin.get(k, k)} {tuple(v.shape)} → {k} expects {tuple(expected[k])}"
        for k, v in ours.items()
        if k in expected and v.shape != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"emcot weights with no HALO source ({len(missing)}): {missing[:12]}")
    if unexpected:
        problems.append(f"HALO weights with no place in the model ({len(unexpected)}): {unexpected[:12]}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {shapes[:12]}")
    if problems:
        hint = (
            " The generation branch is missing: pass base=/--base with the pretrained HALO folder."
            if any(k.startswith(("subgoal.", "latent_codec.")) for k in missing)
            else " The checkpoint's tensors disagree with each other or with its configs."
        )
        raise ValueError("cannot convert the HALO checkpoint:\n  " + "\n  ".join(problems) + "\n" + hint)


def convert_halo_state_dict(
    halo_sd: dict[str, Tensor],
    llm_config: dict,
    vit_config: dict | None = None,
    *,
    ae_sd: dict[str, Tensor] | None = None,
    vocab_size: int | None = None,
    action_horizon: int = ROBOTWIN_HORIZON,
    subgoal_size: tuple[int, int] = (256, 256),
    vae_norm_groups: int = 32,
) -> tuple[dict[str, Tensor], dict]:
    """Map a HALO state dict (+ FLUX ``ae_sd``) to ``(emcot state dict, EmCoTConfig kwargs)``.

    Geometry comes from the tensor shapes, checked against ``llm_config`` (Qwen2 ``config.json``)
    and ``vit_config`` (SigLIP; None = so400m). ``vocab_size`` is the least number of vocabulary
    rows (the tokenizer's); missing rows are added as the mean row. Every HALO key must map and
    every emcot weight must be filled with the right shape, else one ValueError lists the problems.
    """
    experts = _expert_configs(halo_sd, llm_config)
    vision = _vision_config(halo_sd, vit_config)
    action_in = _need(halo_sd, "input_linear_layer.weight")
    freq_dim = int(_need(halo_sd, "action_time_embedder.mlp.0.weight").shape[1])
    has_gen = "vae2llm.weight" in halo_sd
    if has_gen and ae_sd is None:
        raise ValueError("the generation branch needs the FLUX VAE: pass ae_sd (ae.safetensors)")
    vae = flux_vae_config(ae_sd, subgoal_size, vae_norm_groups) if ae_sd is not None else None
    rows = max(int(halo_sd["language_model.model.embed_tokens.weight"].shape[0]), vocab_size or 0)
    kwargs = dict(
        experts=experts,
        vocab_size=rows,
        tie_word_embeddings=False,
        rope_theta=_rope_theta(llm_config),
        connector_hidden_act="gelu_pytorch_tanh",
        timestep_frequency_dim=freq_dim,
        vision=vision,
        vae=vae,
        action=ActionSpaceConfig(
            action_dim=int(action_in.shape[1]), state_dim=0, horizon=action_horizon, norm_mode="none"
        ),
        subgoal_sampler=FlowSamplerConfig.subgoal(),
        action_sampler=FlowSamplerConfig.actions(),
    )
    ours: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unmapped = []
    for key, value in halo_sd.items():
        if key in _FIXED_TABLES:
            _check_fixed_table(key, value)
            continue
        new = _our_key(key)
        if new is None:
            unmapped.append(key)
            continue
        if new == "vision.patch_embed.weight":
            value = _reorder_patch_weight(value, vision.patch_size)
        elif new in ("understanding.embed_tokens.weight", "understanding.lm_head.weight"):
            value = _pad_rows(value, rows)
        ours[new], origin[new] = value.contiguous(), key
    if unmapped:
        raise ValueError(
            f"the HALO checkpoint has {len(unmapped)} keys emcot has no counterpart for: {sorted(unmapped)[:12]}; "
            "is it a HALO/BAGEL MoT checkpoint (language_model.*, vit_model.*, connector.*, …)?"
        )
    if ae_sd is not None:
        for key, value in flux_ae_to_diffusers(ae_sd).items():
            ours[f"latent_codec.vae.{key}"] = value
            origin[f"latent_codec.vae.{key}"] = f"ae.safetensors:{key}"
    _check_against_model(ours, origin, kwargs)
    return ours, kwargs
