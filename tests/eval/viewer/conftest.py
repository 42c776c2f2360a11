"""A small recorded rollout and a saved trace of the bundled synthetic policy in the synthetic
pushing world (no simulator needed), shared by the viewer's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from emcot.eval.adapters import adapter_for_policy
from emcot.eval.envs.synthetic import SyntheticPushConfig, SyntheticPushEnv
from emcot.eval.rollout import Agent, RolloutConfig, run_episode
from emcot.policy.policy import EmCoTPolicy
from emcot.runtime.rules import parse_rules
from emcot.runtime.session import PolicySession

STEPS = 24  # three chunks of 8, each re-planned (every_k=1)


@pytest.fixture(scope="session")
def recorded(tmp_path_factory) -> tuple[Path, Path]:
    """(episode folder, trace folder) written by the real rollout and ``Trace.save`` code."""
    root = tmp_path_factory.mktemp("viewer")
    policy = EmCoTPolicy.synthetic()
    env = SyntheticPushEnv(SyntheticPushConfig(max_steps=STEPS))
    adapter = adapter_for_policy(policy, env_cameras=env.cameras, resolution=32, state_dim=4, action_dim=4)
    with PolicySession(policy, parse_rules("every_k=1"), mode="full", seed=7) as session:
        record = run_episode(
            env, Agent("full", session, adapter), seed=7, config=RolloutConfig(max_steps=STEPS, frame_every=4)
        )
    record.save(root / "episode")
    observation = adapter(env.reset(11))
    trace = policy.generate_trace(observation, env.instruction, seed=0)
    trace.save(root / "trace", observation)
    return root / "episode", root / "trace"
