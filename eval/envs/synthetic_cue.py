"""The cue task (:mod:`emcot.synthetic.cue`) as an environment, and its scripted expert as a session.

A memory-dependent push: the goal side is shown only in the first frame. Task ``synthetic-cue``,
camera ``head`` (32 px by default), state = gripper xy and block xy, actions = gripper and block
targets (4 numbers in table units). ``raw`` adds the goal's x, which only the expert reads.

API:
- ``SyntheticCueEnv(config=None)`` — an :class:`~emcot.eval.envs.base.Env`.
- ``CueExpertSession(horizon=8)`` — the expert behind a session's ``reset``/``step``; it reads
  ``observation.state`` as the raw vector (what ``EXPERT_ADAPTER`` feeds) and returns its chunk.
"""

from __future__ import annotations

import time

import numpy as np

from emcot.eval.envs.base import EnvObservation, StepOutcome
from emcot.synthetic.cue import CUE_SIDES, CUE_TASK, CueConfig, CueWorld, expert_chunk
from emcot.types import Observation

ACTION_DIM = 4
STATE_DIM = 4


class SyntheticCueEnv:
    """One cue-task scene per seed (see the module docstring)."""

    task = CUE_TASK

    def __init__(self, config: CueConfig | None = None) -> None:
        self.world = CueWorld(config)
        self.config = self.world.config
        self.cameras: tuple[str, ...] = (self.config.world.camera,)
        self.max_steps = self.config.max_steps
        self.instruction = ""
        self._started = False
        self._success = False

    def reset(self, seed: int) -> EnvObservation:
        """A new scene drawn from ``seed``: colour, cued side, block and gripper positions."""
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.world.reset(int(seed))
        self.instruction = self.world.instruction
        self._started, self._success = True, False
        return self.observe()

    def observe(self) -> EnvObservation:
        """The camera frame (cue included during the first ``cue_steps``) and the state."""
        if not self._started:
            raise ValueError("call reset(seed) before observe() or step(action)")
        return EnvObservation(
            images={self.cameras[0]: self.world.frame()}, state=self.world.state(), raw=self.world.raw()
        )

    def step(self, action: np.ndarray) -> StepOutcome:
        """Apply one action (gripper target xy, block target xy)."""
        if not self._started:
            raise ValueError("call reset(seed) before step(action)")
        if self.world.steps >= self.max_steps:
            raise ValueError(f"the episode reached its {self.max_steps}-step cap; call reset(seed)")
        vector = np.asarray(action, np.float32).reshape(-1)
        if vector.shape != (ACTION_DIM,) or not np.isfinite(vector).all():
            raise ValueError(
                f"cue-task actions are 4 finite numbers (gripper xy, block xy), got {np.shape(action)}"
            )
        solved = self.world.step(vector)
        self._success = self._success or solved
        goal = CUE_SIDES[self.world.side]
        reward = -abs(float(self.world.block[0]) - goal) + (1.0 if solved else 0.0)
        return StepOutcome(
            observation=self.observe(),
            reward=reward,
            success=solved,
            truncated=self.world.steps >= self.max_steps,
        )

    @property
    def success(self) -> bool:
        """Whether any step of this episode solved the task."""
        return self._success

    def close(self) -> None:
        """Nothing to free: the world is drawn with numpy."""


class CueExpertSession:
    """The cue task's scripted expert with a session's interface (it knows the side from ``raw``)."""

    name = "expert"

    def __init__(self, horizon: int = 8, config: CueConfig | None = None) -> None:
        self.horizon = horizon
        self.config = config or CueConfig()
        self.n_action_steps = horizon

    def reset(self, instruction: str) -> None:
        """Start an episode (the expert ignores the instruction)."""

    def step(self, observation: Observation):
        """The expert's chunk from ``observation.state``, which must be the raw vector."""
        from emcot.eval.policies import PolicyStep

        if observation.state is None or np.asarray(observation.state).shape != (STATE_DIM + 1,):
            raise ValueError(
                "CueExpertSession needs the raw observation (5 numbers) as state; use EXPERT_ADAPTER"
            )
        started = time.perf_counter()
        chunk = expert_chunk(np.asarray(observation.state, np.float32), self.config, self.horizon)
        return PolicyStep(actions=chunk, timings={"step": time.perf_counter() - started})
