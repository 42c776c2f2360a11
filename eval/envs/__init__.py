"""Simulated environments for closed-loop evaluation: the ``Env`` protocol and Meta-World.

Importing this package never imports a simulator; ``MetaWorldEnv(...)`` does, lazily.
"""

from emcot.eval.envs.base import Env, EnvObservation, StepOutcome
from emcot.eval.envs.metaworld import MetaWorldConfig, MetaWorldEnv
from emcot.eval.envs.metaworld_tasks import SPLITS, TASK_DESCRIPTIONS, expand_tasks

__all__ = [
    "SPLITS",
    "TASK_DESCRIPTIONS",
    "Env",
    "EnvObservation",
    "MetaWorldConfig",
    "MetaWorldEnv",
    "StepOutcome",
    "expand_tasks",
]
