"""Re-planning rules: small typed objects that look at a step's context and say whether to re-plan.

A session asks its rules in order and reports the first that fires (``StepResult.reason``). A
session with no plan yet always plans (reason ``"no_plan"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from emcot.io_utils import AT_LEAST_ONE, check_fields


@dataclass(frozen=True)
class StepContext:
    """What a rule may look at: the step's index since ``reset`` (0-based), the age of the kept
    plan in steps, and whether the instruction changed or a re-plan was requested since it."""

    step: int
    plan_age: int
    instruction_changed: bool
    requested: bool


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


DEFAULT_RULES: tuple[ReplanRule, ...] = (OnRequest(), InstructionChanged(), PlanAge(8))
