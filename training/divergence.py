"""What a run does when training diverges, and the finiteness checks made before weights are written.

A step diverges when its loss or its gradient norm is not finite. Both are the same on every
process (the loss terms are summed over processes before they are looked at, the gradient norm
is taken after the gradients are reduced), so every process takes the same decision and a
distributed run never hangs with one process stopped and the others waiting.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import torch


class OnDivergence(str, Enum):
    """``train.on_divergence``: stop the run at the first non-finite step, or skip such steps."""

    STOP = "stop"
    SKIP = "skip"


class DivergenceError(ValueError):
    """Training produced a non-finite loss, gradient norm or weights."""


def any_process(accelerator, flag: bool) -> bool:
    """Whether ``flag`` is True on any process (collective: every process must call it)."""
    if accelerator.num_processes == 1:
        return flag
    vec = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(vec, reduction="sum").item() > 0)


@dataclass(frozen=True)
class StepHealth:
    """The numbers of one optimizer step that decide whether its update is applied.

    ``losses`` holds the weighted loss and its terms (global over processes); ``loss_finite`` also
    covers what the terms cannot show (e.g. a NaN weight reached through a zero-weighted term).
    ``overflow_ok``: a mixed-precision grad scaler skips overflowing steps itself, so a non-finite
    gradient norm with a finite loss is its business, not a divergence.
    """

    step: int
    losses: dict[str, float]
    grad_norm: float
    lr: float
    loss_finite: bool = True
    overflow_ok: bool = False

    @property
    def finite(self) -> bool:
        """True when the update may be applied."""
        loss_ok = self.loss_finite and all(math.isfinite(v) for v in self.losses.values())
        return loss_ok and (self.overflow_ok or math.isfinite(self.grad_norm))

    def describe(self) -> str:
        """``loss nan (text 1.2, action nan), gradient norm inf, lr 0.5``."""
        loss = self.losses.get("loss", float("nan"))
        terms = ", ".join(f"{k} {v:.4g}" for k, v in self.losses.items() if k != "loss")
        return f"loss {loss:.4g} ({terms}), gradient norm {self.grad_norm:.4g}, lr {self.lr:.3g}"


@dataclass
class DivergenceGuard:
    """Applies ``train.on_divergence``: raises on a bad step, or counts it as skipped.

    Even when skipping, ``max_consecutive`` bad steps in a row stop the run: by then the weights
    or the data, not one unlucky batch, are the problem.
    """

    policy: OnDivergence = OnDivergence.STOP
    max_consecutive: int = 10
    skipped: int = 0
    consecutive: int = field(default=0, init=False)

    def apply_update(self, health: StepHealth) -> bool:
        """True when the step's update should be applied; False to skip it; raises to stop."""
        if health.finite:
            self.consecutive = 0
            return True
        hint = (
            "Lower optim.lr (or set optim.clip_grad_norm), check the data for NaN/inf values, "
            "and resume from the last checkpoint with --resume"
        )
        if self.policy is OnDivergence.STOP:
            raise DivergenceError(
                f"training diverged at step {health.step}: {health.describe()}. {hint}; "
                "or set train.on_divergence: skip to skip such steps"
            )
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise DivergenceError(
                f"training diverged: {self.consecutive} consecutive steps up to step {health.step} were "
                f"not finite (train.max_skipped_steps is {self.max_consecutive}); last: {health.describe()}. {hint}"
            )
        warnings.warn(f"skipping step {health.step}: {health.describe()}", stacklevel=2)
        return False


def nonfinite_tensors(tensors: Mapping, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors holding NaN or inf in a (nested) mapping of tensors."""
    bad = []
    for key, value in tensors.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            bad += nonfinite_tensors(value, f"{name}.")
        elif (
            isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
        ):
            bad.append(name)
    return bad


def refuse_nonfinite(accelerator, parts: Mapping[str, Mapping | None], target: str) -> None:
    """Raise on every process when a tensor of ``parts`` (held by the main process) is not finite.

    Called before ``target`` is written, so a diverged run never leaves weights that look usable.
    """
    bad = []
    if accelerator.is_main_process:
        for what, tensors in parts.items():
            bad += [f"{what} {name}" for name in nonfinite_tensors(tensors or {})]
    if any_process(accelerator, bool(bad)):
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DivergenceError(
            f"not writing {target}: the training state holds NaN/inf values ({shown or 'on the main process'}). "
            "Training diverged; lower optim.lr and resume from the last good checkpoint with --resume"
        )
