"""`PolicySession`: a robot's control loop over one policy, re-planning only when a rule fires.

A planning step runs the whole trace (reasoning, subgoal, actions) and keeps its plan. Other steps
prefill the new observation, teacher-force the kept plan as clean segments (exactly the training
layout) and run only the action flow (DESIGN §5).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emcot.inference.plan import KeptPlan
from emcot.inference.trace import Trace
from emcot.io_utils import check_value
from emcot.policy.policy import EmCoTPolicy
from emcot.runtime.rules import DEFAULT_RULES, ReplanRule, StepContext
from emcot.sequence.layouts import TraceMode
from emcot.types import Observation


@dataclass
class StepResult:
    """One session step: ``actions`` in robot units (``n_action_steps`` of the chunk), whether it
    re-planned and which rule fired (``reason``), its ``trace`` and per-stage ``timings``."""

    actions: np.ndarray
    replanned: bool
    reason: str | None
    trace: Trace
    timings: dict[str, float] = field(default_factory=dict)


class PolicySession:
    """``reset(instruction)``, then ``step(observation)`` per action chunk; ``infer(obs_dict)`` is
    openpi's ``BasePolicy`` contract. Sessions share nothing but the policy's weights.

    ``replan``: the rules to ask (default: on request, instruction changed, plan 8 steps old).
    ``seed``: step ``i`` uses ``seed + i``, so a fresh session with the same seed repeats itself.
    """

    def __init__(
        self,
        policy: EmCoTPolicy,
        replan: Sequence[ReplanRule] = DEFAULT_RULES,
        *,
        mode: TraceMode | str = TraceMode.FULL,
        n_action_steps: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.policy = policy
        self.rules = tuple(replan)
        for rule in self.rules:
            if not isinstance(rule, ReplanRule):
                raise ValueError(f"replan rules need a name and fires(context); got {rule!r}")
        self.mode = TraceMode.parse(mode)
        horizon = policy.config.action.horizon
        self.n_action_steps = check_value("n_action_steps", n_action_steps, int | None)
        if self.n_action_steps is not None and not 1 <= self.n_action_steps <= horizon:
            raise ValueError(
                f"n_action_steps must lie in [1, {horizon}] (the chunk length), got {n_action_steps}"
            )
        self.seed = check_value("seed", seed, int | None)
        self.instruction: str | None = None
        self.plan: KeptPlan | None = None
        self.steps = 0
        self._requested = False

    def reset(self, instruction: str) -> None:
        """Start an episode: forget the plan and the step count."""
        self.instruction = self.policy.processor.check_instruction(instruction)
        self.plan = None
        self.steps = 0
        self._requested = False

    def replan(self) -> None:
        """Ask for a new plan on the next step (the :class:`~emcot.runtime.rules.OnRequest` rule)."""
        self._requested = True

    def _reason_to_replan(self) -> str | None:
        if self.plan is None:
            return "no_plan"
        context = StepContext(
            step=self.steps,
            plan_age=self.steps - self.plan.made_at,
            instruction_changed=self.plan.instruction != self.instruction,
            requested=self._requested,
        )
        return next((rule.name for rule in self.rules if rule.fires(context)), None)

    def step(self, observation: Observation, instruction: str | None = None) -> StepResult:
        """One control step; ``instruction`` (optional) replaces the episode's instruction."""
        if instruction is not None:
            self.instruction = self.policy.processor.check_instruction(instruction)
        if self.instruction is None:
            raise ValueError("call reset(instruction) before step(observation)")
        seed = None if self.seed is None else self.seed + self.steps
        reason = self._reason_to_replan()
        started = time.perf_counter()
        if reason is not None or self.plan is None:
            trace, state = self._plan_step(observation, seed)
            self.plan = KeptPlan.from_step(trace, state, made_at=self.steps)
            self._requested = False
        else:
            trace, _ = self.policy.act_on_plan(observation, self.plan, seed=seed)
        timings = {**trace.timings, "step": time.perf_counter() - started}
        self.steps += 1
        actions = trace.actions if self.n_action_steps is None else trace.actions[: self.n_action_steps]
        return StepResult(actions, reason is not None, reason, trace, timings)

    def _plan_step(self, observation: Observation, seed: int | None):
        assert self.instruction is not None
        for event in self.policy.stream_trace(observation, self.instruction, mode=self.mode, seed=seed):
            if event.kind == "done" and event.trace is not None and event.state is not None:
                return event.trace, event.state
        raise RuntimeError("trace generation ended without a result")

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """openpi ``BasePolicy.infer``: ``{"images": {camera: HxWx3 uint8}, "state": ..., "prompt": str}``
        → ``{"actions", "reasoning", "replanned", "policy_timing"}``. A new ``prompt`` replaces the
        instruction (and so re-plans through :class:`InstructionChanged`)."""
        if not isinstance(obs, Mapping):
            raise ValueError(f"infer takes an observation dict, got {type(obs).__name__}")
        unknown = sorted(set(obs) - {"images", "state", "prompt"})
        if unknown:
            raise ValueError(f"unknown observation keys {unknown}; expected 'images', 'state', 'prompt'")
        if "images" not in obs:
            raise ValueError("the observation dict needs 'images': {camera_name: HxWx3 uint8 array}")
        prompt = obs.get("prompt")
        if prompt is not None and self.instruction is None:
            self.reset(prompt)
        result = self.step(Observation(images=dict(obs["images"]), state=obs.get("state")), prompt)
        return {
            "actions": result.actions,
            "reasoning": result.trace.reasoning,
            "replanned": result.replanned,
            "policy_timing": {f"{k}_ms": v * 1000.0 for k, v in result.timings.items()},
        }
