"""Demo collection: seeds kept off the evaluation range, failed attempts dropped, resume after a
kill, and (with the simulator) a real collection read back and annotated."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pytest

from emcot.cli.annotate import add_annotate_arguments, run_annotate
from emcot.cli.collect import add_collect_arguments, run_collect
from emcot.eval.collect import WORK_DIR, CollectConfig, collect_metaworld
from emcot.eval.envs.base import EnvObservation, StepOutcome
from emcot.eval.envs.metaworld_tasks import TASK_DESCRIPTIONS
from emcot.eval.recording import record_episode
from emcot.training.annotation.annotations import read_annotations
from emcot.training.annotation.sim_rules import (
    GOAL_COLUMN,
    GRIPPER_COLUMN,
    OBJECT_COLUMN,
    SIM_INFO_KEYS,
    SIM_PREFIX,
)
from emcot.training.data.lerobot import LeRobotDataset

SIM_REASON = "needs the [sim] extra: pip install 'emcot[sim]'"


def _cli(parser_setup, run, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser_setup(parser)
    return run(parser.parse_args(argv))


def _digest(root: Path) -> dict[str, str]:
    """Every file of the dataset (the work folder aside) → its hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and WORK_DIR not in p.parts
    }


# ---------------------------------------------------------------------------------------------
# Without the simulator: a fake env whose even seeds succeed after 3 steps.


class FakeEnv:
    task, instruction, cameras, max_steps = "push-v3", TASK_DESCRIPTIONS["push-v3"], ("corner2",), 6

    def __init__(self, task, config):
        self.t, self.seed = 0, 0

    def _obs(self) -> EnvObservation:
        raw = np.full(39, self.seed + 0.01 * self.t)
        image = np.full((8, 8, 3), (self.seed * 16 + self.t) % 256, np.uint8)
        return EnvObservation({"corner2": image}, raw[:4].astype(np.float32), raw)

    def reset(self, seed):
        self.t, self.seed = 0, seed
        return self._obs()

    def step(self, action):
        self.t += 1
        success = self.seed % 2 == 0 and self.t == 3
        info = dict.fromkeys(SIM_INFO_KEYS, 0.0) | {"success": float(success)}
        return StepOutcome(self._obs(), 0.0, success, info, truncated=self.t >= self.max_steps)

    def close(self):
        pass


class FakeExpert:
    def __init__(self, task):
        pass

    def action(self, raw):
        return np.zeros(4, np.float32)


def _fake(out, runs: list, **options):
    def make_env(task, config):
        runs.append(task)
        return FakeEnv(task, config)

    options = {"storage": "image"} | options
    config = CollectConfig(tasks=("push",), out=str(out), episodes=2, **options)
    return collect_metaworld(config, make_env=make_env, make_expert=FakeExpert, progress=False)


def test_collection_seeds_stay_off_the_evaluation_seeds(tmp_path):
    assert CollectConfig(tasks=("push",), out=str(tmp_path), episodes=50).seeds == range(0, 100)
    assert CollectConfig(tasks=("push",), out=str(tmp_path), episodes=5, seed=990).seeds == range(990, 1000)
    assert CollectConfig(tasks=("push",), out=str(tmp_path), episodes=600, seed=1500).seeds.start == 1500
    for seed, episodes in ((995, 5), (0, 600), (1400, 5)):
        with pytest.raises(ValueError, match="overlap the evaluation seeds 1000..1499"):
            CollectConfig(tasks=("push",), out=str(tmp_path), episodes=episodes, seed=seed)
    with pytest.raises(ValueError, match="overlap the evaluation seeds"):
        _cli(
            add_collect_arguments,
            run_collect,
            ["metaworld", "--tasks", "push", "--seed", "999", "--out", str(tmp_path)],
        )
    assert CollectConfig(tasks=("mt10",), out=str(tmp_path)).tasks[:2] == ("reach-v3", "push-v3")
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        CollectConfig(tasks=("pusj-v9",), out=str(tmp_path))
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_failed_attempts_are_dropped_unless_kept(tmp_path):
    runs: list = []
    summary = _fake(tmp_path / "ok", runs)
    assert (summary.episodes, summary.collected, summary.tasks["push-v3"].failed) == (2, 3, 1)
    dataset = LeRobotDataset(tmp_path / "ok")
    # Seeds 0 and 2 succeeded (3 frames each); seed 1 failed and is not in the dataset.
    assert [len(dataset.episode(i)) for i in dataset.episode_indices] == [3, 3]
    assert dataset.episode(1).states[0, 0] == pytest.approx(2.0)
    kept = _fake(tmp_path / "all", runs, keep_failed=True)
    assert [len(LeRobotDataset(tmp_path / "all").episode(i)) for i in (0, 1)] == [3, 6]
    assert kept.tasks["push-v3"].failed == 1
    short = _fake(tmp_path / "short", runs, max_attempts=2)
    assert short.shortfalls(2) == {"push-v3": 1} and "only 1 of 2" in short.format(2)


