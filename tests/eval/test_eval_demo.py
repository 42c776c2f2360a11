"""A policy's card drives the simulator commands: ``emcot eval`` takes its tasks, ``emcot demo``
runs one closed-loop episode (or, without the simulator, a trace on the shipped observation)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from emcot.cli.main import main
from emcot.policy.card import ExampleObservation, PolicyCard
from emcot.policy.policy import EmCoTPolicy

pytest.importorskip("metaworld", reason="needs the [sim] extra: pip install 'emcot[sim]'")


@pytest.fixture(scope="module")
def carded_folder(tmp_path_factory):
    """The synthetic policy (camera 'head') carded as a Meta-World reach policy on corner2 at 64 px."""
    policy = EmCoTPolicy.synthetic()
    policy.card = PolicyCard(
        benchmark="metaworld",
        tasks=("reach-v3",),
        camera="corner2",
        resolution=64,
        evaluation={"max_steps": 24},
        example=ExampleObservation("example_observation.png", "Reach a goal position", (0.0, 0.6, 0.2, 1.0)),
    )
    policy.card_example = np.full((64, 64, 3), 90, np.uint8)
    return policy.save_pretrained(tmp_path_factory.mktemp("carded") / "policy")


def test_eval_defaults_to_the_tasks_of_the_policy_card(carded_folder, tmp_path, capsys):
    from emcot.cli.eval import add_eval_arguments, run_eval

    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args(
        ["metaworld", "--policy", str(carded_folder), "--camera-map", "corner2=head", "--episodes", "1",
         "--max-steps", "8", "--resolution", "64", "--modes", "reactive", "--no-progress", "--out", str(tmp_path)]
    )  # fmt: skip
    assert run_eval(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["protocol"]["tasks"] == ["reach-v3"]
    # the evaluation's pages, and where they are
    assert f"view it: {(tmp_path / 'view.html').resolve()}" in capsys.readouterr().out
    assert (tmp_path / "view_episodes" / "reactive" / "reach-v3" / "000.html").is_file()


def test_demo_runs_one_closed_loop_episode_and_writes_its_pictures(carded_folder, tmp_path, capsys):
    # The card names the simulator camera (corner2); the policy reads it as its own camera 'head'.
    assert (
        main(["demo", "--policy", str(carded_folder), "--out", str(tmp_path / "demo"), "--seed", "1000"]) == 0
    )
    printed = capsys.readouterr().out
    assert "task: reach-v3 — Reach a goal position (seed 1000)" in printed and "policy steps" in printed
    out = tmp_path / "demo"
    for name in ("observation.png", "reached.png"):
        assert Image.open(out / name).size == (64, 64)
    assert Image.open(out / "subgoal.png").size == (32, 32) and (out / "reasoning.txt").read_text().strip()
    episode = json.loads((out / "episode" / "episode.json").read_text())
    assert episode["summary"]["task"] == "reach-v3" and episode["summary"]["steps"] <= 24
    assert f"view it: {(out / 'episode.html').resolve()}" in printed
    assert 'class="view subgoal"' in (out / "episode.html").read_text()


def test_demo_without_the_simulator_shows_a_trace_on_the_shipped_observation(carded_folder, tmp_path, capsys):
    assert main(["demo", "--policy", str(carded_folder), "--no-sim", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "instruction: Reach a goal position" in printed
    assert f"view it     : {(tmp_path / 'trace.html').resolve()}" in printed
    assert (tmp_path / "observation_head.png").is_file()  # saved with the trace, shown on its page
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "observation.png")), np.full((64, 64, 3), 90)
    )
    assert (tmp_path / "trace.json").is_file() and (tmp_path / "subgoal.png").is_file()
