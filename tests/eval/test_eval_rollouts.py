"""Rollouts and the evaluation driver on Meta-World: the expert's upper bound, the bundled policy in
closed loop, resuming after a planned stop and after SIGKILL, the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from emcot.eval.adapters import EXPERT_ADAPTER
from emcot.eval.agents import AgentSpec
from emcot.eval.envs import MetaWorldConfig, MetaWorldEnv
from emcot.eval.evaluate import EvalConfig, episode_folder, evaluate
from emcot.eval.policies import ExpertSession, RandomSession, ScriptedExpert
from emcot.eval.records import EpisodeRecord
from emcot.eval.rollout import Agent, RolloutConfig, run_episode

pytest.importorskip("metaworld", reason="needs the [sim] extra: pip install 'emcot[sim]'")

EASY = ("reach-v3", "drawer-open-v3", "button-press-v3")


def without_timings(results: dict) -> dict:
    """results.json minus wall-clock latencies, which no two runs share."""
    text = json.dumps(results, sort_keys=True)
    data = json.loads(text)
    for section in ("tasks", "splits"):
        for row in data[section].values():
            for cell in row.values():
                cell.pop("step_ms"), cell.pop("control_hz")
    for section in ("bucket_mean", "episode_mean"):
        for cell in data[section].values():
            cell.pop("step_ms"), cell.pop("control_hz")
    return data


def test_the_expert_solves_easy_tasks_through_the_harness(tmp_path):
    started = time.perf_counter()
    config = EvalConfig(tasks=EASY, agent=AgentSpec(policy="expert"), episodes=5)
    outcome = evaluate(config, tmp_path, progress=False)
    assert outcome.complete and outcome.ran == 15
    for task in EASY:
        assert outcome.metrics.tasks[task]["expert"].success_rate >= 0.9
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"tasks", "splits", "bucket_mean", "episode_mean", "protocol"}
    assert set(results["tasks"]["reach-v3"]["expert"]) == {
        "success_rate",
        "episodes",
        "mean_steps",
        "think_ratio",
        "step_ms",
        "control_hz",
    }
    assert results["protocol"]["episodes"] == 5 and results["protocol"]["seed"] == 1000
    assert "| reach-v3 " in (tmp_path / "results.md").read_text()
    assert time.perf_counter() - started < 20


def test_a_rendered_expert_episode_keeps_frames_and_stops_at_success():
    env = MetaWorldEnv("reach-v3", MetaWorldConfig(resolution=64))
    agent = Agent("expert", ExpertSession("reach-v3"), EXPERT_ADAPTER)
    record = run_episode(env, agent, seed=1000, config=RolloutConfig(frame_every=10))
    env.close()
    assert record.success and record.steps == record.first_success < 500
    assert record.step_success[-1] and not any(record.step_success[:-1])
    # every 10th step, and the last one (the scene the episode ended in)
    assert [f.env_step for f in record.frames] == [*range(0, record.steps, 10), record.steps]
    assert len(record.actions) == record.steps and len(record.actions[0]) == 4
    assert record.policy_steps[0].predicted == []  # a scripted expert predicts no chunk
    assert record.frames[0].image.shape == (64, 64, 3) and len(record.policy_steps) == record.steps


def test_random_chunks_run_in_full_and_the_cap_ends_the_episode():
    env = MetaWorldEnv("reach-v3", MetaWorldConfig(cameras=()))
    agent = Agent("random", RandomSession(n_action_steps=3, seed=0), EXPERT_ADAPTER)
    record = run_episode(env, agent, seed=1000, config=RolloutConfig(max_steps=10))
    again = run_episode(env, agent, seed=1000, config=RolloutConfig(max_steps=10))
    env.close()
    assert record.steps == 10 and [s.actions for s in record.policy_steps] == [3, 3, 3, 1]
    assert [s.env_step for s in record.policy_steps] == [0, 3, 6, 9]
    assert record.rewards == again.rewards


def test_the_expert_action_checks_its_input():
    with pytest.raises(ValueError, match="39-d"):
        ScriptedExpert("reach-v3").action(np.zeros(4))


def test_the_bundled_policy_runs_a_closed_loop_through_a_camera_map(tmp_path):
    spec = AgentSpec(
        policy="synthetic", modes=("full", "reactive"), camera_map=(("corner2", "head"),), replan="every_k=2"
    )
    config = EvalConfig(
        tasks=("reach-v3",), agent=spec, episodes=1, max_steps=20, resolution=64, frame_every=5
    )
    outcome = evaluate(config, tmp_path, progress=False)
    assert outcome.complete
    record = EpisodeRecord.load(episode_folder(tmp_path, "reach-v3", "full", 0))
    assert record.steps == 20 and len(record.policy_steps) == 3  # chunks of 8 actions: 8 + 8 + 4
    assert [s.reason for s in record.policy_steps] == ["no_plan", None, "every_k"]
    assert len(record.plans) == 2 and record.plans[0].subgoal is not None and record.plans[0].reasoning
    assert {"reasoning", "subgoal", "actions", "step"} <= set(record.policy_steps[0].timings)
    # every 5th step, the re-plans at steps 0 and 16, and the last step
    assert [f.env_step for f in record.frames] == [0, 5, 10, 15, 16, 20]
    # each step keeps its whole predicted chunk; the env ran its actions as predicted
    assert [np.shape(s.predicted) for s in record.policy_steps] == [(8, 4)] * 3
    executed = [a for s in record.policy_steps for a in s.predicted[: s.actions]]
    np.testing.assert_allclose(record.actions, executed, rtol=1e-6)
    cell = outcome.metrics.tasks["reach-v3"]["full"]
    assert cell.think_ratio == pytest.approx(2 / 3) and cell.step_ms > 0
    with pytest.raises(ValueError, match="--camera-map corner2=head"):
        evaluate(
            EvalConfig(tasks=("reach-v3",), agent=AgentSpec("synthetic"), episodes=1),
            tmp_path / "x",
            progress=False,
        )
    assert not (tmp_path / "x").exists()


def test_an_asynchronous_session_thinks_while_acting_and_is_closed(tmp_path, monkeypatch):
    from emcot.runtime.session import PolicySession

    closed = []
    original = PolicySession.close
    monkeypatch.setattr(
        PolicySession, "close", lambda self: (closed.append(self.async_replan), original(self))
    )
    spec = AgentSpec(
        policy="synthetic",
        modes=("full",),
        camera_map=(("corner2", "head"),),
        replan="every_k=1",
        async_replan=True,
    )
    config = EvalConfig(tasks=("reach-v3",), agent=spec, episodes=1, max_steps=40, resolution=64)
    outcome = evaluate(config, tmp_path, progress=False)
    assert closed == [True]
    record = EpisodeRecord.load(episode_folder(tmp_path, "reach-v3", "full", 0))
    steps = record.policy_steps
    assert steps[0].reason == "no_plan" and steps[0].replanned  # nothing to act on: plans in place
    # Later rules only start the thinking: the step that acts on the finished plan reports it.
    assert all(step.reason in ("every_k", None) for step in steps[1:])
    assert outcome.protocol["async_replan"] is True and outcome.metrics.episode_mean["full"].control_hz > 0


def test_a_stopped_evaluation_resumes_to_the_same_results(tmp_path):
    config = EvalConfig(tasks=("reach-v3", "hammer-v3"), agent=AgentSpec(policy="expert"), episodes=3)
    evaluate(config, tmp_path / "ref", progress=False)
    stopped = evaluate(config, tmp_path / "run", progress=False, max_new_episodes=4)
    assert not stopped.complete and stopped.metrics is None and not (tmp_path / "run/results.json").exists()
    shutil.rmtree(episode_folder(tmp_path / "run", "reach-v3", "expert", 1))  # a lost episode is rerun too
    resumed = evaluate(config, tmp_path / "run", progress=False)
    assert resumed.complete and (resumed.ran, resumed.skipped) == (3, 3)
    results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("ref", "run")]
    assert without_timings(results[0]) == without_timings(results[1])
    with pytest.raises(ValueError, match="another protocol"):
        evaluate(
            EvalConfig(tasks=("reach-v3",), agent=AgentSpec(policy="random"), episodes=1), tmp_path / "run"
        )


CONFIG = EvalConfig(tasks=("reach-v3", "drawer-open-v3"), agent=AgentSpec(policy="expert"), episodes=6)

# The killed process runs CONFIG with a pause after each saved episode, so the kill lands mid-run.
KILLED_RUN = """
import sys, time
import emcot.eval.evaluate as driver
from emcot.eval.agents import AgentSpec
from emcot.eval.evaluate import EvalConfig, evaluate

