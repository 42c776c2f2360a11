"""Fixed sinusoidal embeddings and the diffusion-time embedder shared by the generative experts."""

from __future__ import annotations

import math

import torch
from torch import nn


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos embedding ``[n, dim]`` of float positions ``[n]`` (sin half first, as in MAE)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = 1.0 / 10000 ** (
        torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0)
    )
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).to(torch.float32)


def sincos_2d(dim: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """2-D sin-cos embedding ``[n, dim]``: the first half encodes the column, the second the row.

    Column first is BAGEL/HALO's (meshgrid 'xy') order; keeping it lets their checkpoints run
    unchanged.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


def grid_sincos(dim: int, height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Row-major 2-D embedding of an ``height × width`` token grid, ``[height·width, dim]``."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return sincos_2d(dim, rows, cols)


def step_sincos(dim: int, steps: torch.Tensor) -> torch.Tensor:
    """Embedding ``[n, dim]`` of integer chunk steps: sin half first, frequencies ``10000^(-i/(half-1))``.

    This is HALO's action-step embedding (its divisor is ``half - 1``, unlike :func:`sincos_1d`).
    """
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=steps.device) * -(math.log(10000.0) / (half - 1))
    )
    angles = steps.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimestepEmbedder(nn.Module):
    """Flow time ``t ∈ [0, 1]`` → hidden vector: sinusoidal features then a two-layer SiLU MLP (DiT-style).

    ``time_scale`` multiplies t before the sinusoid; BAGEL/HALO feed the raw t (scale 1).
    """

    def __init__(self, hidden_size: int, frequency_dim: int = 256, time_scale: float = 1.0) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def frequencies(self, t: torch.Tensor, max_period: float = 10000.0) -> torch.Tensor:
        """Sinusoidal features ``[n, frequency_dim]`` (cos half first, as in DiT)."""
        half = self.frequency_dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = (t.float() * self.time_scale)[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)  # built in __init__
        return self.mlp(self.frequencies(t).to(first.weight.dtype))


def zero_init(layer: nn.Linear) -> nn.Linear:
    """Zero ``layer`` and mark it so that model-wide re-initialisation keeps it at zero.

    Flow heads start at zero so that a fresh expert predicts zero velocity rather than noise.
    """
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    layer.emcot_zero_init = True  # type: ignore[assignment]
    return layer


def is_zero_init(layer: nn.Module) -> bool:
    """Whether :func:`zero_init` marked ``layer``."""
    return bool(getattr(layer, "emcot_zero_init", False))
