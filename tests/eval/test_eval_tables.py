"""Pure-python parts of the evaluation: task tables, metrics truth tables, Markdown tables, episode
records on disk, adapters. None of these need the simulator."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from emcot.eval.adapters import (
    BLIND_ADAPTER,
    EXPERT_ADAPTER,
    ObservationAdapter,
    StateSource,
    adapter_for_policy,
    parse_camera_map,
)
from emcot.eval.envs import mujoco_gl
from emcot.eval.envs.base import EnvObservation
from emcot.eval.envs.metaworld_tasks import DIFFICULTY, SPLITS, TASK_DESCRIPTIONS, difficulty_of, expand_tasks
from emcot.eval.metrics import aggregate, compute_metrics
from emcot.eval.records import EpisodeRecord, EpisodeSummary, FrameRecord, PlanRecord, PolicyStepRecord
from emcot.eval.tables import results_markdown, results_table


def summary(task, success, *, mode="full", episode=0, steps=100, policy_steps=10, replans=2, step_s=0.5):
    return EpisodeSummary(task, mode, episode, 1000 + episode, success, steps, policy_steps, replans, step_s)


# ---------------------------------------------------------------------------------------------
# Task tables.


def test_difficulty_buckets_partition_the_fifty_tasks():
    sizes = {bucket: len(SPLITS[bucket]) for bucket in DIFFICULTY}
    assert sizes == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    every = [task for bucket in DIFFICULTY for task in SPLITS[bucket]]
    assert sorted(every) == sorted(TASK_DESCRIPTIONS) and len(set(every)) == 50
    assert len(SPLITS["mt10"]) == 10 and set(SPLITS["mt10"]) <= set(TASK_DESCRIPTIONS)
    assert all(
        sentence and sentence[0].isupper() and not sentence.endswith(".")
        for sentence in TASK_DESCRIPTIONS.values()
    )
    assert TASK_DESCRIPTIONS["drawer-open-v3"] == "Open a drawer"


def test_expand_tasks_mixes_splits_and_names_without_repeats():
    assert expand_tasks("reach,drawer-open-v3,reach-v3") == ["reach-v3", "drawer-open-v3"]
    assert expand_tasks("very-hard") == list(SPLITS["very_hard"])
    assert len(expand_tasks("easy,mt10")) == 28 + len(set(SPLITS["mt10"]) - set(SPLITS["easy"]))
    with pytest.raises(ValueError, match="did you mean 'drawer-open-v3'"):
        expand_tasks("drawer-opn-v3")
    with pytest.raises(ValueError, match="no Meta-World task"):
        expand_tasks(" , ")


# ---------------------------------------------------------------------------------------------
# Metrics: bucket mean vs episode mean.


def test_bucket_mean_weighs_buckets_episode_mean_weighs_episodes():
    # easy: a 10/10, b 0/10 → 50 %; hard: c 10/10 → 100 %.
    # bucket mean (50 + 100) / 2 = 75 %; episode mean 20 / 30 = 66.7 %.
    episodes = [
        summary(task, task != "button-press-v3", episode=i)
        for task in ("reach-v3", "button-press-v3", "assembly-v3")
        for i in range(10)
    ]
    metrics = compute_metrics(episodes, difficulty_of, bucket_order=DIFFICULTY)
    assert metrics.tasks["reach-v3"]["full"].success_rate == 1.0
    assert metrics.tasks["button-press-v3"]["full"].success_rate == 0.0
    assert metrics.splits["easy"]["full"].success_rate == 0.5
    assert metrics.splits["hard"]["full"].success_rate == 1.0
    assert list(metrics.splits) == ["easy", "hard"]
    assert metrics.bucket_mean["full"].success_rate == pytest.approx(0.75)
    assert metrics.episode_mean["full"].success_rate == pytest.approx(20 / 30)
    assert metrics.episode_mean["full"].episodes == 30


def test_uneven_buckets_and_modes_stay_apart():
    episodes = [summary("reach-v3", True, mode="full"), summary("reach-v3", False, mode="reactive")]
    episodes += [
        summary("hammer-v3", s, mode="full", episode=i) for i, s in enumerate([True, False, False, False])
    ]
    metrics = compute_metrics(episodes, difficulty_of, bucket_order=DIFFICULTY)
    assert metrics.modes == ["full", "reactive"]
    assert metrics.bucket_mean["full"].success_rate == pytest.approx((1.0 + 0.25) / 2)
    assert metrics.episode_mean["full"].success_rate == pytest.approx(2 / 5)
    assert "reactive" not in metrics.splits["medium"]
    assert metrics.bucket_mean["reactive"].success_rate == 0.0


def test_aggregate_pools_think_ratio_and_latency_over_policy_steps():
    cell = aggregate([summary("reach-v3", True, policy_steps=10, replans=5, step_s=1.0, steps=40),
                      summary("reach-v3", False, policy_steps=30, replans=5, step_s=1.0, steps=500)])  # fmt: skip
    assert cell.think_ratio == pytest.approx(10 / 40)
    assert cell.step_ms == pytest.approx(1000.0 * 2.0 / 40)
    assert cell.mean_steps == 270 and cell.success_rate == 0.5 and cell.episodes == 2
    assert cell.control_hz == pytest.approx(540 / 2.0)  # env steps per second of policy latency
    assert aggregate([summary("reach-v3", True, policy_steps=0, step_s=0.0)]).control_hz == 0.0
    with pytest.raises(ValueError):
        aggregate([])


def test_tables_list_tasks_buckets_and_both_means():
    episodes = [summary("reach-v3", True), summary("assembly-v3", False)]
    metrics = compute_metrics(episodes, difficulty_of, bucket_order=DIFFICULTY)
    table = results_table(metrics)
    for row in ("reach-v3", "assembly-v3", "**easy**", "**hard**", "**bucket mean**", "**episode mean**"):
        assert row in table
    assert "| 50.0 " in table and "think ratio" in table
    markdown = results_markdown(metrics, {"seed": 1000})
    assert markdown.startswith("# Meta-World evaluation") and "- seed: 1000" in markdown
    assert json.loads(json.dumps(metrics.to_dict()))["bucket_mean"]["full"]["success_rate"] == 0.5


# ---------------------------------------------------------------------------------------------
# Episode records.


def test_episode_record_round_trips_through_its_folder(tmp_path):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    record = EpisodeRecord(
        task="reach-v3", mode="full", episode=3, seed=1003, instruction="Reach a goal position",
        success=True, steps=2, first_success=2, step_success=[False, True], rewards=[0.5, 10.0],
        policy_steps=[PolicyStepRecord(0, True, "no_plan", 2, {"step": 0.25, "reasoning": 0.1})],
        plans=[PlanRecord(0, 0, "no_plan", "move left", frame), PlanRecord(1, 0, "every_k", "stop", None)],
        frames=[FrameRecord(0, "corner2", frame)], wall_s=1.5,
    )  # fmt: skip
    folder = record.save(tmp_path / "ep")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    loaded = EpisodeRecord.load(folder)
    assert loaded.summary() == record.summary() == EpisodeSummary.load(folder)
    assert loaded.policy_steps == record.policy_steps and loaded.step_success == [False, True]
    np.testing.assert_array_equal(loaded.plans[0].subgoal, frame)
    np.testing.assert_array_equal(loaded.frames[0].image, frame)
    assert loaded.plans[1].subgoal is None and loaded.plans[0].reasoning == "move left"
    assert record.summary().replans == 1 and record.summary().step_s == 0.25
    record.save(folder)  # saving again replaces the episode
    assert EpisodeSummary.load(folder) == record.summary()


# ---------------------------------------------------------------------------------------------
# Adapters.


def env_observation(size=16):
    image = np.zeros((size, size, 3), np.uint8)
    return EnvObservation(
        images={"corner2": image}, state=np.arange(4, dtype=np.float32), raw=np.arange(39.0)
    )


def fake_policy(*, cameras=("head",), action_dim=4, state_dim=4, max_side=128):
    vision = SimpleNamespace(min_side_px=16, max_side_px=max_side)
    action = SimpleNamespace(action_dim=action_dim, state_dim=state_dim)
    return SimpleNamespace(cameras=list(cameras), config=SimpleNamespace(vision=vision, action=action))


def test_camera_map_parsing():
    assert parse_camera_map("corner2=head, gripperPOV=wrist") == {"corner2": "head", "gripperPOV": "wrist"}
    for bad in ("corner2", "=head", "corner2=head,corner2=wrist", ""):
        with pytest.raises(ValueError):
            parse_camera_map(bad)


def test_another_robots_policy_needs_an_explicit_camera_map():
    env = {"env_cameras": ("corner2", "gripperPOV"), "resolution": 128, "state_dim": 4, "action_dim": 4}
    with pytest.raises(ValueError, match="--camera-map corner2=head"):
        adapter_for_policy(fake_policy(), **env)
    adapter = adapter_for_policy(fake_policy(), camera_map={"corner2": "head"}, **env)
    assert adapter.camera_map == (("corner2", "head"),) and adapter.env_cameras == ("corner2",)
    assert adapter_for_policy(fake_policy(cameras=("corner2",)), **env).camera_map == (
        ("corner2", "corner2"),
    )
    with pytest.raises(ValueError, match="renders"):
        adapter_for_policy(fake_policy(), camera_map={"top": "head"}, **env)
    with pytest.raises(ValueError, match="does not read"):
        adapter_for_policy(fake_policy(), camera_map={"corner2": "head", "gripperPOV": "wrist"}, **env)


def test_state_and_action_sizes_must_match():
    env = {"env_cameras": ("corner2",), "resolution": 128, "camera_map": {"corner2": "head"}}
    with pytest.raises(ValueError, match="7-d actions"):
        adapter_for_policy(fake_policy(action_dim=7), state_dim=4, action_dim=4, **env)
    with pytest.raises(ValueError, match="8-d state"):
        adapter_for_policy(fake_policy(state_dim=8), state_dim=4, action_dim=4, **env)
    blind = adapter_for_policy(fake_policy(state_dim=0), state_dim=4, action_dim=4, **env)
    assert blind.state is StateSource.NONE


def test_adapter_resizes_and_picks_the_state():
    env = {"env_cameras": ("corner2",), "state_dim": 4, "action_dim": 4, "camera_map": {"corner2": "head"}}
    adapter = adapter_for_policy(fake_policy(max_side=64), resolution=128, **env)
    assert adapter.image_size == 64  # capped at the policy's largest side
    observation = adapter(env_observation(128))
    assert observation.images["head"].shape == (64, 64, 3) and observation.state.tolist() == [0, 1, 2, 3]
    assert adapter_for_policy(fake_policy(), resolution=64, **env).image_size is None  # as rendered
    with pytest.raises(ValueError, match="outside the policy's range"):
        adapter_for_policy(fake_policy(), resolution=128, image_size=8, **env)
    assert EXPERT_ADAPTER(env_observation()).state.shape == (39,)
    assert BLIND_ADAPTER(env_observation()).state is None and BLIND_ADAPTER(env_observation()).images == {}
    with pytest.raises(ValueError, match="same policy camera"):
        ObservationAdapter(camera_map=(("corner2", "head"), ("gripperPOV", "head")))


def test_the_bundled_policy_is_refused_without_a_camera_map():
    from emcot.policy.policy import EmCoTPolicy

    policy = EmCoTPolicy.synthetic()
    env = {"env_cameras": ("corner2", "gripperPOV"), "resolution": 64, "state_dim": 4, "action_dim": 4}
    with pytest.raises(ValueError, match="reads cameras \\['head'\\]"):
        adapter_for_policy(policy, **env)
    adapter = adapter_for_policy(policy, camera_map=parse_camera_map("corner2=head"), **env)
    observation = adapter(env_observation(64))
    policy.processor.validate_observation(observation)


# ---------------------------------------------------------------------------------------------
# OpenGL backend choice.


def test_egl_by_default_osmesa_when_egl_fails_and_a_users_choice_stays(monkeypatch):

    monkeypatch.delitem(sys.modules, "mujoco", raising=False)  # as before the simulator's first import
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(mujoco_gl, "_works", lambda backend: True)
    assert mujoco_gl.configure_gl() == "egl"
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.setattr(mujoco_gl, "_works", lambda backend: backend == "osmesa")
    assert mujoco_gl.configure_gl() == "osmesa"
    assert os.environ["MUJOCO_GL"] == "osmesa"  # spawned workers inherit the choice
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    assert mujoco_gl.configure_gl() == "glfw"
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.setattr(mujoco_gl, "_works", lambda backend: False)
    with pytest.raises(RuntimeError, match="libosmesa6"):
        mujoco_gl.configure_gl()
