"""Running a policy on a robot: `PolicySession` with plan reuse and typed re-planning rules."""

from emcot.runtime.rules import EveryK, InstructionChanged, OnRequest, PlanAge, ReplanRule, StepContext
from emcot.runtime.session import PolicySession, StepResult

__all__ = [
    "EveryK",
    "InstructionChanged",
    "OnRequest",
    "PlanAge",
    "PolicySession",
    "ReplanRule",
    "StepContext",
    "StepResult",
]
