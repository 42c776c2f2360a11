"""Subgoal-generation expert I/O: latent tokens in, latent velocity out."""

from __future__ import annotations

import torch
from torch import nn

from emcot.experts.embeddings import TimestepEmbedder, grid_sincos, zero_init


class SubgoalIO(nn.Module):
    """Embeds patchified VAE latents (+ flow time + 2-D position) and reads out their velocity.

    The out-projection starts at zero so a fresh expert predicts zero velocity instead of noise.
    """

    def __init__(self, token_dim: int, hidden_size: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.latent_in = nn.Linear(token_dim, hidden_size)
        self.time_embedder = TimestepEmbedder(hidden_size, frequency_dim)
        self.latent_out = nn.Linear(hidden_size, token_dim)
        zero_init(self.latent_out)

    def embed(self, tokens: torch.Tensor, t: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``tokens [B, n, token_dim]`` at times ``t [B]`` (0 for clean copies) → ``[B, n, hidden]``."""
        pos = grid_sincos(self.latent_in.out_features, *grid, device=tokens.device).to(tokens.dtype)
        return self.latent_in(tokens) + self.time_embedder(t)[:, None, :] + pos[None]

    def velocity(self, hidden: torch.Tensor) -> torch.Tensor:
        """Predicted velocity ``[.., token_dim]`` from final-normed hidden states."""
        return self.latent_out(hidden)

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed squared error and element count."""
        return (pred.float() - target.float()).pow(2).sum(), target.numel()