run = driver._Worker.run

def slow_run(self, job):
    summary = run(self, job)
    time.sleep(0.4)
    return summary

driver._Worker.run = slow_run
config = EvalConfig(tasks=("reach-v3", "drawer-open-v3"), agent=AgentSpec(policy="expert"), episodes=6)
evaluate(config, sys.argv[1], progress=False)
"""


def test_an_evaluation_killed_with_sigkill_resumes_to_the_same_results(tmp_path):
    script = tmp_path / "run_eval.py"
    script.write_text(KILLED_RUN)
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(script), str(out)], cwd=tmp_path)
    deadline = time.monotonic() + 90
    while (
        not list(out.glob("episodes/*/*/*/episode.json"))
        and process.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    finished = len(list(out.glob("episodes/*/*/*/episode.json")))
    assert 1 <= finished < 12, "the kill should land mid-run"
    assert not (out / "results.json").exists()
    resumed = evaluate(CONFIG, out, progress=False)
    assert resumed.complete and resumed.skipped == finished
    reference = evaluate(CONFIG, tmp_path / "reference", progress=False)
    assert reference.ran == 12
    results = [json.loads((folder / "results.json").read_text()) for folder in (out, tmp_path / "reference")]
    assert without_timings(results[0]) == without_timings(results[1])


def test_the_command_line(tmp_path, capsys):
    from emcot.cli.eval import add_eval_arguments, run_eval

    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args(
        ["metaworld", "--policy", "random", "--tasks", "reach", "--episodes", "2", "--max-steps", "30",
         "--n-action-steps", "5", "--no-progress", "--out", str(tmp_path)]
    )  # fmt: skip
    assert run_eval(args) == 0
    printed = capsys.readouterr().out
    assert "**bucket mean**" in printed and "random" in printed
    results = json.loads(Path(tmp_path, "results.json").read_text())
    assert results["episode_mean"]["random"]["episodes"] == 2
    assert results["episode_mean"]["random"]["mean_steps"] == 30
    with pytest.raises(SystemExit):
        parser.parse_args(["metaworld", "--modes", "ful", "--out", str(tmp_path)])


def test_spawned_workers_give_the_same_results_as_one_process(tmp_path):
    config = EvalConfig(tasks=("reach-v3", "button-press-v3"), agent=AgentSpec(policy="expert"), episodes=2)
    parallel = evaluate(dataclasses.replace(config, workers=2), tmp_path / "two", progress=False)
    single = evaluate(config, tmp_path / "one", progress=False)
    assert parallel.complete and parallel.ran == single.ran == 4
    results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("two", "one")]
    assert results[0]["protocol"] == results[1]["protocol"]  # the worker count is not part of the protocol
    assert without_timings(results[0]) == without_timings(results[1])
