"""Rectified flow matching: time sampling, interpolation, targets, schedules, guided Euler sampling.

Convention (DESIGN §4, same as HALO/BAGEL and openpi):

    x_t = (1 - t) * x0 + t * eps,   t in [0, 1], t = 1 is pure noise,
    target velocity v = eps - x0 = d x_t / d t,

and sampling integrates from t = 1 to t = 0 with Euler steps ``x_next = x_t + (t_next - t) * v``.
Its settings (:class:`FlowSamplerConfig`) live with the model configuration in :mod:`emcot.config`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

import torch

from emcot.config import TIME_DISTRIBUTIONS, FlowSamplerConfig


@overload
def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor: ...
@overload
def shift_time(t: float, shift: float) -> float: ...
def shift_time(t: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Shift times toward noise: ``t' = s·t / (1 + (s − 1)·t)``; fixes 0 and 1, ``s > 1`` raises t."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}.")
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_time(
    n: int,
    *,
    distribution: str = "logit_normal",
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``n`` training times in (0, 1) (float32), then apply :func:`shift_time`.

    - ``logit_normal``: ``sigmoid(N(0, 1))`` (HALO/BAGEL), mean 0.5.
    - ``beta``: π0's ``Beta(1.5, 1)·0.999 + 0.001``. openpi uses the same convention as we do
      (``x_t = t·noise + (1 − t)·actions``, t = 1 is noise), so the formula carries over
      unchanged: density ∝ t^0.5 on [0.001, 1], i.e. more mass at the noisy end. Sampled by
      inverse CDF (``U^(1/1.5)``) so ``generator`` controls it.
    - ``uniform``: U(0, 1).
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}.")
    if distribution not in TIME_DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {TIME_DISTRIBUTIONS}, got {distribution!r}.")
    if device is None and generator is not None:
        device = generator.device
    if distribution == "logit_normal":
        t = torch.sigmoid(torch.randn(n, generator=generator, device=device))
    elif distribution == "beta":
        u = torch.rand(n, generator=generator, device=device)
        t = u.pow(1.0 / 1.5) * 0.999 + 0.001
    else:
        t = torch.rand(n, generator=generator, device=device)
    return shift_time(t, shift)


def _per_sample_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Time as a tensor broadcastable over ``x`` ([B, ...]): scalar, [B] or already [B, 1, ...]."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    if t.ndim == 1:
        if t.shape[0] != x.shape[0]:
            raise ValueError(
                f"t has {t.shape[0]} entries but x has batch size {x.shape[0]}; pass one t per sample."
            )
        return t.reshape(-1, *([1] * (x.ndim - 1)))
    if t.ndim != x.ndim:
        raise ValueError(f"t of shape {tuple(t.shape)} does not broadcast over x of shape {tuple(x.shape)}.")
    return t


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Noisy sample ``x_t = (1 − t)·x0 + t·noise``; ``t`` is a scalar or one value per sample."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape.")
    t = _per_sample_time(t, x0)
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Regression target ``v = noise − x0`` (the time derivative of :func:`interpolate`)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape.")
    return noise - x0


def time_schedule(
    num_steps: int, shift: float = 1.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """``num_steps + 1`` float32 times from 1 down to 0, uniform then shifted (more steps at high noise)."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}.")
    # Built in float64 so the shift formula hits the endpoints exactly before rounding.
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift_time(t, shift).to(dtype=torch.float32, device=device)


@dataclass
class GuidedVelocity:
    """Velocities of one step under the guidance branches.

    ``cond`` sees everything; ``no_text`` drops the text condition; ``no_image`` drops the image
    condition (BAGEL's ``cfg_text``/``cfg_img`` contexts). Absent branches are skipped.
    """

    cond: torch.Tensor
    no_text: torch.Tensor | None = None
    no_image: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("no_text", "no_image"):
            other = getattr(self, name)
            if other is not None and other.shape != self.cond.shape:
                raise ValueError(
                    f"GuidedVelocity.{name} has shape {tuple(other.shape)} but cond has {tuple(self.cond.shape)}."
                )


def guidance_active(cfg: FlowSamplerConfig, t: float) -> bool:
    """Whether guidance applies at time ``t``: ``t_lo < t <= t_hi`` (BAGEL's interval test)."""
    lo, hi = cfg.guidance_interval
    return lo < t <= hi


def combine_guidance(v: GuidedVelocity, cfg: FlowSamplerConfig, t: float) -> torch.Tensor:
    """Classifier-free-guided velocity, BAGEL's maths.

    Inside the interval, with ``s_T``/``s_I`` the text/image scales::

        v_T = v_no_text + s_T · (v_cond − v_no_text)        (if no_text is given and s_T != 1)
        v_G = v_no_image + s_I · (v_T − v_no_image)         (if no_image is given and s_I != 1)

    With ``renorm="global"`` the result is multiplied by
    ``clamp(‖v_cond‖ / (‖v_G‖ + 1e-8), renorm_min, 1)``, where the norm runs over all elements of
    each sample (dim 0 is the batch; BAGEL, which has no batch dim, uses the whole tensor — pass a
    packed single sequence as batch 1 for identical results). Outside the interval, or with no
    active term, the answer is ``v.cond`` itself.
    """
    # The branches that take part: given, and with a scale that is not the identity.
    no_text = v.no_text if cfg.text_guidance != 1.0 else None
    no_image = v.no_image if cfg.image_guidance != 1.0 else None
    if (no_text is None and no_image is None) or not guidance_active(cfg, t):
        return v.cond
    guided = v.cond
    if no_text is not None:
        guided = no_text + cfg.text_guidance * (guided - no_text)
    if no_image is not None:
        guided = no_image + cfg.image_guidance * (guided - no_image)
    if cfg.renorm == "global":
        dims = tuple(range(1, guided.ndim))
        cond_norm = torch.linalg.vector_norm(v.cond, dim=dims, keepdim=True) if dims else v.cond.abs()
        guided_norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True) if dims else guided.abs()
        guided = guided * (cond_norm / (guided_norm + 1e-8)).clamp(min=cfg.renorm_min, max=1.0)
    return guided


VelocityFn = Callable[[torch.Tensor, float], "torch.Tensor | GuidedVelocity"]


def euler_sample(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    cfg: FlowSamplerConfig,
    *,
    on_step: Callable[[int, float, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Integrate from ``noise`` at t = 1 to a sample at t = 0 over ``time_schedule(cfg)``.

    ``velocity_fn(x_t, t)`` returns a velocity tensor or a :class:`GuidedVelocity`, which is
    combined with :func:`combine_guidance`. ``on_step(i, t_next, x_next)`` is called after every
    step (progress bars, streaming previews).
    """
    schedule = time_schedule(cfg.num_steps, cfg.shift).tolist()
    x = noise
    for i in range(cfg.num_steps):
        t, t_next = schedule[i], schedule[i + 1]
        out = velocity_fn(x, t)
        v = combine_guidance(out, cfg, t) if isinstance(out, GuidedVelocity) else out
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"velocity_fn must return a tensor shaped like x_t {tuple(x.shape)}, got {got}.")
        x = x + (t_next - t) * v
        if on_step is not None:
            on_step(i, t_next, x)
    return x
