"""Shared attention: rotary embeddings, KV cache and switchable backends (SDPA, flex, eager)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emcot.config import AttentionBackend
from emcot.memory.topk import topk_attention
from emcot.sequence.plan import TokenLayout


class RotaryEmbedding(nn.Module):
    """Standard RoPE (rotate-half layout, as in Qwen2) evaluated at arbitrary integer positions.

    The inverse frequencies are computed from ``theta`` rather than held in a buffer: loaders that
    build models on the meta device re-create non-persistent buffers uninitialised, and a dtype
    cast (``model.to(torch.bfloat16)``) would round them. Computed here they are the same float32
    values on every loading path; they are cached per device.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = float(theta)
        self._inv_freq: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The float32 inverse frequencies ``[head_dim / 2]`` on ``device`` (Qwen2's formula)."""
        device = torch.device(device)
        if device not in self._inv_freq:
            # Explicit CPU arange: a surrounding meta-device context must not make these meta tensors.
            exponent = (
                torch.arange(0, self.head_dim, 2, dtype=torch.int64, device="cpu").float() / self.head_dim
            )
            self._inv_freq[device] = (1.0 / (self.theta**exponent)).to(device)
        return self._inv_freq[device]

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape ``[*positions.shape, head_dim]``."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, heads, L, hd]`` by per-token angles ``[B, L, hd]``."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """Keys and values per layer (post-RoPE), growing along the sequence.

    A forward pass may read the cache without writing to it: denoising steps attend to the
    prefix many times and must leave it untouched.
    """

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def __len__(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of the cache followed by the new ones (not stored)."""
        cached_k, cached_v = self.keys[layer], self.values[layer]
        if cached_k is None or cached_v is None:  # store() sets both, so both or neither
            return k, v
        return torch.cat([cached_k, k], dim=2), torch.cat([cached_v, v], dim=2)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Replace a layer's keys and values (after :meth:`extend` when writing)."""
        self.keys[layer], self.values[layer] = k, v


def _dense_mask(layout: TokenLayout, query_start: int, key_drop: torch.Tensor | None) -> torch.Tensor:
    return layout.mask(query_start, key_drop)


def _block_mask(layout: TokenLayout, query_start: int, key_drop: torch.Tensor | None):
    from torch.nn.attention.flex_attention import create_block_mask

    sample, segment, bidir, noise = layout.sample, layout.segment, layout.bidirectional, layout.noise
    drop = key_drop if key_drop is not None else torch.zeros_like(noise)

    def mask_mod(b, h, q_idx, kv_idx):
        q = q_idx + query_start
        earlier = (segment[kv_idx] < segment[q]) & ~noise[kv_idx]
        same = (segment[kv_idx] == segment[q]) & (bidir[q] | (kv_idx <= q))
        visible = ~drop[kv_idx] | (segment[kv_idx] == segment[q])
        return (sample[q] == sample[kv_idx]) & (earlier | same) & visible

    n = len(layout)
    return create_block_mask(mask_mod, None, None, n - query_start, n, device=layout.sample.device)


@functools.cache
def _flex_attention(compiled: bool):
    # Uncompiled flex materialises the score matrix; compile it where a fused kernel exists (GPU).
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if compiled else flex_attention


def _dense_inputs(k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, groups: int):
    """Dense kernels take a ``[B, 1, Lq, Lk]`` mask and as many KV heads as query heads."""
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return k, v, mask


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, groups: int) -> torch.Tensor:
    k, v, mask = _dense_inputs(k, v, mask, groups)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, groups: int) -> torch.Tensor:
    """Softmax attention probabilities ``[B, H, Lq, Lk]`` under a dense bool mask (what the eager
    kernel multiplies the values by; benches read them to see where queries look)."""
    k, _, mask = _dense_inputs(k, k, mask, groups)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(-1)


def _eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, groups: int) -> torch.Tensor:
    weights = attention_weights(q, k, mask, groups)
    return weights @ (v.repeat_interleave(groups, dim=1) if groups > 1 else v)


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, groups: int) -> torch.Tensor:
    return _flex_attention(q.is_cuda)(q, k, v, block_mask=mask, enable_gqa=groups > 1)


@dataclass(frozen=True)
class BackendKernels:
    """How one attention backend builds its mask object and computes attention with it."""

    make_mask: Callable[[TokenLayout, int, torch.Tensor | None], Any]
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any, int], torch.Tensor]
    per_row_masks: bool  # whether a mask may differ per batch row (left-padded text batches)


BACKENDS: dict[AttentionBackend, BackendKernels] = {
    AttentionBackend.SDPA: BackendKernels(_dense_mask, _sdpa, per_row_masks=True),
    AttentionBackend.FLEX: BackendKernels(_block_mask, _flex, per_row_masks=False),
    AttentionBackend.EAGER: BackendKernels(_dense_mask, _eager, per_row_masks=True),
}


@dataclass(frozen=True)
class TopKHistoryMask:
    """A dense mask with the keys Top-K history attention selects among (``config.memory.top_k``).

    ``history``: bool per key ``[Lk]`` (or ``[B, Lk]`` for padded rows), True for tokens of past
    steps. Every query keeps its ``top_k`` best allowed history keys and all its other allowed keys.
    """

    dense: torch.Tensor
    history: torch.Tensor
    top_k: int


def make_mask(
    backend: AttentionBackend | str,
    layout: TokenLayout,
    query_start: int = 0,
    key_drop: torch.Tensor | None = None,
):
    """The mask object a backend consumes: a dense bool tensor, or a flex ``BlockMask``."""
    return BACKENDS[AttentionBackend.parse(backend)].make_mask(layout, query_start, key_drop)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask,
    backend: AttentionBackend | str,
    *,
    training: bool = False,
) -> torch.Tensor:
    """Grouped-query attention ``q [B, H, Lq, d]``, ``k/v [B, Hkv, Lk, d]`` → ``[B, Lq, H·d]``.

    A :class:`TopKHistoryMask` runs Top-K history attention instead of the backend's kernel: the
    straight-through path when ``training``, the hard gather otherwise."""
    groups = q.shape[1] // k.shape[1]
    if isinstance(mask, TopKHistoryMask):
        k, v, dense = _dense_inputs(k, v, mask.dense, groups)
        history = mask.history[None, None, None] if mask.history.dim() == 1 else mask.history[:, None, None]
        out = topk_attention(q, k, v, mask.top_k, training=training, mask=dense, candidates=history)
    else:
        out = BACKENDS[AttentionBackend.parse(backend)].attend(q, k, v, mask, groups)
    b, h, lq, d = out.shape
    return out.transpose(1, 2).reshape(b, lq, h * d)
