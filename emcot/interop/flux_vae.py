"""FLUX / LDM autoencoder weights (BFL ``ae.safetensors`` names) → ``diffusers.AutoencoderKL`` names.

BAGEL and HALO ship the FLUX.1 autoencoder with the original BFL/LDM key names. The mapping:

========================================================  ==============================================
BFL / LDM key                                              diffusers ``AutoencoderKL`` key
========================================================  ==============================================
``{enc,dec}.conv_in.*`` / ``conv_out.*``                   same
``{enc,dec}.norm_out.*``                                   ``{enc,dec}.conv_norm_out.*``
``encoder.down.{i}.block.{j}.*``                           ``encoder.down_blocks.{i}.resnets.{j}.*``
``encoder.down.{i}.downsample.conv.*``                     ``encoder.down_blocks.{i}.downsamplers.0.conv.*``
``decoder.up.{b}.block.{j}.*``                             ``decoder.up_blocks.{n-1-b}.resnets.{j}.*``
``decoder.up.{b}.upsample.conv.*``                         ``decoder.up_blocks.{n-1-b}.upsamplers.0.conv.*``
``{enc,dec}.mid.block_{1,2}.*``                            ``{enc,dec}.mid_block.resnets.{0,1}.*``
``{enc,dec}.mid.attn_1.norm.*``                            ``{enc,dec}.mid_block.attentions.0.group_norm.*``
``{enc,dec}.mid.attn_1.{q,k,v}.*`` (1×1 conv)              ``….attentions.0.to_{q,k,v}.*`` (linear, squeezed)
``{enc,dec}.mid.attn_1.proj_out.*`` (1×1 conv)             ``….attentions.0.to_out.0.*`` (linear, squeezed)
``….nin_shortcut.*``                                       ``….conv_shortcut.*``
``quant_conv.*`` / ``post_quant_conv.*`` (not in FLUX)     same
========================================================  ==============================================

LDM numbers decoder levels by resolution (``up.0`` is the highest and runs last); diffusers
numbers them in execution order, hence the reversal. The file holds no config: the FLUX scale
(0.3611) and shift (0.1159) are constants of the format.
"""

from __future__ import annotations

import re
from typing import cast

from torch import Tensor

from emcot.tokenizers.vae import VAEConfig

FLUX_SCALING_FACTOR = 0.3611
FLUX_SHIFT_FACTOR = 0.1159

_MID_RENAMES = (
    (re.compile(r"\.mid\.block_([12])\."), lambda m: f".mid_block.resnets.{int(m[1]) - 1}."),
    (re.compile(r"\.mid\.attn_1\.norm\."), lambda m: ".mid_block.attentions.0.group_norm."),
    (re.compile(r"\.mid\.attn_1\.([qkv])\."), lambda m: f".mid_block.attentions.0.to_{m[1]}."),
    (re.compile(r"\.mid\.attn_1\.proj_out\."), lambda m: ".mid_block.attentions.0.to_out.0."),
)
_ENCODER_BLOCK = re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.")
_ENCODER_DOWN = re.compile(r"^encoder\.down\.(\d+)\.downsample\.conv\.")
_DECODER_BLOCK = re.compile(r"^decoder\.up\.(\d+)\.block\.(\d+)\.")
_DECODER_UP = re.compile(r"^decoder\.up\.(\d+)\.upsample\.conv\.")
_PLAIN = re.compile(r"^(encoder\.|decoder\.)?(conv_in|conv_out|quant_conv|post_quant_conv)\.")
_RESNET_PARTS = re.compile(r"^(norm1|norm2|conv1|conv2|nin_shortcut)\.(weight|bias)$")


def _level_count(keys, pattern: re.Pattern) -> int:
    levels = {int(m[1]) for m in map(pattern.match, keys) if m}
    return max(levels) + 1 if levels else 0


def _rename(key: str, num_up: int) -> str | None:
    """diffusers name of one BFL/LDM key, or None when the key belongs to no known module."""
    if key.startswith(("encoder.norm_out.", "decoder.norm_out.")):
        return key.replace(".norm_out.", ".conv_norm_out.")
    if _PLAIN.match(key):
        return key
    for pattern, repl in _MID_RENAMES:
        if pattern.search(key) and key.startswith(("encoder.mid.", "decoder.mid.")):
            return pattern.sub(repl, key)
    m = _ENCODER_BLOCK.match(key) or _DECODER_BLOCK.match(key)
    if m:
        rest = key[m.end() :]
        if not _RESNET_PARTS.match(rest):
            return None
        rest = rest.replace("nin_shortcut.", "conv_shortcut.")
        if key.startswith("encoder."):
            return f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{rest}"
        return f"decoder.up_blocks.{num_up - 1 - int(m[1])}.resnets.{m[2]}.{rest}"
    m = _ENCODER_DOWN.match(key)
    if m:
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{key[m.end() :]}"
    m = _DECODER_UP.match(key)
    if m:
        return f"decoder.up_blocks.{num_up - 1 - int(m[1])}.upsamplers.0.conv.{key[m.end() :]}"
    return None


def flux_ae_to_diffusers(ae_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a BFL/LDM autoencoder state dict into ``diffusers.AutoencoderKL`` names.

    The mid-block attention's 1×1-conv q/k/v/proj_out weights ``[C, C, 1, 1]`` become linear
    ``[C, C]``. Keys matching no rule raise one ValueError listing them.
    """
    num_up = _level_count(ae_sd, _DECODER_BLOCK)
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in ae_sd.items():
        new = _rename(key, num_up)
        if new is None:
            unknown.append(key)
            continue
        if ".attentions.0.to_" in new and new.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0].contiguous()
        out[new] = value
    if unknown:
        raise ValueError(
            f"ae.safetensors has {len(unknown)} keys that are not part of a FLUX/LDM autoencoder: "
            f"{sorted(unknown)[:10]}; pass the original BFL ae.safetensors (as shipped with BAGEL-7B-MoT)"
        )
    return out


def flux_vae_config(
    ae_sd: dict[str, Tensor], image_size: tuple[int, int] = (256, 256), norm_num_groups: int = 32
) -> VAEConfig:
    """The :class:`VAEConfig` of a BFL/LDM autoencoder state dict, read from its tensor shapes.

    Group count is not visible in the weights (FLUX uses 32); scale and shift are FLUX's.
    """
    depth = _level_count(ae_sd, _ENCODER_BLOCK)
    try:
        channels = tuple(int(ae_sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in range(depth))
        latent_channels = int(ae_sd["decoder.conv_in.weight"].shape[1])
    except KeyError as err:
        raise ValueError(
            f"ae.safetensors lacks {err.args[0]}; it is not a FLUX/LDM autoencoder (BFL key names expected)"
        ) from None
    if not channels:
        raise ValueError("ae.safetensors has no encoder.down.* blocks; it is not a FLUX/LDM autoencoder")
    blocks = {int(m[1]) for m in (re.match(r"^encoder\.down\.0\.block\.(\d+)\.", k) for k in ae_sd) if m}
    return VAEConfig(
        latent_channels=latent_channels,
        scaling_factor=FLUX_SCALING_FACTOR,
        shift_factor=FLUX_SHIFT_FACTOR,
        block_out_channels=channels,
        layers_per_block=len(blocks),
        norm_num_groups=norm_num_groups,
        # tuple() accepts any pair-like; VAEConfig's field check then enforces the length of 2.
        image_size=cast("tuple[int, int]", tuple(image_size)),
        mid_block_attention="encoder.mid.attn_1.q.weight" in ae_sd,
        use_quant_conv="quant_conv.weight" in ae_sd,
    )
