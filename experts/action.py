"""Action expert I/O: the state token, noisy action tokens in, action velocity out."""

from __future__ import annotations

import torch
from torch import nn

from emcot.experts.embeddings import TimestepEmbedder, step_sincos, zero_init


class ActionIO(nn.Module):
    """Embeds the normalised robot state (one token) and the noisy action chunk (one token per step).

    An action token is ``action_in(a) + time(t) + step(i)``; the velocity head starts at zero.
    """

    def __init__(self, action_dim: int, state_dim: int, hidden_size: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.action_dim, self.state_dim = action_dim, state_dim
        self.state_in = nn.Linear(state_dim, hidden_size) if state_dim > 0 else None
        self.action_in = nn.Linear(action_dim, hidden_size)
        self.time_embedder = TimestepEmbedder(hidden_size, frequency_dim)
        self.action_out = nn.Linear(hidden_size, action_dim)
        zero_init(self.action_out)

    def embed_state(self, state: torch.Tensor) -> torch.Tensor:
        """``state [B, state_dim]`` → one token per sample ``[B, 1, hidden]``."""
        if self.state_in is None:
            raise ValueError("this model has no state input (state_dim=0); pass observations without state")
        return self.state_in(state)[:, None, :]

    def embed_actions(self, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noisy chunk ``[B, horizon, action_dim]`` at times ``t [B]`` → ``[B, horizon, hidden]``."""
        steps = torch.arange(actions.shape[1], device=actions.device)
        step = step_sincos(self.action_in.out_features, steps).to(actions.dtype)
        return self.action_in(actions) + self.time_embedder(t)[:, None, :] + step[None]

    def velocity(self, hidden: torch.Tensor) -> torch.Tensor:
        """Predicted action velocity ``[.., action_dim]``."""
        return self.action_out(hidden)

    @staticmethod
    def loss(
        pred: torch.Tensor, target: torch.Tensor, kind: str = "l1", mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, int]:
        """Summed L1 (or squared) error over non-padded steps, and the element count."""
        err = (
            (pred.float() - target.float()).abs() if kind == "l1" else (pred.float() - target.float()).pow(2)
        )
        if mask is not None:
            err = err * mask[..., None]
            return err.sum(), int(mask.sum().item()) * pred.shape[-1]
        return err.sum(), target.numel()
