"""Future-frame (visual generation) samples from a real LeRobot dataset, through collation and losses."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from emcot.training.collate import SampleCollator
from emcot.training.data.future_frames import FutureFrameConfig, FutureFrameDataset
from emcot.training.data.lerobot import LeRobotDataset
from emcot.types import SampleKind

_spec = importlib.util.spec_from_file_location(
    "lerobot_fixtures", Path(__file__).with_name("lerobot_fixtures.py")
)
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root, episodes = fixtures.make_dataset(tmp_path_factory.mktemp("ds") / "pick", "v3.0", "image", count=2)
    return LeRobotDataset(root), episodes


def test_samples_hold_context_frames_and_the_future_target(dataset):
    ds, episodes = dataset
    cfg = FutureFrameConfig(camera="top", offset=4, context=3, context_gap=2, stride=3)
    frames = FutureFrameDataset(ds, cfg)
    lengths = [len(e.states) for e in episodes]
    expected = sum(len(range(4, n - 4, 3)) for n in lengths)
    assert len(frames) == expected
    sample = frames[1]
    ep, t = sample.metadata["episode"], sample.metadata["frame"]
    video = episodes[ep].images["top"]
    assert list(sample.observation.images) == ["frame_0", "frame_1", "frame_2"]
    for j, f in enumerate((t - 4, t - 2, t)):
        assert np.array_equal(sample.observation.images[f"frame_{j}"], video[f])
    assert np.array_equal(sample.subgoal, video[t + 4])
    assert sample.kind is SampleKind.GENERATION and sample.instruction.startswith("Imagine the next scene:")


def test_future_frames_train_the_generation_expert(dataset):
    from emcot.synthetic.world import build_synthetic_policy, synthetic_samples

    ds, _ = dataset
    frames = FutureFrameDataset(ds, FutureFrameConfig(offset=3, context=2))
    policy = build_synthetic_policy(synthetic_samples(2, seed=0))
    out = policy.model.compute_loss(SampleCollator(policy.processor)([frames[0], frames[5]]))
    assert set(out.terms) == {"subgoal"} and float(out.terms["subgoal"]) > 0


def test_config_and_length_errors(dataset):
    ds, _ = dataset
    with pytest.raises(ValueError, match="offset must be"):
        FutureFrameConfig(offset=0)
    with pytest.raises(ValueError, match="camera 'side'"):
        FutureFrameDataset(ds, FutureFrameConfig(camera="side"))
    with pytest.raises(ValueError, match="longer than"):
        FutureFrameDataset(ds, FutureFrameConfig(offset=500))
