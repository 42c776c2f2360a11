"""LeRobot v2.1 / v3 datasets written on disk by the tests, read back frame by frame."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from emcot.training.data.lerobot import LeRobotDataset

_spec = importlib.util.spec_from_file_location(
    "lerobot_fixtures", Path(__file__).parents[1] / "lerobot_fixtures.py"
)
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

LAYOUTS = [("v2.1", "video"), ("v2.1", "image"), ("v3.0", "video"), ("v3.0", "image")]


@pytest.mark.parametrize(("version", "storage"), LAYOUTS)
def test_round_trip(tmp_path, version, storage):
    root, episodes = fixtures.make_dataset(tmp_path / "ds", version, storage)
    dataset = LeRobotDataset(root)
    assert dataset.info.codebase_version == version
    assert dataset.episode_indices == [0, 1, 2]
    assert sorted(dataset.cameras) == ["top", "wrist"]
    assert dataset.tasks == {0: "put the cube in the bowl", 1: "lift the cube"}
    for index, expected in enumerate(episodes):
        episode = dataset.episode(index)
        length = len(expected.states)
        assert len(episode) == length
        np.testing.assert_allclose(episode.timestamps, np.arange(length) / fixtures.FPS, atol=1e-6)
        np.testing.assert_array_equal(episode.frame_indices, np.arange(length))
        np.testing.assert_array_equal(episode.states, expected.states)
        np.testing.assert_array_equal(episode.actions, expected.actions)
        assert episode.instruction == expected.instruction
        for camera in ("top", "wrist"):
            images = episode.images(camera)
            assert images.shape == expected.images[camera].shape and images.dtype == np.uint8
            error = np.abs(images.astype(int) - expected.images[camera].astype(int))
            if storage == "image":
                assert error.max() == 0
            else:
                # yuv420p chroma subsampling and the codec's quantisation, on smooth images.
                assert error.mean() < 8
                # Each decoded frame is closest to its own source frame: no off-by-one at boundaries.
                for t in (0, length - 1):
                    distances = [
                        np.abs(images[t].astype(int) - f.astype(int)).mean() for f in expected.images[camera]
                    ]
                    assert int(np.argmin(distances)) == t
    stats = dataset.stats
    np.testing.assert_allclose(
        stats["observation.state"]["mean"], np.concatenate([e.states for e in episodes]).mean(0), atol=1e-5
    )
    np.testing.assert_allclose(
        stats["action"]["max"], np.concatenate([e.actions for e in episodes]).max(0), atol=1e-6
    )


def test_v3_layout_on_disk(tmp_path):
    root, episodes = fixtures.make_dataset(tmp_path / "ds", "v3.0", "video")
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(len(e.states) for e in episodes)
    # episodes_per_file=2: episodes 0 and 1 share file-000 (data and video), episode 2 is in file-001.
    assert (root / "data/chunk-000/file-001.parquet").is_file()
    assert (root / "videos/observation.images.top/chunk-000/file-000.mp4").is_file()
    dataset = LeRobotDataset(root)
    second = dataset.record(1)
    assert second.data_file == "data/chunk-000/file-000.parquet"
    span = second.videos["observation.images.top"]
    assert span.from_timestamp == pytest.approx(len(episodes[0].states) / fixtures.FPS)
    assert dataset.record(2).videos["observation.images.top"].from_timestamp == 0.0


def test_camera_mapping_and_observation(tmp_path):
    root, episodes = fixtures.make_dataset(tmp_path / "ds", "v2.1", "image", count=1)
    dataset = LeRobotDataset(root, cameras={"head": "observation.images.top"})
    episode = dataset.episode(0)
    observation = episode.observation(5)
    assert list(observation.images) == ["head"]
    np.testing.assert_array_equal(observation.images["head"], episodes[0].images["top"][5])
    np.testing.assert_array_equal(observation.state, episodes[0].states[5])
    frames = list(episode.frames())
    assert len(frames) == len(episode) and frames[3].index == 3
    np.testing.assert_array_equal(frames[3].action, episodes[0].actions[3])


def test_boundary_errors(tmp_path):
    root, _ = fixtures.make_dataset(tmp_path / "ds", "v3.0", "image", count=1)
    with pytest.raises(ValueError, match="available camera features"):
        LeRobotDataset(root, cameras={"head": "observation.images.nope"})
    with pytest.raises(ValueError, match="state_key"):
        LeRobotDataset(root, state_key="observation.joints")
    with pytest.raises(ValueError, match="is not a LeRobot dataset"):
        LeRobotDataset(tmp_path / "empty")
    dataset = LeRobotDataset(root)
    with pytest.raises(ValueError, match="Episode 7 is not"):
        dataset.episode(7)
    with pytest.raises(ValueError, match="Unknown camera"):
        dataset.episode(0).images("side")
