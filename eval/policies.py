"""Reference policies with a session's interface: Meta-World's scripted experts (the upper bound)
and uniform random actions (the lower bound).

Both answer like :class:`emcot.runtime.PolicySession` — ``reset(instruction)``, then
``step(observation: emcot.Observation) -> PolicyStep`` (``.actions [n, 4]``, ``.replanned``,
``.reason``, ``.trace`` (None), ``.timings``, ``.plan_id``) — so rollouts drive them exactly like
a model.

API:
- ``ScriptedExpert(task)`` — ``.action(raw_obs) -> np.ndarray[4]`` float32 in [−1, 1], from the
  full 39-d Meta-World observation (``EnvObservation.raw``).
- ``ExpertSession(task)`` — the expert as a session; it reads ``observation.state`` as the *raw*
  vector, which is what :data:`emcot.eval.adapters.EXPERT_ADAPTER` feeds it.
- ``RandomSession(action_dim=4, *, n_action_steps=1, seed=0)`` — uniform actions in [−1, 1];
  ``reset`` restarts its generator, so an episode repeats itself.
- ``PolicyStep`` — the step result (the fields of ``emcot.runtime.StepResult``, ``trace`` optional).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emcot.eval.envs.metaworld import ACTION_DIM, require_metaworld
from emcot.eval.envs.metaworld_tasks import check_task
from emcot.types import Observation


@dataclass
class PolicyStep:
    """One step of a reference policy, shaped like ``emcot.runtime.StepResult``."""

    actions: np.ndarray
    replanned: bool = False
    reason: str | None = None
    trace: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    plan_id: int = 0


class ScriptedExpert:
    """Meta-World's hand-written policy for one task (it reads object and goal positions)."""

    def __init__(self, task: str) -> None:
        self.task = check_task(task)
        require_metaworld()
        from metaworld.policies import ENV_POLICY_MAP

        # The experts' proportional gains saturate on purpose (the env clips); the warning they
        # raise for it would print on most steps.
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)
        policy_class: Any = ENV_POLICY_MAP[self.task]  # typed as the abstract base in metaworld
        self._policy = policy_class()

    def action(self, raw_obs: np.ndarray) -> np.ndarray:
        """The expert's 4-d action for the full observation vector, clipped to [−1, 1]."""
        raw = np.asarray(raw_obs, np.float64).reshape(-1)
        if raw.shape != (39,):
            raise ValueError(
                f"the scripted expert reads Meta-World's full 39-d observation (EnvObservation.raw), got shape {raw.shape}"
            )
        return np.clip(np.asarray(self._policy.get_action(raw), np.float32), -1.0, 1.0)


class ExpertSession:
    """The scripted expert behind a session's ``reset``/``step``; one action per step."""

    name = "expert"
    n_action_steps = 1

    def __init__(self, task: str) -> None:
        self.expert = ScriptedExpert(task)
        self.instruction: str | None = None

    def reset(self, instruction: str) -> None:
        """Start an episode (the expert ignores the instruction: it knows its task)."""
        self.instruction = instruction

    def step(self, observation: Observation) -> PolicyStep:
        """One action from ``observation.state``, which must be the raw observation vector."""
        if observation.state is None:
            raise ValueError(
                "ExpertSession needs the raw observation as state; use eval.adapters.EXPERT_ADAPTER"
            )
        started = time.perf_counter()
        action = self.expert.action(observation.state)
        return PolicyStep(actions=action[None], timings={"step": time.perf_counter() - started})


class RandomSession:
    """Uniform random actions in [−1, 1], ``n_action_steps`` per step, repeatable per episode."""

    name = "random"

    def __init__(self, action_dim: int = ACTION_DIM, *, n_action_steps: int = 1, seed: int = 0) -> None:
        if action_dim < 1 or n_action_steps < 1:
            raise ValueError(f"action_dim and n_action_steps must be ≥ 1, got {action_dim}, {n_action_steps}")
        self.action_dim = action_dim
        self.n_action_steps = n_action_steps
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def reset(self, instruction: str) -> None:
        """Start an episode: the generator restarts from ``seed``."""
        self._rng = np.random.default_rng(self.seed)

    def step(self, observation: Observation) -> PolicyStep:
        """A chunk of ``n_action_steps`` random actions (the observation is not looked at)."""
        started = time.perf_counter()
        actions = self._rng.uniform(-1.0, 1.0, (self.n_action_steps, self.action_dim)).astype(np.float32)
        return PolicyStep(actions=actions, timings={"step": time.perf_counter() - started})
