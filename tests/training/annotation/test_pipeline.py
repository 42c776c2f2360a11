"""End to end: `emcot annotate` with the rule backend, resume, then EM-CoT samples from the sidecar."""

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from emcot.cli.annotate import add_annotate_arguments, run_annotate
from emcot.training.annotation.annotations import read_annotations
from emcot.training.data.emcot_samples import AnnotatedDataset, SampleConfig, action_chunk, format_reasoning
from emcot.training.data.lerobot import LeRobotDataset
from emcot.types import EmCoTSample

_spec = importlib.util.spec_from_file_location(
    "lerobot_fixtures", Path(__file__).parents[1] / "lerobot_fixtures.py"
)
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


def _run(argv):
    parser = argparse.ArgumentParser(prog="emcot annotate")
    add_annotate_arguments(parser)
    return run_annotate(parser.parse_args(argv))


def test_annotate_resume_and_build_samples(tmp_path, capsys):
    root, episodes = fixtures.make_dataset(tmp_path / "pick_place", "v2.1", "video", count=3)
    out = tmp_path / "ann.jsonl"
    assert (
        _run([str(root), "--backend", "rule", "--out", str(out), "--episodes", "0,1", "--no-progress"]) == 0
    )
    assert "annotated 2 ok, 0 failed, 0 already done, of 2 episodes" in capsys.readouterr().out
    # Simulate a run killed mid-write: a torn line at the end of the file.
    with open(out, "a") as f:
        f.write('{"schema_version": 1, "episode_index": 2, "stat')
    with pytest.warns(UserWarning, match="partial last line"):
        assert _run([str(root), "--backend", "rule", "--out", str(out), "--no-progress"]) == 0
    assert "annotated 1 ok, 0 failed, 2 already done, of 3 episodes" in capsys.readouterr().out
    annotations = read_annotations(out)
    assert sorted(annotations) == [0, 1, 2] and len(out.read_text().splitlines()) == 3

    first = annotations[0]
    assert [(s.text, s.start, s.end) for s in first.subtasks] == [
        ("Reach and grasp the object", 0, 12),
        ("Place and release the object", 13, 19),
        ("Hold still and check the result", 20, 23),
    ]
    assert all(
        len(s.reasoning.split()) <= 50 and s.reasoning.startswith("My goal is") for s in first.subtasks
    )
    assert "closing my gripper" in first.subtasks[0].reasoning
    assert first.annotator["backend"] == "rule"
    assert [p.kind for p in first.primitives] == ["idle", "move", "grasp", "move", "release", "idle"]

    dataset = LeRobotDataset(root)
    samples = AnnotatedDataset(dataset, out, SampleConfig(cameras=("top", "wrist"), horizon=4, stride=2))
    assert len(samples) == 3 * 12 and samples.skipped == []
    episode = dataset.episode(0)
    top = episode.images("top")
    for sample in list(samples)[:12]:
        assert isinstance(sample, EmCoTSample) and sample.robot == "pick_place"
        t = sample.metadata["frame_index"]
        subtask = first.subtasks[first.subtask_index_at(t)]
        # The subgoal is the subtask's terminal frame of the subgoal camera (first camera: "top").
        assert sample.metadata["subgoal_frame"] == subtask.end
        np.testing.assert_array_equal(sample.subgoal, top[subtask.end])
        np.testing.assert_array_equal(sample.observation.images["wrist"], episode.images("wrist")[t])
        np.testing.assert_array_equal(sample.observation.state, episodes[0].states[t])
        assert sample.instruction == "put the cube in the bowl"
        assert subtask.text in sample.reasoning and first.plan in sample.reasoning
        assert sample.reasoning == format_reasoning(first, first.subtask_index_at(t), t)
        assert sample.actions.shape == (4, 4)
    last = samples[11]
    assert last.metadata["frame_index"] == 22
    assert last.action_pad.tolist() == [False, False, True, True]
    np.testing.assert_array_equal(last.actions[2:], np.repeat(episodes[0].actions[-1:], 2, axis=0))
    moving = samples[3]  # frame 6: the gripper moves down and forward
    assert "<|movement|>move the gripper down and forward" in moving.reasoning


def test_action_only_mode_and_errors(tmp_path, capsys):
    root, episodes = fixtures.make_dataset(tmp_path / "ds", "v3.0", "image", count=2)
    dataset = LeRobotDataset(root)
    samples = AnnotatedDataset(dataset, None, SampleConfig(mode="action", horizon=3, include_state=False))
    assert len(samples) == 48
    sample = samples[47]
    assert sample.reasoning is None and sample.subgoal is None and sample.observation.state is None
    np.testing.assert_array_equal(sample.actions, np.repeat(episodes[1].actions[-1:], 3, axis=0))
    with pytest.raises(ValueError, match="run `emcot annotate` first"):
        AnnotatedDataset(dataset, None, SampleConfig())
    chunk, pad = action_chunk(np.arange(5.0)[:, None], 3, 4)
    assert chunk[:, 0].tolist() == [3, 4, 4, 4] and pad.tolist() == [False, False, True, True]
    # Bad CLI input: one clear ValueError (the `emcot` console script prints it as one line).
    with pytest.raises(ValueError, match="needs --endpoint"):
        _run([str(root), "--backend", "openai", "--model", "m", "--out", str(tmp_path / "a.jsonl")])
    with pytest.raises(ValueError, match="3 position indices"):
        _run([str(root), "--arm", "left:0,1", "--out", str(tmp_path / "a.jsonl"), "--no-progress"])
    with pytest.raises(ValueError, match="--video-qa asks a VLM"):
        _run([str(root), "--video-qa", "3", "--out", str(tmp_path / "a.jsonl"), "--no-progress"])


@pytest.mark.parametrize("column", ["states", "actions"])
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the writer's statistics of NaN data
def test_non_finite_episodes_are_reported_failed_not_ok(tmp_path, capsys, column):
    from emcot.training.data.lerobot_writer import EpisodeData, WriterConfig, write_lerobot_dataset

    states = fixtures.scripted_states()
    bad = states.copy()
    bad[3, 1] = np.nan if column == "states" else np.inf
    episodes = [
        EpisodeData("lift the cube", states, states),
        EpisodeData("lift the cube", *((bad, states) if column == "states" else (states, bad))),
    ]
    root = write_lerobot_dataset(
        tmp_path / "ds", episodes, fixtures.FPS, WriterConfig(camera_storage="image")
    )
    out = tmp_path / "ann.jsonl"
    assert _run([str(root), "--backend", "rule", "--out", str(out), "--no-progress"]) == 1
    key = "observation.state" if column == "states" else "action"
    report = capsys.readouterr().out
    assert "annotated 1 ok, 1 failed" in report
    assert f"episode 1: reading: Episode 1 has non-finite values in '{key}' (first at frame 3" in report
    assert read_annotations(out)[1].status == "failed"
