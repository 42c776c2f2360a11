"""The synthetic pushing world as an environment: seeded scenes, the push rule, success, errors."""

from __future__ import annotations

import numpy as np
import pytest

from emcot.eval.envs.base import Env
from emcot.eval.envs.synthetic import SyntheticPushConfig, SyntheticPushEnv


def test_a_seed_fixes_the_scene_and_the_instruction_names_it():
    env = SyntheticPushEnv()
    assert isinstance(env, Env)
    first, again = env.reset(3), env.reset(3)
    assert np.array_equal(first.images["head"], again.images["head"]) and np.array_equal(
        first.state, again.state
    )
    assert env.instruction == f"push the {env.color} block to the {env.side}"
    assert first.images["head"].shape == (32, 32, 3) and first.state.shape == (4,)
    assert not np.array_equal(env.reset(4).state, first.state)


def test_the_block_moves_only_while_the_gripper_touches_it():
    env = SyntheticPushEnv(SyntheticPushConfig(max_move=0.1))
    env.reset(0)
    env.gripper, env.block = np.array([0.1, 0.1], np.float32), np.array([0.5, 0.5], np.float32)
    outcome = env.step(np.array([0.9, 0.9, 0.9, 0.5]))
    np.testing.assert_allclose(
        outcome.observation.state[:2], 0.1 + 0.1 / np.sqrt(2), rtol=1e-5
    )  # capped move
    np.testing.assert_array_equal(outcome.observation.state[2:], [0.5, 0.5])  # out of reach: no push
    env.gripper = np.array([0.5, 0.45], np.float32)  # touching as the step begins
    outcome = env.step(np.array([0.5, 0.45, 0.55, 0.5]))
    np.testing.assert_allclose(outcome.observation.state[2:], [0.55, 0.5], rtol=1e-5)  # touched: pushed


def test_pushing_the_block_to_the_goal_side_succeeds():
    env = SyntheticPushEnv()
    env.reset(0)
    env.side, env.block = "left", np.array([0.5, 0.5], np.float32)
    env.gripper = env.block.copy()
    solved = [env.step(np.array([0.2, 0.5, 0.2, 0.5])).success for _ in range(2)]
    assert solved == [False, True] and env.success  # 0.15 per step: x = 0.35, then 0.2 (the left side)


def test_the_environment_refuses_bad_use():
    env = SyntheticPushEnv(SyntheticPushConfig(max_steps=1))
    with pytest.raises(ValueError, match="call reset"):
        env.step(np.zeros(4))
    env.reset(0)
    with pytest.raises(ValueError, match="4 finite numbers"):
        env.step(np.zeros(3))
    assert env.step(np.zeros(4)).truncated
    with pytest.raises(ValueError, match="1-step cap"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match="seed must be an integer"):
        env.reset(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tolerance"):
        SyntheticPushConfig(tolerance=0.0)
