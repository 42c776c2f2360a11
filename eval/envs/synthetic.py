"""The synthetic pushing world as an environment, for closed-loop runs without a simulator.

The scene of :mod:`emcot.synthetic.world`: a coloured block on a grey table, a top-down camera,
a gripper that must push the block to one side. An action is what the synthetic policy predicts,
4 numbers in table units: the gripper's next position and the block's next position. The gripper
goes where it is told (within ``max_move`` per step); the block moves toward its commanded
position only when the gripper touches it (within ``contact`` of its centre) as the step begins,
so the policy must reach the block before it can push. Success: the block's centre within ``tolerance`` of the goal
side. Seeds draw the scene as ``synthetic_samples`` draws training scenes.

API:
- ``SyntheticPushConfig(world=SyntheticConfig(), max_steps=48, max_move=0.15, contact=0.12, tolerance=0.08)``.
- ``SyntheticPushEnv(config=None)`` — an :class:`~emcot.eval.envs.base.Env` (task
  ``synthetic-push``, camera ``head``; state = gripper xy, block xy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emcot.eval.envs.base import EnvObservation, StepOutcome
from emcot.io_utils import AT_LEAST_ONE, check_fields
from emcot.synthetic.world import COLORS, SIDES, SyntheticConfig, push_step, render

TASK = "synthetic-push"
ACTION_DIM = 4


@dataclass(frozen=True)
class SyntheticPushConfig:
    """The world's look, the episode cap and the push dynamics (distances in table units, 0–1)."""

    world: SyntheticConfig = field(default_factory=SyntheticConfig)
    max_steps: int = 48
    max_move: float = 0.15
    contact: float = 0.12
    tolerance: float = 0.08

    def __post_init__(self) -> None:
        check_fields(self, "SyntheticPushConfig", max_steps=AT_LEAST_ONE)
        for name in ("max_move", "contact", "tolerance"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"SyntheticPushConfig.{name} must lie in (0, 1], got {getattr(self, name)}")


class SyntheticPushEnv:
    """One pushing scene per seed (see the module docstring)."""

    task = TASK

    def __init__(self, config: SyntheticPushConfig | None = None) -> None:
        self.config = config or SyntheticPushConfig()
        self.cameras = (self.config.world.camera,)
        self.max_steps = self.config.max_steps
        self.instruction = ""
        self.color, self.side = "red", "left"
        self.gripper = np.zeros(2, np.float32)
        self.block = np.zeros(2, np.float32)
        self._steps = -1
        self._success = False

    def reset(self, seed: int) -> EnvObservation:
        """A new scene drawn from ``seed``: colour, goal side, block and gripper positions."""
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        rng = np.random.default_rng(int(seed))
        colors, sides = list(COLORS), list(SIDES)
        self.color = colors[rng.integers(len(colors))]
        self.side = sides[rng.integers(len(sides))]
        self.block = rng.uniform(0.3, 0.7, 2).astype(np.float32)
        self.gripper = rng.uniform(0.1, 0.9, 2).astype(np.float32)
        self.instruction = f"push the {self.color} block to the {self.side}"
        self._steps, self._success = 0, False
        return self.observe()

    def observe(self) -> EnvObservation:
        """The camera frame and the state (gripper xy, block xy)."""
        if self._steps < 0:
            raise ValueError("call reset(seed) before observe() or step(action)")
        image = render(self.config.world, self.color, self.block, self.gripper)
        state = np.concatenate([self.gripper, self.block]).astype(np.float32)
        return EnvObservation(images={self.cameras[0]: image}, state=state, raw=state.astype(np.float64))

    def _solved(self) -> bool:
        # each side fixes one coordinate of the goal (x for left/right, y for top/bottom)
        axis, goal = next((i, v) for i, v in enumerate(SIDES[self.side]) if v is not None)
        return abs(float(self.block[axis]) - goal) <= self.config.tolerance

    def step(self, action: np.ndarray) -> StepOutcome:
        """Move the gripper toward ``action[:2]``; a touched block moves toward ``action[2:]``."""
        if self._steps < 0:
            raise ValueError("call reset(seed) before step(action)")
        if self._steps >= self.max_steps:
            raise ValueError(f"the episode reached its {self.max_steps}-step cap; call reset(seed)")
        vector = np.asarray(action, np.float32).reshape(-1)
        if vector.shape != (ACTION_DIM,) or not np.isfinite(vector).all():
            raise ValueError(
                f"synthetic actions are 4 finite numbers (gripper xy, block xy), got {np.shape(action)}"
            )
        self.gripper, self.block = push_step(
            self.gripper, self.block, vector, max_move=self.config.max_move, contact=self.config.contact
        )
        self._steps += 1
        solved = self._solved()
        self._success = self._success or solved
        reward = -float(np.linalg.norm(self.gripper - self.block)) + (1.0 if solved else 0.0)
        return StepOutcome(
            observation=self.observe(), reward=reward, success=solved, truncated=self._steps >= self.max_steps
        )

    @property
    def success(self) -> bool:
        """Whether any step of this episode solved the task."""
        return self._success

    def close(self) -> None:
        """Nothing to free: the world is drawn with numpy."""
