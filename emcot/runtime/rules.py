"""Re-planning rules: small typed objects that look at a step's context and say whether to re-plan.

A session asks its rules in order and reports the first that fires (``StepResult.reason``). A
session with no plan yet always plans (reason ``"no_plan"``). :func:`parse_rules` builds rules
from a command-line spec such as ``"requested,instruction_changed,plan_age=8"``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol, runtime_checkable

from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check_fields

# RMS distance between normalised latent tokens below which the bundled policy's camera frame
# counts as having reached its imagined subgoal. Calibrated with bench/calibrate_subgoal.py on the
# synthetic pushing world (see docs/runtime.md); recalibrate for another policy or robot.
SUBGOAL_REACHED_THRESHOLD = 0.12


def _no_distance() -> float | None:
    return None


@dataclass(frozen=True)
class StepContext:
    """What a rule may look at: the step's index since ``reset`` (0-based), the age of the kept
    plan in steps, whether the instruction changed or a re-plan was requested since it, and
    (computed only when a rule asks) ``subgoal_distance``."""

    step: int
    plan_age: int
    instruction_changed: bool
    requested: bool
    measure_subgoal_distance: Callable[[], float | None] = field(
        default=_no_distance, repr=False, compare=False
    )

    @cached_property
    def subgoal_distance(self) -> float | None:
        """RMS distance between the primary camera's latents and the kept plan's subgoal latents
        (``None`` when the plan has no subgoal); measured once, on first use."""
        return self.measure_subgoal_distance()


@runtime_checkable
class ReplanRule(Protocol):
    """A rule: ``name`` is what a step reports when ``fires(context)`` is True."""

    @property
    def name(self) -> str:
        """What a step reports as its ``reason`` when this rule fires."""
        ...

    def fires(self, context: StepContext) -> bool:
        """Whether this step should re-plan."""
        ...


@dataclass(frozen=True)
class EveryK:
    """Re-plan on every ``k``-th step since ``reset`` (steps 0, k, 2k, …)."""

    k: int
    name: str = "every_k"

    def __post_init__(self) -> None:
        check_fields(self, "EveryK", k=AT_LEAST_ONE)

    def fires(self, context: StepContext) -> bool:
        """True on steps divisible by ``k``."""
        return context.step % self.k == 0


@dataclass(frozen=True)
class PlanAge:
    """Re-plan when the kept plan has served ``max_steps`` steps (however it was made)."""

    max_steps: int
    name: str = "plan_age"

    def __post_init__(self) -> None:
        check_fields(self, "PlanAge", max_steps=AT_LEAST_ONE)

    def fires(self, context: StepContext) -> bool:
        """True once the plan is ``max_steps`` steps old."""
        return context.plan_age >= self.max_steps


@dataclass(frozen=True)
class InstructionChanged:
    """Re-plan when the instruction differs from the one the plan answers."""

    name: str = "instruction_changed"

    def fires(self, context: StepContext) -> bool:
        """True when the instruction changed."""
        return context.instruction_changed


@dataclass(frozen=True)
class OnRequest:
    """Re-plan when :meth:`PolicySession.replan` was called."""

    name: str = "requested"

    def fires(self, context: StepContext) -> bool:
        """True when a re-plan was requested."""
        return context.requested


@dataclass(frozen=True)
class SubgoalReached:
    """Re-plan when the primary camera looks like the imagined subgoal: the RMS distance between
    its latent tokens and the plan's subgoal latents is below ``threshold``, and the plan has
    served at least ``min_plan_age`` steps (so a subgoal that is already reached cannot make every
    step re-plan)."""

    threshold: float = SUBGOAL_REACHED_THRESHOLD
    min_plan_age: int = 1
    name: str = "subgoal_reached"

    def __post_init__(self) -> None:
        check_fields(self, "SubgoalReached", threshold=POSITIVE, min_plan_age=NON_NEGATIVE)

    def fires(self, context: StepContext) -> bool:
        """True once the camera is within ``threshold`` of the subgoal."""
        if context.plan_age < self.min_plan_age:
            return False
        distance = context.subgoal_distance
        return distance is not None and distance < self.threshold


DEFAULT_RULES: tuple[ReplanRule, ...] = (OnRequest(), InstructionChanged(), PlanAge(8))


@dataclass(frozen=True)
class _RuleSpec:
    build: Callable[..., ReplanRule]
    argument: type | None  # the type of the value after "=", or None for a rule without one
    help: str


RULES: dict[str, _RuleSpec] = {
    "every_k": _RuleSpec(EveryK, int, "every_k=K: re-plan on every K-th step"),
    "plan_age": _RuleSpec(PlanAge, int, "plan_age=N: re-plan once the plan is N steps old"),
    "subgoal_reached": _RuleSpec(
        SubgoalReached,
        float,
        f"subgoal_reached[=T]: camera within T of the subgoal (default {SUBGOAL_REACHED_THRESHOLD})",
    ),
    "instruction_changed": _RuleSpec(InstructionChanged, None, "instruction_changed"),
    "requested": _RuleSpec(OnRequest, None, "requested: session.replan() was called"),
}


def parse_rule(spec: str) -> ReplanRule:
    """One rule from ``name`` or ``name=value`` (names in :data:`RULES`; ``-`` may stand for ``_``)."""
    name, _, value = spec.strip().partition("=")
    name = name.strip().replace("-", "_")
    if name not in RULES:
        close = difflib.get_close_matches(name, RULES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown re-planning rule {name!r}{hint} (known: {', '.join(RULES)})")
    rule = RULES[name]
    if not value.strip():
        if rule.argument is int:
            raise ValueError(f"re-planning rule {name!r} needs a value: {rule.help}")
        return rule.build()
    if rule.argument is None:
        raise ValueError(f"re-planning rule {name!r} takes no value: {rule.help}")
    try:
        argument = rule.argument(value.strip())
    except ValueError:
        raise ValueError(
            f"re-planning rule {name!r}: {value.strip()!r} is not a {rule.argument.__name__} ({rule.help})"
        ) from None
    return rule.build(argument)


def parse_rules(spec: str) -> tuple[ReplanRule, ...]:
    """Rules from a comma-separated spec, e.g. ``"requested,instruction_changed,plan_age=8"``."""
    parts = [part for part in spec.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"no re-planning rule in {spec!r}; known: {', '.join(RULES)}")
    return tuple(parse_rule(part) for part in parts)
