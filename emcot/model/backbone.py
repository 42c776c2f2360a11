"""The Mixture-of-Transformers decoder: per-expert weights, one shared attention per layer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from emcot.config import AttentionBackend
from emcot.experts.block import ExpertBlock, RMSNorm
from emcot.experts.config import EXPERT_NAMES, ExpertConfig
from emcot.model.attention import KVCache, RotaryEmbedding, apply_rotary, attend

_Out = TypeVar("_Out")


class ExpertRouting:
    """Which flattened tokens go to which expert, computed once per forward pass.

    Gathering by index and restoring order with one inverse permutation keeps the pass
    differentiable and free of in-place writes. Experts named in ``idle`` are routed even when no
    token selects them, with an empty token set, so their weights receive (zero) gradients.
    """

    def __init__(self, expert_ids: torch.Tensor, idle: tuple[str, ...] = ()) -> None:
        flat = expert_ids.reshape(-1)
        present = sorted(set(torch.unique(flat).tolist()) | {EXPERT_NAMES.index(name) for name in idle})
        self.single = EXPERT_NAMES[present[0]] if len(present) == 1 else None
        self.indices = {EXPERT_NAMES[e]: (flat == e).nonzero().squeeze(1) for e in present}
        if self.single is None:
            self.restore = torch.argsort(torch.cat(list(self.indices.values())))

    def map(self, x: torch.Tensor, fn: Callable[[str, torch.Tensor], _Out]) -> list[_Out]:
        """Apply ``fn(name, tokens)`` per expert to rows of ``x [N, ...]``; outputs in expert order."""
        if self.single is not None:
            return [fn(self.single, x)]
        return [fn(name, x.index_select(0, idx)) for name, idx in self.indices.items()]

    def merge(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`map`: per-expert outputs back into token order."""
        if self.single is not None:
            return parts[0]
        return torch.cat(parts).index_select(0, self.restore)


@dataclass
class PreparedQuery:
    """What a backbone pass needs besides embeddings and cache: for tokens from ``query_start`` on,
    their experts, RoPE positions and the mask against every key up to them."""

    query_start: int
    experts: torch.Tensor
    positions: torch.Tensor
    mask: Any


@dataclass
class LayerContext:
    """What every layer of one backbone pass shares besides the hidden states."""

    routing: ExpertRouting
    rope: tuple[torch.Tensor, torch.Tensor]
    mask: Any
    backend: AttentionBackend | str
    cache: KVCache | None
    write_cache: bool


class MoTLayer(nn.Module):
    """One decoder layer: an :class:`ExpertBlock` per expert around a shared attention."""

    def __init__(self, experts: dict[str, ExpertConfig]) -> None:
        super().__init__()
        self.experts = nn.ModuleDict({name: ExpertBlock(cfg) for name, cfg in experts.items()})

    def block(self, name: str) -> ExpertBlock:
        """Expert ``name``'s block (``self.experts`` holds only ExpertBlocks)."""
        return cast(ExpertBlock, self.experts[name])

    def forward(self, x: torch.Tensor, ctx: LayerContext, layer_index: int) -> torch.Tensor:
        """One layer on ``x [B, L, H]``; ``layer_index`` picks this layer's slot in the KV cache."""
        b, seq, hidden = x.shape
        routing = ctx.routing
        flat = x.reshape(b * seq, hidden)
        projected = routing.map(flat, lambda name, t: self.block(name).project_qkv(t))
        q, k, v = (routing.merge([p[i] for p in projected]) for i in range(3))
        # [B*L, heads, d] → [B, heads, L, d]
        q, k, v = (t.view(b, seq, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))
        cos, sin = ctx.rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if ctx.cache is not None:
            k, v = ctx.cache.extend(layer_index, k, v)
            if ctx.write_cache:
                ctx.cache.store(layer_index, k, v)
        training = self.training and torch.is_grad_enabled()
        attn = attend(q, k, v, ctx.mask, ctx.backend, training=training).reshape(b * seq, -1)
        parts = routing.map(
            torch.cat([flat, attn], dim=1),
            lambda name, t: self.block(name).finish(t[:, :hidden], t[:, hidden:]),
        )
        return routing.merge(parts).view(b, seq, hidden)


class MoTBackbone(nn.Module):
    """The decoder stack: layers of per-expert blocks, a final RMSNorm per expert, RoPE."""

    def __init__(self, experts: dict[str, ExpertConfig], rope_theta: float) -> None:
        super().__init__()
        first = next(iter(experts.values()))
        self.layers = nn.ModuleList(MoTLayer(experts) for _ in range(first.num_layers))
        self.norms = nn.ModuleDict(
            {name: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) for name, cfg in experts.items()}
        )
        self.rotary = RotaryEmbedding(first.head_size, rope_theta)
        self.gradient_checkpointing = False
        # Set by the trainer's LossModule under FSDP: every expert then gets a gradient in every
        # training pass.
        self.route_idle_experts = False

    def forward(
        self,
        hidden: torch.Tensor,
        query: PreparedQuery,
        backend: AttentionBackend | str = AttentionBackend.SDPA,
        cache: KVCache | None = None,
        write_cache: bool = False,
    ) -> torch.Tensor:
        """Run all layers on ``hidden [B, L, H]``; returns final-normed states ``[B, L, H]``.

        ``query.experts`` and ``query.positions`` are ``[L]`` (shared by the batch) or ``[B, L]``;
        ``query.mask`` covers the new tokens against cache + new keys. With ``cache`` given, keys
        and values of the cached prefix are read; they are appended only when ``write_cache`` is True.
        """
        b, seq, _ = hidden.shape
        expert_ids, positions = query.experts, query.positions
        if expert_ids.dim() == 1:
            expert_ids = expert_ids.expand(b, seq)
        if positions.dim() == 1:
            positions = positions.expand(b, seq)
        idle = (
            tuple(self.norms) if self.route_idle_experts and self.training and torch.is_grad_enabled() else ()
        )
        routing = ExpertRouting(expert_ids, idle)
        ctx = LayerContext(
            routing, self.rotary(positions, hidden.dtype), query.mask, backend, cache, write_cache
        )
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(layer, hidden, ctx, i, use_reentrant=False)
            else:
                hidden = layer(hidden, ctx, i)
        flat = hidden.reshape(b * seq, -1)
        normed = routing.merge(routing.map(flat, lambda name, t: self.norms[name](t)))
        return normed.view(b, seq, -1)
