"""Reader for LeRobot datasets on disk (v2.x and v3.x): episodes with frames, states, actions, task.

    dataset = LeRobotDataset("path/to/dataset", cameras={"head": "observation.images.top"})
    episode = dataset.episode(0)
    episode.instruction, episode.states, episode.actions, episode.images("head")

Images come from mp4 files decoded with PyAV or from PNG/JPEG bytes stored in the parquet rows.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from emcot.io_utils import AT_LEAST_ONE, check_value
from emcot.training.data.frame_cache import frame_cache
from emcot.training.data.lerobot_meta import (
    IMAGE_PREFIX,
    EpisodeRecord,
    LeRobotInfo,
    load_episode_records,
    load_stats,
    load_tasks,
    require_pyarrow,
)
from emcot.training.data.video import decode_video, match_timestamps
from emcot.types import Observation

if TYPE_CHECKING:  # pyarrow has no type stubs (mypy reads Table as Any); the annotations name it anyway
    import pyarrow


@dataclass
class EpisodeFrame:
    """One time step of an episode."""

    index: int
    timestamp: float
    images: dict[str, np.ndarray]
    state: np.ndarray | None
    action: np.ndarray | None


@dataclass
class LeRobotEpisode:
    """One episode: per-frame arrays in memory, camera images decoded on first use and cached."""

    episode_index: int
    instruction: str
    tasks: list[str]
    fps: float
    timestamps: np.ndarray
    frame_indices: np.ndarray
    states: np.ndarray | None
    actions: np.ndarray | None
    cameras: dict[str, str]
    _dataset: LeRobotDataset = field(repr=False)
    _record: EpisodeRecord = field(repr=False)
    _table: pyarrow.Table = field(repr=False)
    _images: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.timestamps)

    def check_finite(self) -> None:
        """Raise a ValueError naming the column and frame when the states or actions hold NaN or inf."""
        columns = ((self._dataset.state_key, self.states), (self._dataset.action_key, self.actions))
        for key, values in columns:
            if values is None or np.isfinite(values).all():
                continue
            frame, dim = (int(i) for i in np.argwhere(~np.isfinite(values))[0])
            raise ValueError(
                f"Episode {self.episode_index} has non-finite values in {key!r} (first at frame {frame}, "
                f"dimension {dim}: {values[frame, dim]}); fix or drop the episode."
            )

    def columns(self, prefix: str) -> dict[str, np.ndarray]:
        """Every non-camera feature whose key starts with ``prefix`` (e.g. ``"sim."``) as float32 (T, k)."""
        features = self._dataset.info.features
        keys = [k for k, spec in features.items() if k.startswith(prefix) and not spec.is_visual]
        return {key: self._dataset._vectors(self._table, key) for key in keys}

    def images(self, camera: str) -> np.ndarray:
        """All frames of ``camera`` (our observation name) as uint8 (T, H, W, 3)."""
        if camera not in self.cameras:
            raise ValueError(
                f"Unknown camera {camera!r}; this dataset maps the cameras {sorted(self.cameras)}."
            )
        if camera not in self._images:
            self._images[camera] = self._dataset._load_images(self, self.cameras[camera])
        return self._images[camera]

    def observation(self, t: int, cameras: list[str] | None = None, with_state: bool = True) -> Observation:
        """The observation at frame ``t`` with the chosen cameras (default: all) and the state."""
        if not 0 <= t < len(self):
            raise ValueError(f"Frame {t} is outside episode {self.episode_index} of length {len(self)}.")
        names = list(self.cameras) if cameras is None else cameras
        state = self.states[t] if (with_state and self.states is not None) else None
        return Observation(images={name: self.images(name)[t] for name in names}, state=state)

    def frames(self, cameras: list[str] | None = None) -> Iterator[EpisodeFrame]:
        """Yield every frame with its images, state and action."""
        names = list(self.cameras) if cameras is None else cameras
        for t in range(len(self)):
            yield EpisodeFrame(
                index=int(self.frame_indices[t]),
                timestamp=float(self.timestamps[t]),
                images={name: self.images(name)[t] for name in names},
                state=None if self.states is None else self.states[t],
                action=None if self.actions is None else self.actions[t],
            )


class LeRobotDataset:
    """A LeRobot dataset folder, read without the ``lerobot`` package.

    ``cameras`` maps our observation names to LeRobot feature keys; by default every camera
    feature is used under its key without the ``observation.images.`` prefix.
    ``state_key``/``action_key`` name the proprioception and action columns (None when absent).
    """

    def __init__(
        self,
        root: str | Path,
        cameras: dict[str, str] | None = None,
        state_key: str | None = "observation.state",
        action_key: str | None = "action",
        video_tolerance_s: float | None = None,
        *,
        cached_episodes: int = 1,
    ):
        self.root = Path(root)
        self.info = LeRobotInfo.load(self.root)
        self.name = self.root.resolve().name
        self.tasks = load_tasks(self.root, self.info)
        self._records = {r.episode_index: r for r in load_episode_records(self.root, self.info)}
        available = self.info.camera_keys
        if cameras is None:
            cameras = {k.removeprefix(IMAGE_PREFIX): k for k in available}
        unknown = [k for k in cameras.values() if k not in available]
        if unknown:
            raise ValueError(
                f"Camera features {unknown} are not in info.json; available camera features: {available}."
            )
        self.cameras = dict(cameras)
        for key in (state_key, action_key):
            if key is not None and key not in self.info.features:
                raise ValueError(
                    f"Feature {key!r} is not in info.json (features: {sorted(self.info.features)}); "
                    "pass the right state_key/action_key, or None."
                )
        self.state_key, self.action_key = state_key, action_key
        # Half a frame period: wide enough for container rounding, narrow enough to never pick
        # the neighbouring frame.
        self.video_tolerance_s = video_tolerance_s if video_tolerance_s is not None else 0.5 / self.info.fps
        self._stats: dict | None = None
        self._cached_file: tuple[str, pyarrow.Table] | None = None
        # The last episodes read (parquet rows); their decoded images live in the process-wide
        # frame cache (training.data.frame_cache), which packing's random access needs.
        self.cached_episodes = check_value("cached_episodes", cached_episodes, int, AT_LEAST_ONE)
        self._episodes: OrderedDict[int, LeRobotEpisode] = OrderedDict()

    @property
    def fps(self) -> float:
        """Frames per second of the recording."""
        return self.info.fps

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """Per-feature statistics (see ``lerobot_meta.load_stats``)."""
        if self._stats is None:
            self._stats = load_stats(self.root, self.info)
        return self._stats

    @property
    def episode_indices(self) -> list[int]:
        """Episode indices present in the metadata, sorted."""
        return sorted(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[LeRobotEpisode]:
        for index in self.episode_indices:
            yield self.episode(index)

    def record(self, episode_index: int) -> EpisodeRecord:
        """The metadata record of one episode."""
        if episode_index not in self._records:
            raise ValueError(
                f"Episode {episode_index} is not in {self.root} (episodes {self.episode_indices[:10]}...)."
            )
        return self._records[episode_index]

    def episode(self, episode_index: int) -> LeRobotEpisode:
        """One episode's rows; images are decoded lazily by ``LeRobotEpisode.images``. The last
        ``cached_episodes`` episodes are kept (shared, so treat their arrays as read-only)."""
        episode = self._episodes.pop(episode_index, None)
        if episode is None:
            episode = self._load_episode(episode_index)
            while len(self._episodes) >= self.cached_episodes:
                self._episodes.popitem(last=False)
        self._episodes[episode_index] = episode
        return episode

    def _load_episode(self, episode_index: int) -> LeRobotEpisode:
        record = self.record(episode_index)
        table = self._episode_table(record)
        if table.num_rows != record.length:
            raise ValueError(
                f"Episode {episode_index} has {table.num_rows} rows in {record.data_file} but its metadata says "
                f"{record.length}; the dataset is inconsistent."
            )
        timestamps = self._column(table, "timestamp")
        if timestamps is None:
            timestamps = np.arange(record.length, dtype=np.float64) / self.fps
        frame_indices = self._column(table, "frame_index")
        if frame_indices is None:
            frame_indices = np.arange(record.length)
        instruction = record.tasks[0] if record.tasks else self._task_from_rows(table, episode_index)
        return LeRobotEpisode(
            episode_index=episode_index,
            instruction=instruction,
            tasks=record.tasks or [instruction],
            fps=self.fps,
            timestamps=timestamps.reshape(-1).astype(np.float64),
            frame_indices=frame_indices.reshape(-1).astype(np.int64),
            states=None if self.state_key is None else self._vectors(table, self.state_key),
            actions=None if self.action_key is None else self._vectors(table, self.action_key),
            cameras=self.cameras,
            _dataset=self,
            _record=record,
            _table=table,
        )

    def _episode_table(self, record: EpisodeRecord) -> pyarrow.Table:
        pa = require_pyarrow()
        if self._cached_file is None or self._cached_file[0] != record.data_file:
            path = self.root / record.data_file
            if not path.is_file():
                raise ValueError(f"Data file {path} for episode {record.episode_index} is missing.")
            # v3 files hold many episodes; keeping the last file avoids re-reading it per episode.
            self._cached_file = (record.data_file, pa.parquet.read_table(path))
        table = self._cached_file[1]
        if "episode_index" in table.column_names:
            table = table.filter(pa.compute.equal(table.column("episode_index"), record.episode_index))
        if "frame_index" in table.column_names:
            table = table.sort_by("frame_index")
        return table

    @staticmethod
    def _column(table: pyarrow.Table, key: str) -> np.ndarray | None:
        if key not in table.column_names:
            return None
        return np.asarray(table.column(key).to_pylist())

    def _vectors(self, table: pyarrow.Table, key: str) -> np.ndarray:
        if key not in table.column_names:
            raise ValueError(f"Column {key!r} is declared in info.json but missing from the parquet data.")
        pa = require_pyarrow()
        column = table.column(key).combine_chunks()
        kind = column.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            values = column.flatten().to_numpy(zero_copy_only=False)
            return values.reshape(len(column), -1).astype(np.float32)
        return column.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), -1)

    def _task_from_rows(self, table: pyarrow.Table, episode_index: int) -> str:
        task_indices = self._column(table, "task_index")
        if task_indices is None or len(task_indices) == 0 or int(task_indices[0]) not in self.tasks:
            raise ValueError(
                f"Episode {episode_index} has no task in the metadata nor a valid task_index column."
            )
        return self.tasks[int(task_indices[0])]

    def _load_images(self, episode: LeRobotEpisode, key: str) -> np.ndarray:
        # Keyed by file identity too, so a dataset rewritten in place is decoded afresh.
        data_file = self.root / episode._record.data_file
        if self.info.features[key].dtype == "image":
            source = data_file
        else:
            source = self.root / episode._record.videos[key].path
        stat = source.stat() if source.is_file() else None
        identity = (str(source.resolve()), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
        cache_key = (*identity, episode.episode_index, key, self.video_tolerance_s)
        return frame_cache().get(cache_key, lambda: self._decode_images(episode, key))

    def _decode_images(self, episode: LeRobotEpisode, key: str) -> np.ndarray:
        if self.info.features[key].dtype == "image":
            return self._parquet_images(episode, key)
        span = episode._record.videos[key]
        start = span.from_timestamp
        frames, times = decode_video(
            self.root / span.path,
            start_s=start,
            end_s=span.to_timestamp,
            tolerance_s=self.video_tolerance_s,
        )
        # Parquet timestamps are relative to the episode; the video span starts at from_timestamp.
        picked = match_timestamps(times - start, episode.timestamps, self.video_tolerance_s)
        return frames[picked]

    def _parquet_images(self, episode: LeRobotEpisode, key: str) -> np.ndarray:
        images = []
        for value in episode._table.column(key).to_pylist():
            if isinstance(value, dict) and value.get("bytes"):
                image = Image.open(io.BytesIO(value["bytes"]))
            elif isinstance(value, dict) and value.get("path"):
                image = Image.open(self.root / value["path"])
            else:
                raise ValueError(
                    f"Image column {key!r} must hold {{'bytes', 'path'}} structs (HF datasets Image)."
                )
            images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        return np.stack(images)