def test_a_rerun_reuses_every_finished_attempt(tmp_path):
    runs: list = []
    first = _fake(tmp_path / "ds", runs, storage="video")
    again = _fake(tmp_path / "ds", runs, storage="video")
    assert (first.collected, again.collected, again.tasks["push-v3"].reused) == (3, 0, 3)
    assert len(runs) == 1  # the second run never started the simulator
    assert LeRobotDataset(tmp_path / "ds").episode(1).images("corner2").shape == (3, 8, 8, 3)
    with pytest.raises(ValueError, match="collected with"):
        _fake(tmp_path / "ds", runs, max_steps=7)


# ---------------------------------------------------------------------------------------------
# With the simulator.


class RecordingEnv:
    """A real env that logs what it showed, so the dataset can be compared with it."""

    def __init__(self, env, log: list):
        self.env, self.log = env, log
        self.task, self.instruction, self.cameras, self.max_steps = (
            env.task,
            env.instruction,
            env.cameras,
            env.max_steps,
        )

    def reset(self, seed):
        observation = self.env.reset(seed)
        self.log.append({"observations": [observation], "actions": [], "infos": []})
        return observation

    def step(self, action):
        outcome = self.env.step(action)
        episode = self.log[-1]
        episode["observations"].append(outcome.observation)
        episode["actions"].append(np.asarray(action))
        episode["infos"].append(outcome.info)
        return outcome

    def close(self):
        self.env.close()


OPTIONS = ["metaworld", "--tasks", "pick-place", "--resolution", "64", "--images", "--no-progress"]


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """Two pick-place demos at 64 px (PNG frames) and the log of what the env produced."""
    pytest.importorskip("metaworld", reason=SIM_REASON)
    from emcot.eval.envs.metaworld import MetaWorldEnv

    log: list = []
    out = tmp_path_factory.mktemp("collect") / "straight"
    config = CollectConfig(tasks=("pick-place",), out=str(out), episodes=2, resolution=64, storage="image")
    summary = collect_metaworld(
        config, make_env=lambda task, cfg: RecordingEnv(MetaWorldEnv(task, cfg), log), progress=False
    )
    return out, log, summary


def test_a_collection_round_trips_through_our_reader(collected):
    out, log, summary = collected
    assert summary.episodes == 2 and summary.collected == 2
    dataset = LeRobotDataset(out)
    assert dataset.fps == 80 and dataset.info.codebase_version == "v3.0"
    for index, record in zip(dataset.episode_indices, log, strict=True):
        episode = dataset.episode(index)
        observations, infos = record["observations"], record["infos"]
        assert len(episode) == len(infos) and infos[-1]["success"]
        assert episode.instruction == TASK_DESCRIPTIONS["pick-place-v3"]
        np.testing.assert_array_equal(
            episode.images("corner2"), np.stack([o.images["corner2"] for o in observations[:-1]])
        )
        np.testing.assert_array_equal(episode.states, np.stack([o.state for o in observations[:-1]]))
        np.testing.assert_array_equal(episode.actions, np.stack(record["actions"]).astype(np.float32))
        columns = episode.columns(SIM_PREFIX)
        after = observations[1:]
        np.testing.assert_allclose(columns[GRIPPER_COLUMN][:, 0], [o.raw[3] for o in after], rtol=1e-6)
        np.testing.assert_allclose(columns[OBJECT_COLUMN], [o.raw[4:7] for o in after], rtol=1e-6)
        np.testing.assert_allclose(columns[GOAL_COLUMN], [o.raw[36:39] for o in after], rtol=1e-6)
        for key in SIM_INFO_KEYS:
            np.testing.assert_allclose(columns[SIM_PREFIX + key][:, 0], [i[key] for i in infos], rtol=1e-6)


