"""The environment contract every simulator wrapper keeps, and its typed observations and outcomes.

API:
- ``EnvObservation(images: dict[str, HxWx3 uint8], state: float32 [state_dim], raw: np.ndarray)`` —
  ``raw`` is the simulator's full observation vector (what scripted experts read).
- ``StepOutcome(observation, reward: float, success: bool, info: dict, truncated: bool = False)``.
- ``Env`` (a runtime-checkable protocol): ``task``, ``instruction``, ``cameras``, ``max_steps``,
  ``reset(seed) -> EnvObservation``, ``observe() -> EnvObservation``,
  ``step(action) -> StepOutcome``, ``success`` (any step of the episode succeeded), ``close()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class EnvObservation:
    """What an environment shows at one step: upright camera frames, the robot state, the raw vector."""

    images: dict[str, np.ndarray]
    state: np.ndarray
    raw: np.ndarray

    def __post_init__(self) -> None:
        for name, image in self.images.items():
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"camera '{name}' frame must be uint8 (H, W, 3), got {image.dtype} {image.shape}"
                )


@dataclass(frozen=True)
class StepOutcome:
    """One environment step: the new observation, the reward, whether the task is solved at this
    step, the simulator's ``info`` and whether the episode hit its step cap."""

    observation: EnvObservation
    reward: float
    success: bool
    info: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False


@runtime_checkable
class Env(Protocol):
    """A single-task environment that rollouts drive step by step."""

    task: str
    instruction: str
    cameras: tuple[str, ...]
    max_steps: int

    def reset(self, seed: int) -> EnvObservation:
        """Start an episode whose initial scene is fixed by ``seed``."""
        ...

    def observe(self) -> EnvObservation:
        """The current observation (rendered again)."""
        ...

    def step(self, action: np.ndarray) -> StepOutcome:
        """Apply one action."""
        ...

    @property
    def success(self) -> bool:
        """Whether any step of the current episode solved the task."""
        ...

    def close(self) -> None:
        """Free the simulator and its renderer."""
        ...
