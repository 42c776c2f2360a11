"""Metadata of LeRobot datasets on disk, format v2.x (one file per episode) and v3.x (chunked files).

Everything here is plain parsing of ``meta/``: ``info.json``, tasks, per-episode records and
statistics, unified into one ``EpisodeRecord`` per episode that says where its rows and video
frames live. No dependency on the ``lerobot`` package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check_value, read_json, read_json_lines

VISUAL_DTYPES = ("video", "image")
IMAGE_PREFIX = "observation.images."


def require_pyarrow():
    """Import pyarrow (with its parquet and compute modules) or raise an ImportError saying how to install it."""
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401 - loads the submodule as pyarrow.compute
        import pyarrow.parquet  # noqa: F401 - loads the submodule as pyarrow.parquet
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Reading LeRobot datasets needs pyarrow: pip install 'emcot[data]' (or pip install pyarrow)."
        ) from exc
    return pyarrow


@dataclass(frozen=True)
class FeatureSpec:
    """One entry of ``info.json`` ``features``: a column (or a video stream) and its layout."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    names: list | dict | None = None

    @property
    def is_visual(self) -> bool:
        """True for camera streams, stored either as mp4 (``video``) or encoded in parquet (``image``)."""
        return self.dtype in VISUAL_DTYPES


@dataclass(frozen=True)
class LeRobotInfo:
    """The parsed ``meta/info.json``."""

    codebase_version: str
    fps: float
    features: dict[str, FeatureSpec]
    data_path: str
    video_path: str | None
    chunks_size: int
    total_episodes: int
    total_frames: int
    robot_type: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def major_version(self) -> int:
        """2 for the per-episode layout (v2.0/v2.1), 3 for the chunked layout (v3.x)."""
        return int(self.codebase_version.lstrip("v").split(".")[0])

    @property
    def camera_keys(self) -> list[str]:
        """Feature keys of all camera streams, in ``info.json`` order."""
        return [k for k, f in self.features.items() if f.is_visual]

    @property
    def video_keys(self) -> list[str]:
        """Camera keys stored as mp4 files."""
        return [k for k, f in self.features.items() if f.dtype == "video"]

    @classmethod
    def load(cls, root: Path) -> LeRobotInfo:
        """Read and check ``root/meta/info.json``."""
        path = root / "meta" / "info.json"
        if not path.is_file():
            raise ValueError(
                f"{root} is not a LeRobot dataset: {path} is missing. Pass the dataset's root folder."
            )
        raw = read_json(path, "LeRobot info file")
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(raw).__name__}.")
        missing = [k for k in ("codebase_version", "fps", "features", "data_path") if k not in raw]
        if missing:
            raise ValueError(f"{path} lacks the fields {missing}; it is not a LeRobot v2/v3 info.json.")
        version = str(raw["codebase_version"])
        if not (version.startswith("v2.") or version.startswith("v3.")):
            raise ValueError(
                f"{path} has codebase_version {version!r}; only v2.x and v3.x are supported "
                "(convert older datasets with LeRobot's conversion scripts)."
            )
        if not isinstance(raw["features"], dict):
            raise ValueError(f"{path} field 'features' must be a mapping of feature specs.")
        features = {
            key: FeatureSpec(
                key, str(spec["dtype"]), tuple(int(s) for s in spec.get("shape", ())), spec.get("names")
            )
            for key, spec in raw["features"].items()
        }
        # A zero or negative fps would turn every timestamp into inf or a negative time.
        fps = check_value(f"{path} field 'fps'", raw["fps"], float, POSITIVE)
        sizes = {
            key: check_value(f"{path} field '{key}'", raw.get(key, default), int, bounds)
            for key, default, bounds in (
                ("chunks_size", 1000, AT_LEAST_ONE),
                ("total_episodes", 0, NON_NEGATIVE),
                ("total_frames", 0, NON_NEGATIVE),
            )
        }
        return cls(
            codebase_version=version,
            fps=fps,
            features=features,
            data_path=str(raw["data_path"]),
            video_path=raw.get("video_path"),
            **sizes,
            robot_type=raw.get("robot_type"),
            raw=raw,
        )


@dataclass(frozen=True)
class VideoSpan:
    """Where one episode's frames of one camera live: a file and a time range inside it (seconds)."""

    path: str
    from_timestamp: float = 0.0
    to_timestamp: float | None = None


@dataclass(frozen=True)
class EpisodeRecord:
    """One episode's metadata, whatever the format version: length, tasks and file locations."""

    episode_index: int
    length: int
    tasks: list[str]
    data_file: str
    videos: dict[str, VideoSpan]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"{path} is missing; a LeRobot v2.x dataset needs it.")
    return read_json_lines(path)


def _table_rows(path: Path) -> list[dict]:
    return require_pyarrow().parquet.read_table(path).to_pylist()


