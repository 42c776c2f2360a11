"""State-aware latent re-representation: the state token re-expressed through its pairwise
products with the vision-language tokens, so the action expert is conditioned on what in the scene
and the instruction matters for acting from this state.

For the state embedding ``s`` and each vision-language token ``x_j`` the product
``z_j = (A·s) ⊙ (B·x_j)`` spans a latent space of ``n_tokens × rank`` entries. A learnable mask
``σ(m) ∈ (0, 1)^rank`` suppresses action-irrelevant channels of it, a learned score ``w·z_j``
weighs the tokens (softmax over j), and the pooled, masked products map back to the hidden size
and are added to the state token. The output projection starts at zero, so a freshly switched-on
module leaves the model's outputs unchanged until it learns.
"""

from __future__ import annotations

import torch
from torch import nn

from emcot.experts.embeddings import zero_init


class StateAwareReRepresentation(nn.Module):
    """``forward(state [n_s, H], context [n, H]) -> [n_s, H]``: the state tokens plus their
    action-aligned embedding (see the module docstring)."""

    def __init__(self, hidden_size: int, rank: int) -> None:
        super().__init__()
        self.state_proj = nn.Linear(hidden_size, rank)
        self.context_proj = nn.Linear(hidden_size, rank)
        # Starts mostly open (σ(2) ≈ 0.88); training closes the channels that do not help acting.
        self.mask_logits = nn.Parameter(torch.full((rank,), 2.0))
        self.token_score = nn.Linear(rank, 1, bias=False)
        self.out = zero_init(nn.Linear(rank, hidden_size))

    def forward(self, state: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if context.shape[0] == 0:
            return state
        products = self.state_proj(state)[:, None, :] * self.context_proj(context)[None, :, :]
        masked = products * torch.sigmoid(self.mask_logits)  # [n_s, n, rank]
        weights = torch.softmax(self.token_score(masked).squeeze(-1), dim=1)  # [n_s, n]
        pooled = torch.einsum("sn,snr->sr", weights, masked)
        return state + self.out(pooled)
