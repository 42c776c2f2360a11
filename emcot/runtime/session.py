"""`PolicySession`: a robot's control loop over one policy, re-planning only when a rule fires.

A planning step runs the whole trace (reasoning, subgoal, actions) and keeps its plan. Other steps
prefill the new observation, teacher-force the kept plan as clean segments (exactly the training
layout) and run only the action flow (DESIGN §5). With ``async_replan`` the planning trace runs in
a background thread while steps keep acting on the last plan; the new plan swaps in between steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emcot.inference.plan import KeptPlan
from emcot.inference.trace import Trace
from emcot.io_utils import check_value
from emcot.memory.history import HistoryBuffer
from emcot.policy.policy import EmCoTPolicy
from emcot.runtime.calibration import latent_distance
from emcot.runtime.rules import DEFAULT_RULES, ReplanRule, StepContext
from emcot.sequence.layouts import TraceMode
from emcot.types import HistoryStep, Observation


@dataclass
class StepResult:
    """One session step: ``actions`` in robot units (``n_action_steps`` of the chunk), whether they
    come from a new plan (``replanned``), which rule fired at this step (``reason``), the step's
    ``trace``, per-stage ``timings`` and ``plan_id``, the number of the plan the actions answer
    (0 for the session's first plan, counting up).

    In a synchronous session ``replanned`` is true exactly when a rule fired. With ``async_replan``
    a rule starts the thinking (``reason`` set, ``replanned`` false) and the first step that acts
    on the finished plan has ``replanned`` true."""

    actions: np.ndarray
    replanned: bool
    reason: str | None
    trace: Trace
    timings: dict[str, float] = field(default_factory=dict)
    plan_id: int = 0


@dataclass(frozen=True)
class _PlanRequest:
    observation: Observation
    instruction: str
    seed: int | None
    step: int
    history: tuple[HistoryStep, ...] = ()


class PolicySession:
    """``reset(instruction)``, then ``step(observation)`` per action chunk; ``infer(obs_dict)`` is
    openpi's ``BasePolicy`` contract. Sessions share nothing but the policy's weights.

    ``replan``: the rules to ask (default: on request, instruction changed, plan 8 steps old).
    ``seed``: step ``i`` uses ``seed + i``, so a fresh synchronous session with the same seed
    repeats itself bit for bit. ``async_replan``: think in a background thread (one per session)
    and act on the newest finished plan meanwhile; an asynchronous session is as deterministic as
    the thread's timing, so use ``close()`` (or ``with``) to stop the thread.

    A memory-enabled policy (``config.memory.history_length`` > 0) reads the episode so far: the
    session records every step's frame of the primary camera, state and executed actions in a
    bounded :class:`~emcot.memory.HistoryBuffer` and hands the selected steps to every trace.
    """

    def __init__(
        self,
        policy: EmCoTPolicy,
        replan: Sequence[ReplanRule] = DEFAULT_RULES,
        *,
        mode: TraceMode | str = TraceMode.FULL,
        n_action_steps: int | None = None,
        seed: int | None = None,
        async_replan: bool = False,
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
        self.async_replan = check_value("async_replan", async_replan, bool)
        self.instruction: str | None = None
        self.plan: KeptPlan | None = None
        self.plan_id = -1
        self.steps = 0
        self._requested = False
        self._worker: ThreadPoolExecutor | None = None
        self._thinking: Future[KeptPlan] | None = None
        self._lock = threading.Lock()
        memory = policy.config.memory
        self.history = HistoryBuffer(memory)
        self._history_camera = memory.history_camera or policy.cameras[0]
        if memory.uses_history and self._history_camera not in policy.cameras:
            raise ValueError(
                f"config.memory.history_camera '{memory.history_camera}' is not one of the policy's "
                f"cameras {policy.cameras}"
            )

    def reset(self, instruction: str) -> None:
        """Start an episode: forget the plan (and any plan still being thought) and the step count."""
        self.instruction = self.policy.processor.check_instruction(instruction)
        with self._lock:
            self._thinking = None
        self.plan = None
        self.steps = 0
        self._requested = False
        self.history.clear()

    def close(self) -> None:
        """Stop the background thinking thread (asynchronous sessions); the session stays usable."""
        with self._lock:
            worker, self._worker, self._thinking = self._worker, None, None
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PolicySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def thinking(self) -> bool:
        """Whether a plan is being thought in the background (asynchronous sessions)."""
        return self._thinking is not None

    def replan(self) -> None:
        """Ask for a new plan on the next step (the :class:`~emcot.runtime.rules.OnRequest` rule)."""
        self._requested = True

    def _reason_to_replan(self, observation: Observation) -> str | None:
        plan = self.plan
        if plan is None:
            return "no_plan"

        def distance() -> float | None:
            if plan.subgoal_latents is None:
                return None
            frame = observation.images[self.policy.cameras[0]]
            return latent_distance(self.policy, frame, plan.subgoal_latents)

        context = StepContext(
            step=self.steps,
            plan_age=self.steps - plan.made_at,
            instruction_changed=plan.instruction != self.instruction,
            requested=self._requested,
            measure_subgoal_distance=distance,
        )
        return next((rule.name for rule in self.rules if rule.fires(context)), None)

    def step(self, observation: Observation, instruction: str | None = None) -> StepResult:
        """One control step; ``instruction`` (optional) replaces the episode's instruction."""
        if instruction is not None:
            self.instruction = self.policy.processor.check_instruction(instruction)
        if self.instruction is None:
            raise ValueError("call reset(instruction) before step(observation)")
        seed = None if self.seed is None else self.seed + self.steps
        started = time.perf_counter()
        swapped = self._swap_in_finished_plan()
        reason = None if self.thinking else self._reason_to_replan(observation)
        history = self.history.current()
        if reason is not None and (self.plan is None or not self.async_replan):
            trace, state = self._plan_step(
                _PlanRequest(observation, self.instruction, seed, self.steps, history)
            )
            self._keep(KeptPlan.from_step(trace, state, made_at=self.steps))
            replanned = True
        else:
            if reason is not None:
                self._think(_PlanRequest(observation, self.instruction, seed, self.steps, history))
            assert self.plan is not None
            trace, _ = self.policy.act_on_plan(observation, self.plan, seed=seed, history=history)
            replanned = swapped
        timings = {**trace.timings, "step": time.perf_counter() - started}
        self.steps += 1
        actions = trace.actions if self.n_action_steps is None else trace.actions[: self.n_action_steps]
        self.history.push(HistoryStep(observation.images[self._history_camera], observation.state, actions))
        return StepResult(actions, replanned, reason, trace, timings, self.plan_id)

    def _keep(self, plan: KeptPlan) -> None:
        self.plan = plan
        self.plan_id += 1
        self._requested = False

    def _plan_step(self, request: _PlanRequest):
        events = self.policy.stream_trace(
            request.observation,
            request.instruction,
            mode=self.mode,
            seed=request.seed,
            history=request.history,
        )
        for event in events:
            if event.kind == "done" and event.trace is not None and event.state is not None:
                return event.trace, event.state
        raise RuntimeError("trace generation ended without a result")

    def _think(self, request: _PlanRequest) -> None:
        """Start a planning trace in the background thread."""
        with self._lock:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emcot-think")
            self._thinking = self._worker.submit(self._plan_in_background, request)
        self._requested = False

    def _plan_in_background(self, request: _PlanRequest) -> KeptPlan:
        trace, state = self._plan_step(request)
        return KeptPlan.from_step(trace, state, made_at=request.step)

    def _swap_in_finished_plan(self) -> bool:
        """Between steps: take a finished background plan (one assignment, so a step acts on
        exactly one plan; ``reset`` drops a plan of the last episode). A failed background trace raises here, on the robot's thread."""
        with self._lock:
            thinking = self._thinking
            if thinking is None or not thinking.done():
                return False
            self._thinking = None
        plan = thinking.result()
        self._keep(plan)
        return True

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """openpi ``BasePolicy.infer``: ``{"images": {camera: HxWx3 uint8}, "state": ..., "prompt": str}``
        → ``{"actions", "reasoning", "replanned", "policy_timing"}``. A new ``prompt`` replaces the
        instruction (and so re-plans through :class:`InstructionChanged`); ``"reset": True`` starts
        a new episode (openpi clients send nothing on ``reset()``, so a robot loop says it here)."""
        if not isinstance(obs, Mapping):
            raise ValueError(f"infer takes an observation dict, got {type(obs).__name__}")
        unknown = sorted(set(obs) - {"images", "state", "prompt", "reset"})
        if unknown:
            raise ValueError(
                f"unknown observation keys {unknown}; expected 'images', 'state', 'prompt' (and optionally 'reset')"
            )
        if "images" not in obs:
            raise ValueError("the observation dict needs 'images': {camera_name: HxWx3 uint8 array}")
        prompt = obs.get("prompt")
        start = check_value("reset", obs.get("reset", False), bool)
        if start or (prompt is not None and self.instruction is None):
            if prompt is None:
                raise ValueError("'reset': True starts an episode and needs the episode's 'prompt'")
            self.reset(prompt)
        result = self.step(Observation(images=dict(obs["images"]), state=obs.get("state")), prompt)
        return {
            "actions": result.actions,
            "reasoning": result.trace.reasoning,
            "replanned": result.replanned,
            "policy_timing": {f"{k}_ms": v * 1000.0 for k, v in result.timings.items()},
        }
