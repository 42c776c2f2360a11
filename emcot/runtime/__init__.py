"""Running a policy on a robot: `PolicySession` with plan reuse, typed re-planning rules and
asynchronous thinking; calibration of the subgoal-reached rule."""

from emcot.runtime.rules import (
    RULES,
    SUBGOAL_REACHED_THRESHOLD,
    EveryK,
    InstructionChanged,
    OnRequest,
    PlanAge,
    ReplanRule,
    StepContext,
    SubgoalReached,
    parse_rule,
    parse_rules,
)
from emcot.runtime.session import PolicySession, StepResult

__all__ = [
    "RULES",
    "SUBGOAL_REACHED_THRESHOLD",
    "EveryK",
    "InstructionChanged",
    "OnRequest",
    "PlanAge",
    "PolicySession",
    "ReplanRule",
    "StepContext",
    "StepResult",
    "SubgoalReached",
    "parse_rule",
    "parse_rules",
]