def load_tasks(root: Path, info: LeRobotInfo) -> dict[int, str]:
    """Map task_index → task text from ``tasks.jsonl`` (v2) or ``tasks.parquet`` (v3)."""
    if info.major_version == 2:
        return {int(r["task_index"]): str(r["task"]) for r in _read_jsonl(root / "meta" / "tasks.jsonl")}
    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        raise ValueError(f"{path} is missing; a LeRobot v3 dataset needs it.")
    table = require_pyarrow().parquet.read_table(path)
    # LeRobot writes a pandas frame indexed by the task text, so the text sits in the pandas index
    # column; files written by other tools often keep it as an ordinary "task" column.
    text_column = "task" if "task" in table.column_names else None
    if text_column is None and table.schema.pandas_metadata:
        index_columns = [
            c for c in table.schema.pandas_metadata.get("index_columns", []) if isinstance(c, str)
        ]
        text_column = index_columns[0] if index_columns else None
    if text_column is None or "task_index" not in table.column_names:
        raise ValueError(
            f"{path} needs a task_index column and the task text (a 'task' column or the pandas index)."
        )
    texts, indices = table.column(text_column).to_pylist(), table.column("task_index").to_pylist()
    return {int(i): str(t) for i, t in zip(indices, texts)}


def load_episode_records(root: Path, info: LeRobotInfo) -> list[EpisodeRecord]:
    """All episodes of the dataset in episode_index order, with their data and video locations."""
    records = _v2_records(root, info) if info.major_version == 2 else _v3_records(root, info)
    return sorted(records, key=lambda r: r.episode_index)


def _v2_records(root: Path, info: LeRobotInfo) -> list[EpisodeRecord]:
    records = []
    for row in _read_jsonl(root / "meta" / "episodes.jsonl"):
        index = int(row["episode_index"])
        fields = {"episode_index": index, "episode_chunk": index // info.chunks_size}
        videos = {}
        for key in info.video_keys:
            if info.video_path is None:
                raise ValueError(
                    f"info.json declares the video feature {key} but has no video_path template."
                )
            videos[key] = VideoSpan(info.video_path.format(video_key=key, **fields))
        records.append(
            EpisodeRecord(
                episode_index=index,
                length=int(row["length"]),
                tasks=[str(t) for t in row.get("tasks", [])],
                data_file=info.data_path.format(**fields),
                videos=videos,
            )
        )
    return records


def _v3_records(root: Path, info: LeRobotInfo) -> list[EpisodeRecord]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise ValueError(
            f"{root / 'meta' / 'episodes'} has no chunk-*/file-*.parquet; the v3 dataset is incomplete."
        )
    records = []
    for path in files:
        for row in _table_rows(path):
            data_file = info.data_path.format(
                chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
            )
            videos = {}
            for key in info.video_keys:
                prefix = f"videos/{key}/"
                if prefix + "chunk_index" not in row or info.video_path is None:
                    raise ValueError(
                        f"{path} lacks the columns {prefix}chunk_index/file_index for camera {key}."
                    )
                videos[key] = VideoSpan(
                    info.video_path.format(
                        video_key=key,
                        chunk_index=int(row[prefix + "chunk_index"]),
                        file_index=int(row[prefix + "file_index"]),
                    ),
                    float(row.get(prefix + "from_timestamp") or 0.0),
                    None if row.get(prefix + "to_timestamp") is None else float(row[prefix + "to_timestamp"]),
                )
            tasks = row.get("tasks") or []
            records.append(
                EpisodeRecord(
                    episode_index=int(row["episode_index"]),
                    length=int(row["length"]),
                    tasks=[str(t) for t in (tasks if isinstance(tasks, list) else [tasks])],
                    data_file=data_file,
                    videos=videos,
                )
            )
    return records


def load_stats(root: Path, info: LeRobotInfo) -> dict[str, dict[str, np.ndarray]]:
    """Dataset statistics per feature (mean/std/min/max/count …) as arrays.

    Reads ``meta/stats.json`` when present; a v2.1 dataset without it gets its per-episode
    statistics (``episodes_stats.jsonl``) aggregated, weighting each episode by its frame count.
    Returns an empty dict when the dataset ships no statistics.
    """
    path = root / "meta" / "stats.json"
    if path.is_file():
        stats = read_json(path, "LeRobot statistics file")
        if not isinstance(stats, dict) or not all(isinstance(d, dict) for d in stats.values()):
            raise ValueError(f"{path} must map each feature to its statistics (mean, std, ...).")
        return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in stats.items()}
    per_episode = root / "meta" / "episodes_stats.jsonl"
    if info.major_version != 2 or not per_episode.is_file():
        return {}
    return aggregate_stats([row["stats"] for row in _read_jsonl(per_episode)])


def aggregate_stats(episode_stats: list[dict[str, dict]]) -> dict[str, dict[str, np.ndarray]]:
    """Combine per-episode {feature: {mean, std, min, max, count}} into whole-dataset statistics."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in episode_stats[0] if episode_stats else []:
        parts = [
            {s: np.asarray(v, dtype=np.float64) for s, v in ep[key].items()}
            for ep in episode_stats
            if key in ep
        ]
        counts = np.array([float(np.asarray(p["count"]).reshape(-1)[0]) for p in parts])
        weights = counts / counts.sum()
        mean = sum(w * p["mean"] for w, p in zip(weights, parts))
        # Pooled variance: E[x²] − E[x]², with each episode's E[x²] = std² + mean².
        second = sum(w * (p["std"] ** 2 + p["mean"] ** 2) for w, p in zip(weights, parts))
        out[key] = {
            "mean": mean,
            "std": np.sqrt(np.maximum(second - mean**2, 0.0)),
            "min": np.min(np.stack([p["min"] for p in parts]), axis=0),
            "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
            "count": np.array([counts.sum()]),
        }
    return out
