"""The Meta-World env under LeRobot's protocol: seeding, upright frames, actions, info, lazy import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import emcot.eval.envs.metaworld as metaworld_env
from emcot.eval.envs import SPLITS, MetaWorldConfig, MetaWorldEnv
from emcot.eval.envs.base import Env

metaworld = pytest.importorskip("metaworld", reason="needs the [sim] extra: pip install 'emcot[sim]'")


def test_the_env_module_imports_without_the_simulator():
    code = (
        "import sys, emcot.eval.envs.metaworld, emcot.eval.envs, emcot.eval.policies\n"
        "assert 'mujoco' not in sys.modules and 'metaworld' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_missing_simulator_names_the_extra(monkeypatch):
    monkeypatch.setattr(metaworld_env, "SIM_MODULES", ("metaworld", "a_module_that_is_not_installed"))
    with pytest.raises(
        ImportError, match=r"a_module_that_is_not_installed missing.*pip install 'emcot\[sim\]'"
    ):
        MetaWorldEnv("reach-v3", MetaWorldConfig(cameras=()))


def test_our_tables_match_metaworlds():
    assert sorted(SPLITS["mt50"]) == sorted(metaworld.ALL_V3_ENVIRONMENTS)
    assert SPLITS["mt10"] == tuple(metaworld.env_dict.MT10_V3)


def test_config_is_checked():
    with pytest.raises(ValueError, match="unknown Meta-World cameras"):
        MetaWorldConfig(cameras=("head",))
    with pytest.raises(ValueError, match="resolution"):
        MetaWorldConfig(resolution=4096)
    with pytest.raises(ValueError, match="did you mean"):
        MetaWorldEnv("reach-v2")


@pytest.fixture(scope="module")
def env():
    with MetaWorldEnv(
        "drawer-open-v3", MetaWorldConfig(resolution=64, cameras=("corner2", "gripperPOV"))
    ) as env:
        yield env


def test_the_same_seed_gives_the_same_first_frame(env):
    assert isinstance(env, Env)
    first = env.reset(1000)
    again = env.reset(1000)
    other = env.reset(1001)
    np.testing.assert_array_equal(first.images["corner2"], again.images["corner2"])
    np.testing.assert_array_equal(first.raw, again.raw)
    assert not np.array_equal(first.raw, other.raw)  # another seed moves the object or goal
    assert not np.array_equal(first.images["corner2"], other.images["corner2"])
    assert first.images["corner2"].shape == (64, 64, 3) and first.images["gripperPOV"].shape == (64, 64, 3)
    assert (
        first.state.dtype == np.float32 and first.state.tolist() == first.raw[:4].astype(np.float32).tolist()
    )
    assert first.raw.shape == (39,)


def test_the_first_frame_shows_this_episodes_goal_not_the_last_ones():
    """Meta-World moves the goal marker only inside step(); reset places it, so the first frame
    of an episode is the same whichever episode ran before."""
    config = MetaWorldConfig(resolution=64)
    with MetaWorldEnv("reach-v3", config) as fresh, MetaWorldEnv("reach-v3", config) as used:
        used.reset(1003)
        used.step(np.zeros(4))
        first = used.reset(1001).images["corner2"]
        np.testing.assert_array_equal(first, fresh.reset(1001).images["corner2"])
        goal = used.reset(1002).raw[36:39]
        np.testing.assert_allclose(used._env.data.site("goal").xpos, goal)  # where step() would put it


def test_the_image_projection_lands_on_the_goal_marker():
    with MetaWorldEnv("reach-v3", MetaWorldConfig(resolution=128)) as env:
        projection = env.image_projection("corner2")
        for seed in (1000, 1001, 1002):
            observation = env.reset(seed)
            point = projection @ np.r_[observation.raw[36:39], 1.0]
            x, y = point[:2] / point[2]
            col, row = int((x + 1) / 2 * 128), int((y + 1) / 2 * 128)
            r, g, b = observation.images["corner2"][row, col].astype(int)
            assert r > 180 and g < 70 and b < 70, (seed, col, row, (r, g, b))  # the bright red sphere
        with pytest.raises(ValueError, match="not rendered here"):
            env.image_projection("gripperPOV")


def _wood(region: np.ndarray) -> float:
    """Share of pixels with the table's brown (red > green > blue, a moderate red-blue gap)."""
    r, g, b = (region[..., i].astype(int) for i in range(3))
    return float(((r > g) & (g > b) & (r - b >= 20) & (r - b <= 70) & (r < 200)).mean())


@pytest.mark.parametrize("task", ["reach-v3", "shelf-place-v3"])
def test_frames_are_upright(task):
    # corner2 looks down at the table: upright, its wooden top fills the bottom of the frame and the
    # grey background the top (≥ 62 % vs ≤ 0.1 % brown over all 50 tasks at 64 px; the raw render
    # is the other way up).
    with MetaWorldEnv(task, MetaWorldConfig(resolution=64)) as env:
        frame = env.reset(1000).images["corner2"]
    assert _wood(frame[-16:]) > 0.4
    assert _wood(frame[:16]) < 0.1


def test_step_clips_actions_and_keeps_metaworlds_info(env):
    env.reset(1000)
    outcome = env.step(np.array([5.0, 0.0, 0.0, -3.0]))
    assert {"success", "grasp_success", "near_object", "obj_to_target"} <= set(outcome.info)
    assert isinstance(outcome.success, bool) and not outcome.truncated and env.steps == 1
    for bad in (np.zeros(3), np.full(4, np.nan)):
        with pytest.raises(ValueError):
            env.step(bad)


def test_the_step_cap_truncates():
    with MetaWorldEnv("reach-v3", MetaWorldConfig(cameras=(), max_steps=3)) as env:
        env.reset(0)
        outcomes = [env.step(np.zeros(4)) for _ in range(3)]
        assert [o.truncated for o in outcomes] == [False, False, True]
        assert outcomes[0].observation.images == {}
        with pytest.raises(ValueError, match="3-step cap"):
            env.step(np.zeros(4))
