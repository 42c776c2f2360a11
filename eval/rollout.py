"""Closed-loop rollouts: an environment and a session-like policy, one episode at a time.

The policy is always driven through a session's interface (``reset(instruction)``,
``step(observation) -> StepResult``-like), never through the model, so a rollout measures what a
robot would get: every action of the returned chunk runs (the session's ``n_action_steps`` decides
how many), re-planning happens when the session's rules say so.

API:
- ``SessionLike`` / ``StepLike`` — the protocols (``emcot.runtime.PolicySession`` and the reference
  policies of :mod:`emcot.eval.policies` satisfy them).
- ``Agent(name, session, adapter)`` — a session and the adapter that feeds it.
- ``RolloutConfig(max_steps=500, stop_on_success=True, frame_every=20, action_dim=4)``; the record
  keeps the frames of every k-th env step, of every re-plan (what the plan was made from, and the
  real scene that its imagined subgoal is compared with in the viewer) and of the last step.
- ``run_episode(env, agent, *, seed, episode=0, config=RolloutConfig()) -> EpisodeRecord``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from emcot.eval.adapters import ObservationAdapter
from emcot.eval.envs.base import Env, EnvObservation
from emcot.eval.records import EpisodeRecord, FrameRecord, PlanRecord, PolicyStepRecord
from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, check_fields
from emcot.types import Observation


class StepLike(Protocol):
    """What a session step returns (the fields of ``emcot.runtime.StepResult``)."""

    actions: np.ndarray
    replanned: bool
    reason: str | None
    trace: Any
    timings: dict[str, float]


class SessionLike(Protocol):
    """A policy behind a session's interface."""

    def reset(self, instruction: str) -> None:
        """Start an episode."""
        ...

    def step(self, observation: Observation) -> StepLike:
        """One policy step."""
        ...


@dataclass(frozen=True)
class Agent:
    """A session, the adapter feeding it, and the name results are filed under (the mode)."""

    name: str
    session: SessionLike
    adapter: ObservationAdapter


@dataclass(frozen=True)
class RolloutConfig:
    """``max_steps``: env steps per episode; ``stop_on_success``: end at the first success;
    ``frame_every``: keep every k-th rendered frame (0: only the re-plan and last frames);
    ``action_dim``: the env's."""

    max_steps: int = 500
    stop_on_success: bool = True
    frame_every: int = 20
    action_dim: int = 4

    def __post_init__(self) -> None:
        check_fields(
            self, "RolloutConfig", max_steps=AT_LEAST_ONE, frame_every=NON_NEGATIVE, action_dim=AT_LEAST_ONE
        )


def _chunk(result: StepLike, action_dim: int) -> np.ndarray:
    actions = np.asarray(result.actions, np.float32)
    if actions.ndim == 1:
        actions = actions[None]
    if actions.ndim != 2 or actions.shape[1] != action_dim or len(actions) == 0:
        raise ValueError(
            f"the policy returned actions of shape {np.shape(result.actions)}; the environment needs "
            f"[n, {action_dim}] (n ≥ 1)"
        )
    return actions


def _plan_record(result: StepLike, *, env_step: int, policy_step: int) -> PlanRecord | None:
    trace = result.trace
    if trace is None:
        return None
    subgoal = getattr(trace, "subgoal", None)
    return PlanRecord(
        env_step=env_step,
        policy_step=policy_step,
        reason=result.reason,
        reasoning=str(getattr(trace, "reasoning", "")),
        subgoal=None if subgoal is None else np.asarray(subgoal.convert("RGB")),
    )


def _predicted(result: StepLike) -> list[list[float]]:
    chunk = getattr(result.trace, "actions", None)
    return [] if chunk is None else np.asarray(chunk, np.float32).tolist()


def _timings(result: StepLike) -> dict[str, float]:
    timings: Mapping[str, float] = result.timings or {}
    return {key: float(value) for key, value in timings.items()}


class _Episode:
    """The mutable state of one rollout (kept apart so :func:`run_episode` stays a short loop)."""

    def __init__(self, record: EpisodeRecord, config: RolloutConfig, max_steps: int) -> None:
        self.record = record
        self.config = config
        self.max_steps = max_steps
        self.kept_steps: set[int] = set()

    def keep_frames(self, observation: EnvObservation, step: int, *, always: bool = False) -> None:
        """Keep the observation's frames, seen at env step ``step``, on k-th steps (or ``always``)."""
        every = self.config.frame_every
        if step in self.kept_steps or not (always or (every and step % every == 0)):
            return
        self.kept_steps.add(step)
        self.record.frames += [FrameRecord(step, name, image) for name, image in observation.images.items()]

    def policy_step(self, result: StepLike, *, env_step: int, actions: int) -> None:
        """Record one policy step and, when it re-planned, its plan."""
        record = self.record
        index = len(record.policy_steps)
        record.policy_steps.append(
            PolicyStepRecord(
                env_step, bool(result.replanned), result.reason, actions, _timings(result), _predicted(result)
            )
        )
        if result.replanned:
            plan = _plan_record(result, env_step=env_step, policy_step=index)
            if plan is not None:
                record.plans.append(plan)

    def env_step(self, success: bool, reward: float) -> bool:
        """Record one env step; True when the episode is over."""
        record = self.record
        record.steps += 1
        record.step_success.append(success)
        record.rewards.append(reward)
        if success and record.first_success is None:
            record.first_success = record.steps
            record.success = True
        return (success and self.config.stop_on_success) or record.steps >= self.max_steps


def run_episode(
    env: Env, agent: Agent, *, seed: int, episode: int = 0, config: RolloutConfig | None = None
) -> EpisodeRecord:
    """One episode of ``agent`` in ``env`` from the scene ``seed`` fixes."""
    config = config or RolloutConfig()
    started = time.perf_counter()
    observation = env.reset(seed)
    agent.session.reset(env.instruction)
    record = EpisodeRecord(
        task=env.task, mode=agent.name, episode=episode, seed=seed, instruction=env.instruction
    )
    state = _Episode(record, config, min(config.max_steps, env.max_steps))
    state.keep_frames(observation, 0)
    done = False
    while not done:
        result = agent.session.step(agent.adapter(observation))
        actions = _chunk(result, config.action_dim)
        start, executed = record.steps, 0
        if result.replanned and result.trace is not None:
            state.keep_frames(observation, start, always=True)  # what the new plan was made from
        for action in actions:
            outcome = env.step(action)
            executed += 1
            record.actions.append(action.tolist())
            observation = outcome.observation
            done = state.env_step(outcome.success, outcome.reward)
            if done:
                break
            state.keep_frames(observation, record.steps)
        state.policy_step(result, env_step=start, actions=executed)
    state.keep_frames(observation, record.steps, always=True)
    record.wall_s = time.perf_counter() - started
    return record
