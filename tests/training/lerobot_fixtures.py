"""Tiny synthetic robot episodes for the data tests: a scripted pick-and-place with smooth images."""

from __future__ import annotations

import numpy as np

from emcot.training.data.lerobot_writer import EpisodeData, WriterConfig, write_lerobot_dataset

FPS = 10

# Phases of the scripted single-arm episode: (kind, frames, per-frame xyz delta, per-frame gripper delta).
SCRIPT = [
    ("idle", 4, (0.0, 0.0, 0.0), 0.0),
    ("move", 6, (0.0, 0.02, -0.03), 0.0),  # forward and down
    ("grasp", 3, (0.0, 0.0, 0.0), -0.3),
    ("move", 5, (0.0, 0.0, 0.04), 0.0),  # up
    ("release", 2, (0.0, 0.0, 0.0), 0.4),
    ("idle", 4, (0.0, 0.0, 0.0), 0.0),
]


def scripted_states(scale: float = 1.0) -> np.ndarray:
    """(T, 4) states x, y, z, gripper-opening following SCRIPT; frame 0 is the start pose."""
    rows, pose = [], np.array([0.1, 0.2, 0.3, 1.0])
    for _, frames, delta, gripper in SCRIPT:
        for _ in range(frames):
            pose = pose + scale * np.array([*delta, gripper])
            rows.append(pose.copy())
    return np.asarray(rows, dtype=np.float32)


def smooth_frames(length: int, height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    """Gradient images that change with t; smooth, so lossy video stays close to them."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack(
            [(x * 4 + t * 6 + seed * 40) % 256, (y * 6 + seed * 20) % 256, np.full_like(x, (t * 9) % 256)], -1
        )
        for t in range(length)
    ]
    return np.asarray(frames, dtype=np.uint8)


def make_episodes(count: int = 3) -> list[EpisodeData]:
    """``count`` scripted episodes with two cameras, slightly different speeds and two tasks."""
    episodes = []
    for i in range(count):
        states = scripted_states(1.0 + 0.1 * i)
        actions = np.concatenate([states[1:], states[-1:]]) + np.float32(0.001 * i)
        length = len(states)
        images = {"top": smooth_frames(length, seed=i), "wrist": smooth_frames(length, 32, 48, seed=i + 3)}
        task = "put the cube in the bowl" if i % 2 == 0 else "lift the cube"
        episodes.append(EpisodeData(task, states, actions.astype(np.float32), images))
    return episodes


def make_dataset(root, version: str = "v3.0", storage: str = "video", count: int = 3):
    """Write a dataset with ``make_episodes`` and return (root, episodes)."""
    episodes = make_episodes(count)
    config = WriterConfig(version=version, camera_storage=storage, episodes_per_file=2)
    return write_lerobot_dataset(root, episodes, FPS, config), episodes
