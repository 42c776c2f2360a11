"""Refusing non-finite outputs: a robot must never receive NaN actions, a user never a black image."""

from __future__ import annotations

import torch
from torch import nn


class NonFiniteOutputError(ValueError):
    """A generated action chunk or image holds NaN/inf; the message names the likely cause."""


def require_finite(values: torch.Tensor, what: str, model: nn.Module) -> torch.Tensor:
    """``values`` unchanged when every entry is finite; otherwise a :class:`NonFiniteOutputError`.

    The (rare) failure path looks for non-finite weights to tell a damaged checkpoint from a
    numerical overflow.
    """
    if bool(torch.isfinite(values).all()):
        return values
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        cause = (
            f"{len(bad)} of the model's weight tensors hold NaN/inf (e.g. {bad[:3]}): the checkpoint is "
            "damaged or comes from a diverged training run"
        )
    else:
        dtype = next(model.parameters()).dtype
        cause = (
            f"the weights are finite, so the computation overflowed in {dtype}; lower the guidance "
            "scales or run in float32"
        )
    raise NonFiniteOutputError(f"the {what} contains NaN or infinite values and was not returned: {cause}")
