"""Annotated LeRobot episodes → ``EmCoTSample``s (reasoning, subgoal image, action chunk).

For frame ``t`` (every ``stride`` frames) a sample holds the chosen cameras' images at ``t`` and
the state, the episode instruction, the reasoning text of the subtask covering ``t`` (see
``format_reasoning``), the subtask's terminal frame as subgoal, and ``actions[t : t + horizon]``
padded by repeating the last action past the episode end (``action_pad`` marks padding).
Mode ``"action"`` yields action-only samples and needs no annotation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emcot.io_utils import AT_LEAST_ONE, check_fields
from emcot.tokenizers.actions import chunk_windows
from emcot.training.annotation.annotations import EpisodeAnnotation, read_annotations
from emcot.training.data.lerobot import LeRobotDataset, LeRobotEpisode
from emcot.types import EmCoTSample


def format_reasoning(annotation: EpisodeAnnotation, subtask_index: int, t: int) -> str:
    """Plan, current subtask with its first-person reasoning, and the movement at ``t``, one string.

    Uses HALO's plain-text markers ``<|plan|>``, ``<|subtask|>`` and ``<|movement|>``; the
    movement line lists the non-idle primitives active at frame ``t`` and is left out when none are.
    """
    subtask = annotation.subtasks[subtask_index]
    text = f"<|plan|>{annotation.plan}\n<|subtask|>{subtask.text}. {subtask.reasoning}"
    moving = [p.sentence() for p in annotation.primitives if p.kind != "idle" and p.start <= t <= p.end]
    if moving:
        text += "\n<|movement|>" + "; ".join(moving)
    return text


@dataclass(frozen=True)
class SampleConfig:
    """Which cameras, horizon, stride and mode the builder uses.

    ``cameras`` None takes every camera of the dataset; ``subgoal_camera`` None takes the first of
    ``cameras``; ``robot`` None uses the dataset name.
    """

    cameras: tuple[str, ...] | None = None
    subgoal_camera: str | None = None
    horizon: int = 16
    stride: int = 1
    include_state: bool = True
    mode: str = "emcot"
    robot: str | None = None
    formatter: Callable[[EpisodeAnnotation, int, int], str] = format_reasoning

    def __post_init__(self):
        check_fields(self, horizon=AT_LEAST_ONE, stride=AT_LEAST_ONE)
        if self.mode not in ("emcot", "action"):
            raise ValueError(f"mode must be 'emcot' or 'action', got {self.mode!r}.")


def action_chunk(actions: np.ndarray, t: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """``actions[t : t + horizon]``, repeating the last action past the end, and its padding mask."""
    n = len(actions)
    if not 0 <= t < n:
        raise ValueError(f"Frame {t} is outside an action sequence of length {n}.")
    # The first window of the slice from t is the episode's window at t, without windowing all T
    # frames; copies, so a cached sample does not keep the slice's other windows alive.
    chunks, is_pad = chunk_windows(actions[t : t + horizon], horizon)
    return np.array(chunks[0]), np.array(is_pad[0])


def episode_samples(
    episode: LeRobotEpisode,
    annotation: EpisodeAnnotation | None,
    config: SampleConfig,
    robot: str = "default",
) -> Iterator[EmCoTSample]:
    """Yield the samples of one episode (``annotation`` may be None in action mode)."""
    if episode.actions is None:
        raise ValueError(
            f"Episode {episode.episode_index} has no actions; set action_key on the LeRobotDataset."
        )
    cameras = list(config.cameras) if config.cameras is not None else list(episode.cameras)
    missing = [c for c in cameras if c not in episode.cameras]
    if missing:
        raise ValueError(f"Cameras {missing} are not mapped; the dataset has {sorted(episode.cameras)}.")
    emcot = config.mode == "emcot"
    subgoal_camera = config.subgoal_camera or (cameras[0] if cameras else None)
    if emcot:
        if annotation is None or annotation.status != "ok":
            raise ValueError(
                f"Episode {episode.episode_index} has no successful annotation; annotate it first."
            )
        if annotation.num_frames != len(episode):
            raise ValueError(
                f"The annotation of episode {episode.episode_index} covers {annotation.num_frames} frames but the "
                f"episode has {len(episode)}; the sidecar belongs to another dataset version — re-annotate."
            )
        if subgoal_camera is None or subgoal_camera not in episode.cameras:
            raise ValueError(f"subgoal_camera {subgoal_camera!r} is not one of {sorted(episode.cameras)}.")
    for t in range(0, len(episode), config.stride):
        actions, action_pad = action_chunk(episode.actions, t, config.horizon)
        metadata = {
            "episode_index": episode.episode_index,
            "frame_index": int(episode.frame_indices[t]),
            "timestamp": float(episode.timestamps[t]),
        }
        reasoning = subgoal = None
        if emcot:
            # Both were checked above: emcot mode needs a successful annotation and a mapped camera.
            assert annotation is not None and subgoal_camera is not None
            index = annotation.subtask_index_at(t)
            subtask = annotation.subtasks[index]
            reasoning = config.formatter(annotation, index, t)
            subgoal = episode.images(subgoal_camera)[subtask.subgoal_frame]
            metadata |= {"subtask_index": index, "subgoal_frame": subtask.subgoal_frame}
        yield EmCoTSample(
            observation=episode.observation(t, cameras, with_state=config.include_state),
            instruction=episode.instruction,
            reasoning=reasoning,
            subgoal=subgoal,
            actions=actions,
            robot=robot,
            action_pad=action_pad,
            metadata=metadata,
        )


class AnnotatedDataset:
    """Map-style view of a LeRobot dataset plus its annotation sidecar as ``EmCoTSample``s.

    In ``emcot`` mode only episodes whose annotation is ``ok`` are used (``skipped`` lists the
    others); in ``action`` mode every episode is used and ``annotations`` may be None.
    """

    def __init__(
        self,
        dataset: LeRobotDataset,
        annotations: str | Path | dict[int, EpisodeAnnotation] | None,
        config: SampleConfig | None = None,
    ):
        self.dataset = dataset
        self.config = config or SampleConfig()
        if isinstance(annotations, (str, Path)):
            annotations = read_annotations(annotations)
        if self.config.mode == "emcot" and not annotations:
            raise ValueError(
                "emcot mode needs annotations: run `emcot annotate` first, or use mode='action'."
            )
        self.annotations = annotations or {}
        self.robot = self.config.robot or dataset.name
        self.skipped: list[int] = []
        self._index: list[tuple[int, int]] = []
        for episode_index in dataset.episode_indices:
            annotation = self.annotations.get(episode_index)
            if self.config.mode == "emcot" and (annotation is None or annotation.status != "ok"):
                self.skipped.append(episode_index)
                continue
            length = dataset.record(episode_index).length
            self._index += [(episode_index, t) for t in range(0, length, self.config.stride)]
        self._cached: tuple[int, list[EmCoTSample]] | None = None

    def __len__(self) -> int:
        return len(self._index)

    def _episode_samples(self, episode_index: int) -> list[EmCoTSample]:
        # Samples of one episode are built together (one video decode) and kept for neighbours.
        if self._cached is None or self._cached[0] != episode_index:
            episode = self.dataset.episode(episode_index)
            samples = list(
                episode_samples(episode, self.annotations.get(episode_index), self.config, self.robot)
            )
            self._cached = (episode_index, samples)
        return self._cached[1]

    def __getitem__(self, i: int) -> EmCoTSample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        episode_index, t = self._index[i]
        return self._episode_samples(episode_index)[t // self.config.stride]

    def __iter__(self) -> Iterator[EmCoTSample]:
        for episode_index in dict.fromkeys(e for e, _ in self._index):
            yield from self._episode_samples(episode_index)
