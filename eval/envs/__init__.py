"""Simulated environments for closed-loop evaluation: the ``Env`` protocol, Meta-World and the
synthetic pushing world.

Importing this package never imports a simulator; ``MetaWorldEnv(...)`` does, lazily.
"""

from emcot.eval.envs.base import Env, EnvObservation, StepOutcome
from emcot.eval.envs.metaworld import MetaWorldConfig, MetaWorldEnv
from emcot.eval.envs.metaworld_tasks import SPLITS, TASK_DESCRIPTIONS, expand_tasks
from emcot.eval.envs.synthetic import SyntheticPushConfig, SyntheticPushEnv

__all__ = [
    "SPLITS",
    "TASK_DESCRIPTIONS",
    "Env",
    "EnvObservation",
    "MetaWorldConfig",
    "MetaWorldEnv",
    "StepOutcome",
    "SyntheticPushConfig",
    "SyntheticPushEnv",
    "expand_tasks",
]
