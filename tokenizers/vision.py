"""Understanding-image encoder: a SigLIP-family ViT over packed, natively sized images (NaViT).

Several images of different sizes run in one call: their patch tokens arrive concatenated into one
packed sequence, and attention never crosses from one image to another. Patches arrive already
flattened (see :func:`emcot.tokenizers.vision_processing.patchify`), so the patch embedding is a
``Linear`` whose weight is the SigLIP ``Conv2d`` weight reshaped to ``(hidden, 3 * p * p)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emcot.tokenizers.vision_config import VisionEncoderConfig
from emcot.tokenizers.vision_convert import load_hf_vision_folder

__all__ = ["VisionEncoder", "VisionEncoderConfig", "normalize_grid"]

GridSpec = Sequence[tuple[int, int]] | Tensor


class VisionAttention(nn.Module):
    """Multi-head self-attention over a packed token sequence (SDPA, optional boolean mask)."""

    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        """``hidden`` [B, L, D], ``mask`` [B, 1, 1, L] bool key mask (True = may attend) or None → [B, L, D]."""
        batch, length, _ = hidden.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q = self.q_proj(hidden).view(shape).transpose(1, 2)
        k = self.k_proj(hidden).view(shape).transpose(1, 2)
        v = self.v_proj(hidden).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class VisionMLP(nn.Module):
    """Two-layer feed-forward block with the configured GELU."""

    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.approximate = "tanh" if config.hidden_act == "gelu_pytorch_tanh" else "none"

    def forward(self, hidden: Tensor) -> Tensor:
        """[..., D] → [..., D]."""
        return self.fc2(F.gelu(self.fc1(hidden), approximate=self.approximate))


class VisionEncoderLayer(nn.Module):
    """Pre-LN transformer layer: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = VisionAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VisionMLP(config)

    def forward(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        """[B, L, D] → [B, L, D]."""
        hidden = hidden + self.attn(self.norm1(hidden), mask)
        return hidden + self.mlp(self.norm2(hidden))


def normalize_grid(grid_hw: GridSpec) -> list[tuple[int, int]]:
    """Turn a list of (h, w) pairs or a LongTensor [n_img, 2] into a validated list of int pairs."""
    if isinstance(grid_hw, Tensor):
        if grid_hw.ndim != 2 or grid_hw.shape[1] != 2:
            raise ValueError(f"grid_hw tensor must have shape [n_images, 2], got {tuple(grid_hw.shape)}.")
        pairs = [(int(h), int(w)) for h, w in grid_hw.tolist()]
    else:
        pairs = [(int(h), int(w)) for h, w in grid_hw]
    if not pairs:
        raise ValueError("grid_hw is empty: pass one (rows, cols) patch grid per image.")
    if any(h < 1 or w < 1 for h, w in pairs):
        raise ValueError(f"grid_hw entries must be positive (rows, cols) patch counts, got {pairs}.")
    return pairs


class VisionEncoder(nn.Module):
    """SigLIP ViT without pooling head, run NaViT-style on packed images of native size.

    Output is ``post_layernorm(last built layer)``. With ``config.drop_last_layer`` the final
    checkpoint layer is never built, exactly as BAGEL/HALO (``vit_config.num_hidden_layers -= 1``
    before building ``SiglipVisionModel``); their post layernorm is still applied, so features
    equal ``post_layernorm(hidden_states[-2])`` of the full transformers model.
    """

    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Linear(config.patch_dim, config.hidden_size)
        self.pos_embed = nn.Embedding(config.max_grid * config.max_grid, config.hidden_size)
        self.layers = nn.ModuleList(VisionEncoderLayer(config) for _ in range(config.effective_layers))
        self.post_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def position_embeddings(self, grids: list[tuple[int, int]]) -> Tensor:
        """Position embedding of every packed token, [sum(h*w), hidden], in row-major patch order."""
        cfg = self.config
        table = self.pos_embed.weight
        if cfg.position_mode == "table":
            too_big = [(h, w) for h, w in grids if h > cfg.max_grid or w > cfg.max_grid]
            if too_big:
                raise ValueError(
                    f"Patch grids {too_big} exceed the position table ({cfg.max_grid} per side); "
                    f"resize images with VisionImageProcessor (max {cfg.max_grid * cfg.patch_size} px per side)."
                )
            ids = [
                (torch.arange(h)[:, None] * cfg.max_grid + torch.arange(w)[None, :]).flatten()
                for h, w in grids
            ]
            return self.pos_embed(torch.cat(ids).to(table.device))
        square = table.reshape(cfg.max_grid, cfg.max_grid, -1).permute(2, 0, 1).unsqueeze(0)
        # Antialiased bilinear resize is not implemented for half precision on CPU; SigLIP2 upcasts too.
        square = square.float()
        pieces = []
        for h, w in grids:
            resized = F.interpolate(square, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            pieces.append(resized.reshape(cfg.hidden_size, h * w).transpose(0, 1))
        return torch.cat(pieces).to(table.dtype)

    def forward(self, patches: Tensor, grid_hw: GridSpec) -> Tensor:
        """Encode packed patches [N_total, 3*p*p] of images with patch grids ``grid_hw`` → [N_total, hidden].

        Tokens of image i are the rows after those of earlier images, in row-major patch order; they
        attend only to tokens of the same image.
        """
        cfg = self.config
        grids = normalize_grid(grid_hw)
        if patches.ndim != 2 or patches.shape[1] != cfg.patch_dim:
            raise ValueError(
                f"patches must have shape [N_total, {cfg.patch_dim}] (3*{cfg.patch_size}*{cfg.patch_size}), "
                f"got {tuple(patches.shape)}; build them with VisionImageProcessor."
            )
        lengths = [h * w for h, w in grids]
        if sum(lengths) != patches.shape[0]:
            raise ValueError(
                f"grid_hw covers {sum(lengths)} patches but {patches.shape[0]} were given; "
                "pass one (rows, cols) per image in the order the patches were concatenated."
            )
        weight = self.patch_embed.weight
        hidden = self.patch_embed(patches.to(device=weight.device, dtype=weight.dtype))
        hidden = hidden + self.position_embeddings(grids)
        # Images run as a right-padded batch with a key-padding mask: same result as a block-diagonal
        # mask over the packed sequence, but O(n_img * L_max^2) attention instead of O((sum L)^2).
        longest = max(lengths)
        valid = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
        valid = valid.to(hidden.device)
        batch = hidden.new_zeros(len(lengths), longest, cfg.hidden_size)
        batch[valid] = hidden
        mask = None if min(lengths) == longest else valid[:, None, None, :]
        for layer in self.layers:
            batch = layer(batch, mask)
        return self.post_norm(batch[valid])

    @classmethod
    def from_config(cls, config: VisionEncoderConfig) -> VisionEncoder:
        """Randomly initialised encoder (SigLIP-like init scales) for a config."""
        model = cls(config)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
            nn.init.normal_(model.pos_embed.weight, std=1.0 / math.sqrt(config.hidden_size))
        return model

    @classmethod
    def from_pretrained(cls, folder: str | Path, **overrides) -> VisionEncoder:
        """Load a transformers SigLIP / SigLIP2 (vision or dual) checkpoint folder.

        ``overrides`` replace inferred config fields, e.g. ``drop_last_layer=True`` or
        ``max_grid=70`` (a "table" checkpoint's position table is then resized bicubically).
        """
        state_dict, config = load_hf_vision_folder(folder, **overrides)
        model = cls(config)
        model.load_state_dict(state_dict, strict=True)
        return model
