"""Exponential moving average of the trainable weights."""

from __future__ import annotations

import torch
from torch import nn

from emcot.training.sharding import full_tensor, shard_like


class EMA:
    """``shadow ← decay·shadow + (1 − decay)·param`` after every optimizer step, in float32.

    Under FSDP each process averages its own shard; :meth:`state_dict` gathers full tensors.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().float().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        """Move the averages one step towards the current weights."""
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - self.decay)

    def state_dict(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """The full averaged weights by parameter name (float32, CPU).

        Every process must call it under FSDP (gathering is collective); those with ``keep`` False
        take part without holding the result.
        """
        out = {}
        for name, value in self.shadow.items():
            gathered = full_tensor(value)
            if keep:
                out[name] = gathered.cpu()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore averages saved by :meth:`state_dict`."""
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"the EMA checkpoint lacks {missing[:5]}; it was saved for another model setup")
        for name, value in self.shadow.items():
            value.copy_(shard_like(state[name], value))
