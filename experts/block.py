"""One expert's weights inside one Mixture-of-Transformers layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emcot.experts.config import ExpertConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, as Qwen2/Qwen3 do (needed for exact parity)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class SwiGLU(nn.Module):
    """Gated MLP: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ExpertBlock(nn.Module):
    """An expert's share of one layer: its norms, q/k/v/o projections, optional QK-norm and MLP.

    The attention itself is not here: the backbone gathers every expert's q/k/v, runs one shared
    attention over all tokens, and hands each expert its tokens' attention output back.
    """

    def __init__(self, config: ExpertConfig) -> None:
        super().__init__()
        self.config = config
        hd = config.head_size
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * hd, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_kv_heads * hd, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_kv_heads * hd, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.num_heads * hd, config.hidden_size, bias=config.o_bias)
        # Per-head RMSNorm on q and k before RoPE (Qwen3 / BAGEL / HALO); absent in plain Qwen2.
        self.q_norm = RMSNorm(hd, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(hd, config.rms_norm_eps) if config.qk_norm else None
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden states ``[n, hidden]`` → q ``[n, heads, hd]``, k and v ``[n, kv_heads, hd]`` (pre-RoPE)."""
        cfg = self.config
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(-1, cfg.num_heads, cfg.head_size)
        k = self.k_proj(h).view(-1, cfg.num_kv_heads, cfg.head_size)
        v = self.v_proj(h).view(-1, cfg.num_kv_heads, cfg.head_size)
        if self.q_norm is not None and self.k_norm is not None:  # both or neither (config.qk_norm)
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def finish(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual update after attention: o-projection, then the MLP sub-block."""
        x = x + self.o_proj(attn_out)
        return x + self.mlp(self.post_attention_layernorm(x))


@torch.no_grad()
def copy_expert_weights(src: ExpertBlock, dst: ExpertBlock) -> None:
    """Initialise ``dst`` from ``src`` (HALO's ``init_moe``); a narrower MLP takes the leading slice."""
    src_params = dict(src.named_parameters())
    for name, param in dst.named_parameters():
        if name not in src_params:
            raise ValueError(
                f"cannot copy expert weights: source has no '{name}' (QK-norm or bias settings differ)"
            )
        source: torch.Tensor = src_params[name]
        if name.startswith("mlp.") and source.shape != param.shape:
            source = source[tuple(slice(0, n) for n in param.shape)]
        if source.shape != param.shape:
            raise ValueError(
                f"cannot copy expert weight '{name}': shape {tuple(source.shape)} → {tuple(param.shape)}"
            )
        param.copy_(source)
