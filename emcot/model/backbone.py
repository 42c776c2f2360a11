"""The Mixture-of-Transformers decoder: per-expert weights, one shared attention per layer."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from emcot.experts.block import ExpertBlock, RMSNorm
from emcot.experts.config import EXPERT_NAMES, ExpertConfig
from emcot.model.attention import KVCache, RotaryEmbedding, apply_rotary, attend


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

    def map(self, x: torch.Tensor, fn) -> list[torch.Tensor] | tuple:
        """Apply ``fn(name, tokens)`` per expert to rows of ``x [N, ...]``; outputs in expert order."""
        if self.single is not None:
            return [fn(self.single, x)]
        return [fn(name, x.index_select(0, idx)) for name, idx in self.indices.items()]

    def merge(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`map`: per-expert outputs back into token order."""
        if self.single is not None:
            return parts[0]
        return torch.cat(parts).index_select(0, self.restore)


class MoTLayer(nn.Module):
    """One decoder layer: an :class:`ExpertBlock` per expert around a shared attention."""

    def __init__(self, experts: dict[str, ExpertConfig]) -> None:
        super().__init__()
        self.experts = nn.ModuleDict({name: ExpertBlock(cfg) for name, cfg in experts.items()})

    def forward(
        self,
        x: torch.Tensor,
        routing: ExpertRouting,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask,
        backend: str,
        cache: KVCache | None,
        layer_index: int,
        write_cache: bool,
    ) -> torch.Tensor:
        b, seq, hidden = x.shape
        flat = x.reshape(b * seq, hidden)
        projected = routing.map(flat, lambda name, t: self.experts[name].project_qkv(t))
        q, k, v = (routing.merge([p[i] for p in projected]) for i in range(3))
        # [B*L, heads, d] → [B, heads, L, d]
        q, k, v = (t.view(b, seq, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(layer_index, k, v)
            if write_cache:
                cache.store(layer_index, k, v)
        attn = attend(q, k, v, mask, backend).reshape(b * seq, -1)
        parts = routing.map(
            torch.cat([flat, attn], dim=1),
            lambda name, t: self.experts[name].finish(t[:, :hidden], t[:, hidden:]),
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
        self.rotary = RotaryEmbedding(first.head_dim, rope_theta)
        self.gradient_checkpointing = False
        # Set by the trainer's LossModule under FSDP: every expert then gets a gradient in every
        # training pass.
        self.route_idle_experts = False

    def forward(
        self,
        hidden: torch.Tensor,
        expert_ids: torch.Tensor,
        positions: torch.Tensor,
        mask,
        backend: str = "sdpa",
        cache: KVCache | None = None,
        write_cache: bool = False,
    ) -> torch.Tensor:
        """Run all layers on ``hidden [B, L, H]``; returns final-normed states ``[B, L, H]``.

        ``expert_ids`` and ``positions`` are ``[L]`` (shared by the batch) or ``[B, L]``; ``mask``
        covers the new tokens against cache + new keys. With ``cache`` given, keys and values
        of the cached prefix are read; they are appended only when ``write_cache`` is True.
        """
        b, seq, _ = hidden.shape
        if expert_ids.dim() == 1:
            expert_ids = expert_ids.expand(b, seq)
        if positions.dim() == 1:
            positions = positions.expand(b, seq)
        idle = (
            tuple(self.norms) if self.route_idle_experts and self.training and torch.is_grad_enabled() else ()
        )
        routing = ExpertRouting(expert_ids, idle)
        rope = self.rotary(positions, hidden.dtype)
        for i, layer in enumerate(self.layers):
            args = (routing, rope, mask, backend, cache, i, write_cache)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(layer, hidden, *args, use_reentrant=False)
            else:
                hidden = layer(hidden, *args)
        flat = hidden.reshape(b * seq, -1)
        normed = routing.merge(routing.map(flat, lambda name, t: self.norms[name](t)))
        return normed.view(b, seq, -1)
