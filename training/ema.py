"""Exponential moving average of the trainable weights."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """``shadow ← decay·shadow + (1 − decay)·param`` after every optimizer step, in float32."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().float().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        """Move the averages one step towards the current weights."""
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights by parameter name (float32)."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore averages saved by :meth:`state_dict`."""
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"the EMA checkpoint lacks {missing[:5]}; it was saved for another model setup")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])

    def values(self, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The averages cast to the dtypes of ``like`` (a model state dict)."""
        return {k: v.to(like[k].dtype) for k, v in self.shadow.items() if k in like}