def test_a_killed_run_resumes_to_the_same_dataset(collected, tmp_path, capsys):
    straight, _, _ = collected
    out = tmp_path / "resumed"
    assert _cli(add_collect_arguments, run_collect, [*OPTIONS, "--episodes", "1", "--out", str(out)]) == 0
    assert len(LeRobotDataset(out)) == 1
    capsys.readouterr()
    assert _cli(add_collect_arguments, run_collect, [*OPTIONS, "--episodes", "2", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "simulated 1 attempt(s)" in report and "2 kept, 0 failed, 1 reused" in report
    assert _digest(out) == _digest(straight)


def test_failed_real_episodes_are_dropped(tmp_path):
    pytest.importorskip("metaworld", reason=SIM_REASON)
    argv = [*OPTIONS, "--episodes", "1", "--max-steps", "5", "--out", str(tmp_path / "short")]
    with pytest.raises(ValueError, match="no successful episode"):
        _cli(add_collect_arguments, run_collect, argv)
    assert _cli(add_collect_arguments, run_collect, [*argv, "--keep-failed"]) == 0
    assert [len(e) for e in LeRobotDataset(tmp_path / "short")] == [5]


def test_emcot_annotate_rule_backend_on_a_collected_dataset(collected, tmp_path):
    out, _, _ = collected
    sidecar = tmp_path / "ann.jsonl"
    argv = [str(out), "--backend", "rule", "--out", str(sidecar), "--no-progress"]
    assert _cli(add_annotate_arguments, run_annotate, argv) == 0
    annotations = read_annotations(sidecar)
    assert sorted(annotations) == [0, 1]
    for annotation in annotations.values():
        assert annotation.annotator["model"] == "sim-rules-v1" and len(annotation.subtasks) >= 2
        assert annotation.subtasks[0].text == "Reach the puck"
        for sub in annotation.subtasks:
            assert sub.subgoal_frame == sub.end
            assert " I " in f" {sub.reasoning}"  # first person
        assert "I first move my gripper" in annotation.subtasks[0].reasoning


class LoggingEnv(FakeEnv):
    """The fake env, remembering every action it executed."""

    def __init__(self, max_steps: int = FakeEnv.max_steps):
        super().__init__("push-v3", None)
        self.max_steps, self.executed = max_steps, []

    def step(self, action):
        self.executed.append(np.asarray(action).copy())
        return super().step(action)


class ReachingExpert(FakeExpert):
    def action(self, raw):
        return np.array([0.5, -0.2, 0.1, 1.0], np.float32)


def test_action_noise_perturbs_what_runs_and_records_the_experts_action(tmp_path):
    env = LoggingEnv()
    noisy = record_episode(env, ReachingExpert("push"), seed=2, action_noise=0.3)
    np.testing.assert_array_equal(noisy.episode.actions, np.tile(np.float32([0.5, -0.2, 0.1, 1.0]), (3, 1)))
    executed = np.stack(env.executed)
    assert (executed[:, :3] != noisy.episode.actions[:, :3]).all() and (executed[:, 3] == 1.0).all()
    assert (np.abs(executed) <= 1.0).all()
    again = LoggingEnv()
    record_episode(again, ReachingExpert("push"), seed=2, action_noise=0.3)
    np.testing.assert_array_equal(np.stack(again.executed), executed)  # seeded by the episode seed
    clean = LoggingEnv()
    record_episode(clean, ReachingExpert("push"), seed=2)
    np.testing.assert_array_equal(np.stack(clean.executed), noisy.episode.actions)
    # a work folder remembers the noise it was collected with
    runs: list = []
    _fake(tmp_path / "ds", runs, action_noise=0.1)
    with pytest.raises(ValueError, match="collected with"):
        _fake(tmp_path / "ds", runs)
    with pytest.raises(ValueError, match="action_noise"):
        CollectConfig(tasks=("push",), out=str(tmp_path / "x"), action_noise=-1.0)


def test_wandering_drives_the_hand_elsewhere_first_and_records_the_experts_action(tmp_path):
    from emcot.eval.recording import WANDER_HIGH, WANDER_LOW, Wanderer

    env = LoggingEnv(max_steps=60)
    attempt = record_episode(env, ReachingExpert("push"), seed=1, wander_steps=40)
    assert len(attempt.episode.actions) == 60 and not attempt.success
    np.testing.assert_array_equal(
        attempt.episode.actions, np.tile(np.float32([0.5, -0.2, 0.1, 1.0]), (60, 1))
    )
    executed = np.stack(env.executed)
    np.testing.assert_array_equal(executed[40:], attempt.episode.actions[40:])  # then the expert drives
    assert not (executed[:40] == attempt.episode.actions[:40]).all(axis=1).any()
    assert (np.abs(executed) <= 1.0).all() and set(np.unique(executed[:40, 3])) <= {-1.0, 1.0}
    again = LoggingEnv(max_steps=60)
    record_episode(again, ReachingExpert("push"), seed=1, wander_steps=40)
    np.testing.assert_array_equal(np.stack(again.executed), executed)  # seeded by the episode seed
    # The wanderer steers toward its waypoint: from the box's low corner every move is positive.
    wanderer = Wanderer(np.random.default_rng(0))
    move = wanderer.action(np.r_[WANDER_LOW - 0.01, np.zeros(36)])
    assert (
        (move[:3] > 0).all()
        and (WANDER_LOW <= wanderer.target).all()
        and (wanderer.target <= WANDER_HIGH).all()
    )
    # a work folder remembers its wandering, and a negative count is refused by name
    runs: list = []
    _fake(tmp_path / "ds", runs, wander_steps=5)
    with pytest.raises(ValueError, match="collected with"):
        _fake(tmp_path / "ds", runs)
    with pytest.raises(ValueError, match="wander_steps"):
        CollectConfig(tasks=("push",), out=str(tmp_path / "x"), wander_steps=-1)
