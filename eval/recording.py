"""Recording one scripted attempt in a simulator: what runs the hand, and what is written down.

API:
- ``Expert`` — the protocol of a scripted policy: ``action(raw_obs) -> [4]`` from the full
  observation vector (Meta-World's ``ScriptedExpert``; tests hand in fakes).
- ``Wanderer(rng)`` — drives the hand to random waypoints of the table's workspace, each held for a
  random 15–40 steps with a random gripper command: a hand that goes nowhere the task asks.
- ``record_episode(env, expert, seed, action_noise=0.0, *, wander_steps=0) -> Attempt`` — one
  attempt until the first success or the step cap. The recorded action is always the expert's;
  what the env executes may differ (see the function).

Why wander: a demo's hand always heads for the object and the goal, so its place in the frame
predicts theirs. A camera localiser fitted on demos alone learnt that shortcut: driving the scripted
expert from its estimates (``bench/localised_expert.py``), reach's goal estimate ran ahead of the
hand, from 6 to 21 cm in x while the goal sat at 7. Frames with the hand elsewhere break the
correlation, and the expert's labels on them show the way back (as DART's noisy demos do, with a
larger detour).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from emcot.eval.envs.base import Env
from emcot.training.annotation.sim_rules import (
    GOAL_COLUMN,
    GRIPPER_COLUMN,
    OBJECT_COLUMN,
    SIM_INFO_KEYS,
    SIM_PREFIX,
)
from emcot.training.data.lerobot_writer import EpisodeData

# Waypoints are drawn from this box (metres; x across the table, y away from the robot, z up): it
# covers where Meta-World's objects and goals are placed, and the space above them.
WANDER_LOW = np.array([-0.25, 0.45, 0.05])
WANDER_HIGH = np.array([0.25, 0.85, 0.30])
WANDER_HOLD = (15, 40)  # steps a waypoint is kept, drawn uniformly
# Meta-World's scripted experts steer with proportional gains of 10–25 and saturate at ±1.
WANDER_GAIN = 10.0


class Expert(Protocol):
    """A scripted policy that reads the simulator's full observation vector."""

    def action(self, raw_obs: np.ndarray) -> np.ndarray:
        """The action for one observation."""
        ...


class Wanderer:
    """Steers the hand (``raw_obs[:3]``) to random waypoints; see the module docstring."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.target = np.zeros(3)
        self.grip = 0.0
        self.left = 0

    def action(self, raw_obs: np.ndarray) -> np.ndarray:
        """The step toward the current waypoint (a new one when its time is up), and the gripper."""
        if self.left == 0:
            self.target = self.rng.uniform(WANDER_LOW, WANDER_HIGH)
            self.grip = float(self.rng.choice([-1.0, 1.0]))
            self.left = int(self.rng.integers(WANDER_HOLD[0], WANDER_HOLD[1] + 1))
        self.left -= 1
        move = np.clip(WANDER_GAIN * (self.target - np.asarray(raw_obs[:3], np.float64)), -1.0, 1.0)
        return np.append(move, self.grip).astype(np.float32)


class Attempt(NamedTuple):
    """One recorded attempt: whether it succeeded, and its frames (None when they were not kept)."""

    success: bool
    episode: EpisodeData | None


def record_episode(
    env: Env, expert: Expert, seed: int, action_noise: float = 0.0, *, wander_steps: int = 0
) -> Attempt:
    """Run ``expert`` in ``env`` from ``seed`` until the first success or the step cap.

    The expert's own action is recorded at every step. What the env executes:
    - for the first ``wander_steps`` steps, a :class:`Wanderer`'s action instead (seeded by ``seed``);
    - with ``action_noise`` σ > 0, the action plus N(0, σ²) on the xyz dimensions (clipped to
      [-1, 1], seeded by ``seed``): DART-style demos that show how the expert recovers from states
      a clean demo never visits."""
    rng = np.random.default_rng([seed, 1])
    wanderer = Wanderer(np.random.default_rng([seed, 2]))
    observation = env.reset(seed)
    frames: dict[str, list[np.ndarray]] = {name: [] for name in env.cameras}
    states, actions = [], []
    columns = (GRIPPER_COLUMN, OBJECT_COLUMN, GOAL_COLUMN, *(SIM_PREFIX + key for key in SIM_INFO_KEYS))
    signals: dict[str, list] = {key: [] for key in columns}
    success = False
    for step in range(env.max_steps):
        action = np.asarray(expert.action(observation.raw), np.float32)
        for name in env.cameras:
            frames[name].append(observation.images[name])
        states.append(observation.state)
        actions.append(action)
        executed = wanderer.action(observation.raw) if step < wander_steps else action
        if action_noise > 0:
            executed = executed.copy()
            executed[:3] = np.clip(executed[:3] + rng.normal(0.0, action_noise, 3), -1.0, 1.0)
        outcome = env.step(executed)
        observation = outcome.observation
        signals[GRIPPER_COLUMN].append(observation.raw[3])
        signals[OBJECT_COLUMN].append(observation.raw[4:7])
        signals[GOAL_COLUMN].append(observation.raw[36:39])
        for key in SIM_INFO_KEYS:
            if key not in outcome.info:
                raise ValueError(f"the simulator's step info lacks {key!r}; it has {sorted(outcome.info)}.")
            signals[SIM_PREFIX + key].append(float(outcome.info[key]))
        if outcome.success or outcome.truncated:
            success = outcome.success
            break
    episode = EpisodeData(
        env.instruction,
        np.asarray(states, np.float32),
        np.asarray(actions, np.float32),
        {name: np.stack(f) for name, f in frames.items()},
        {key: np.asarray(v, np.float32) for key, v in signals.items()},
    )
    return Attempt(success, episode)
