"""Write episodes as a LeRobot dataset (v2.1 or v3.0 layout) with pyarrow and PyAV.

Useful to export recordings or converted data for LeRobot tools, and used by the tests to build
real datasets on disk. Cameras are stored as mp4 (``camera_storage="video"``) or as PNG bytes
inside the parquet rows (``"image"``, lossless). Extra per-frame numeric columns (e.g. simulator
signals such as ``sim.grasp_success``) travel in ``EpisodeData.extras``.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emcot.training.data.lerobot_meta import IMAGE_PREFIX, aggregate_stats, require_pyarrow
from emcot.training.data.video import available_codec, encode_video

_V2_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
_V2_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
_V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
_V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


_STANDARD_COLUMNS = ("observation.state", "action", "timestamp", "frame_index", "episode_index", "index")


@dataclass
class EpisodeData:
    """One episode to write: the task text, per-frame vectors, camera frames (T, H, W, 3) uint8 and
    extra numeric columns (``extras``: name → (T,) or (T, k) values, written as float32)."""

    instruction: str
    states: np.ndarray
    actions: np.ndarray
    images: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        length = len(self.states)
        if length == 0 or len(self.actions) != length:
            raise ValueError(
                f"states and actions must have the same non-zero length, got {length} and {len(self.actions)}."
            )
        for name, frames in self.images.items():
            if (
                frames.dtype != np.uint8
                or frames.ndim != 4
                or frames.shape[0] != length
                or frames.shape[3] != 3
            ):
                raise ValueError(
                    f"Camera {name!r} frames must be uint8 ({length}, H, W, 3), got {frames.shape} {frames.dtype}."
                )
        for name, values in self.extras.items():
            clash = name in _STANDARD_COLUMNS + ("task_index",) or name.startswith(IMAGE_PREFIX)
            if clash or values.ndim not in (1, 2) or len(values) != length or values.dtype.kind not in "biuf":
                raise ValueError(
                    f"Extra column {name!r} must be numeric ({length},) or ({length}, k) and not a standard "
                    f"column name, got {values.shape} {values.dtype}."
                )


@dataclass(frozen=True)
class WriterConfig:
    """Layout choices: format version, camera storage, codec, episodes per v3 data file."""

    version: str = "v3.0"
    camera_storage: str = "video"
    codec: str | None = None
    video_quality: int = 18
    episodes_per_file: int = 1000
    chunks_size: int = 1000
    robot_type: str | None = None

    def __post_init__(self):
        if self.version not in ("v2.1", "v3.0"):
            raise ValueError(f"version must be 'v2.1' or 'v3.0', got {self.version!r}.")
        if self.camera_storage not in ("video", "image"):
            raise ValueError(f"camera_storage must be 'video' or 'image', got {self.camera_storage!r}.")
        if self.episodes_per_file < 1 or self.chunks_size < 1:
            raise ValueError("episodes_per_file and chunks_size must be at least 1.")


def _numeric_stats(values: np.ndarray) -> dict[str, list]:
    values = values.reshape(len(values), -1).astype(np.float64)
    return {
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "count": [len(values)],
    }


def _image_stats(frames: np.ndarray) -> dict[str, list]:
    # LeRobot keeps image statistics per channel in [0, 1] with shape (3, 1, 1).
    pixels = frames.reshape(-1, 3).astype(np.float64) / 255.0
    return {
        name: [[[v]] for v in fn(pixels, axis=0)]
        for name, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std))
    } | {"count": [len(frames)]}


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class _Layout:
    """What every file of one dataset shares, worked out once from its episodes."""

    config: WriterConfig
    fps: int
    cameras: list[str]
    state_dim: int
    action_dim: int
    codec: str | None
    task_texts: list[str]
    extras: dict[str, int]  # extra column → width (1: a scalar column)
    image_size: tuple[int, int]  # (height, width) of the first camera; (0, 0) without cameras

    @property
    def v3(self) -> bool:
        return self.config.version == "v3.0"

    @property
    def image_columns(self) -> list[str]:
        """Cameras stored as PNG bytes in the parquet rows."""
        return self.cameras if self.config.camera_storage == "image" else []

    @property
    def video_cameras(self) -> list[str]:
        """Cameras stored as mp4 files."""
        return self.cameras if self.config.camera_storage == "video" else []


def _extra_widths(ep: EpisodeData) -> dict[str, int]:
    return {k: 1 if v.ndim == 1 else v.shape[1] for k, v in sorted(ep.extras.items())}


def _layout(episodes: Sequence[EpisodeData], fps: int, config: WriterConfig) -> _Layout:
    if not episodes:
        raise ValueError("write_lerobot_dataset needs at least one episode.")
    first = episodes[0]
    cameras, extras = sorted(first.images), _extra_widths(first)
    state_dim, action_dim = first.states.shape[1], first.actions.shape[1]
    task_texts: dict[str, None] = {}
    for i, ep in enumerate(episodes):
        if (
            sorted(ep.images) != cameras
            or ep.states.shape[1] != state_dim
            or ep.actions.shape[1] != action_dim
            or _extra_widths(ep) != extras
        ):
            raise ValueError(
                f"Episode {i} differs from episode 0 in cameras, state/action dimensions or extra columns."
            )
        task_texts[ep.instruction] = None
    codec = (config.codec or available_codec()) if (cameras and config.camera_storage == "video") else None
    size = first.images[cameras[0]].shape[1:3] if cameras else (0, 0)
    return _Layout(config, fps, cameras, state_dim, action_dim, codec, list(task_texts), extras, size)


def write_lerobot_dataset(
    root: str | Path, episodes: Sequence[EpisodeData], fps: int, config: WriterConfig | None = None
) -> Path:
    """Write ``episodes`` under ``root`` (created; must not already hold a dataset) and return it.

    ``episodes`` may be any sequence (e.g. one loading each episode from disk on access): only a
    data file's episodes are held together in memory.
    """
    config = config or WriterConfig()
    require_pyarrow()
    root = Path(root)
    if (root / "meta" / "info.json").exists():
        raise ValueError(f"{root} already holds a LeRobot dataset; choose an empty folder.")
    layout = _layout(episodes, fps, config)
    # Frames are grouped into files: one episode per file in v2.1, episodes_per_file in v3.
    group_size = config.episodes_per_file if layout.v3 else 1
    episode_rows: list[dict] = []
    first_index = 0
    for file_number, start in enumerate(range(0, len(episodes), group_size)):
        group = list(range(start, min(start + group_size, len(episodes))))
        episode_rows += _write_data_file(
            root, layout, episodes, group=group, file_number=file_number, first_index=first_index
        )
        first_index += sum(len(episodes[i].states) for i in group)
    _write_meta(root, layout, episode_rows)
    return root


def _write_data_file(
    root: Path,
    layout: _Layout,
    episodes: Sequence[EpisodeData],
    *,
    group: list[int],
    file_number: int,
    first_index: int,
) -> list[dict]:
    """One parquet file (and its videos) holding the episodes ``group``; returns their episode rows.

    ``first_index`` is the dataset-wide index of the group's first frame.
    """
    pa = require_pyarrow()
    config = layout.config
    columns: dict[str, list] = defaultdict(list)  # one list per column of _frame_table's schema
    chunk, file_index = divmod(file_number, config.chunks_size)
    rows: list[dict] = []
    index = first_index
    loaded = [episodes[i] for i in group]  # one access per episode: a lazy sequence loads it once
    for ep_index, ep in zip(group, loaded):
        _append_frames(columns, layout, ep, ep_index=ep_index, first_index=index)
        row: dict[str, Any] = {"episode_index": ep_index, "tasks": [ep.instruction], "length": len(ep.states)}
        row["stats"] = _episode_stats(ep, layout)
        if layout.v3:
            # Videos hold the file's episodes back to back, so an episode starts where the previous ended.
            offset, end = index - first_index, index - first_index + len(ep.states)
            row |= {"data/chunk_index": chunk, "data/file_index": file_index}
            row |= {"dataset_from_index": index, "dataset_to_index": index + len(ep.states)}
            for key in (IMAGE_PREFIX + c for c in layout.video_cameras):
                row |= {f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file_index}
                row |= {
                    f"videos/{key}/from_timestamp": offset / layout.fps,
                    f"videos/{key}/to_timestamp": end / layout.fps,
                }
        rows.append(row)
        index += len(ep.states)
    fields = {"chunk_index": chunk, "file_index": file_index, "episode_index": group[0]}
    fields["episode_chunk"] = group[0] // config.chunks_size
    data_path = root / (_V3_DATA if layout.v3 else _V2_DATA).format(**fields)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    pa.parquet.write_table(_frame_table(pa, layout, columns), data_path)
    for c in layout.video_cameras:
        video_path = root / (_V3_VIDEO if layout.v3 else _V2_VIDEO).format(
            video_key=IMAGE_PREFIX + c, **fields
        )
        frames = np.concatenate([ep.images[c] for ep in loaded])
        encode_video(video_path, frames, layout.fps, codec=layout.codec, quality=config.video_quality)
    return rows


def _append_frames(
    columns: dict[str, list], layout: _Layout, ep: EpisodeData, *, ep_index: int, first_index: int
) -> None:
    """The per-frame column values of one episode whose first frame has dataset index ``first_index``."""
    task = layout.task_texts.index(ep.instruction)
    for t in range(len(ep.states)):
        columns["observation.state"].append(ep.states[t].astype(np.float32).tolist())
        columns["action"].append(ep.actions[t].astype(np.float32).tolist())
        columns["timestamp"].append(t / layout.fps)
        columns["frame_index"].append(t)
        columns["episode_index"].append(ep_index)
        columns["index"].append(first_index + t)
        columns["task_index"].append(task)
        for c in layout.image_columns:
            columns[IMAGE_PREFIX + c].append({"bytes": _png_bytes(ep.images[c][t]), "path": None})
    for name in layout.extras:
        columns[name] += ep.extras[name].astype(np.float32).tolist()


def _episode_stats(ep: EpisodeData, layout: _Layout) -> dict[str, dict[str, list]]:
    stats = {"observation.state": _numeric_stats(ep.states), "action": _numeric_stats(ep.actions)}
    stats |= {name: _numeric_stats(ep.extras[name]) for name in layout.extras}
    return stats | {IMAGE_PREFIX + c: _image_stats(ep.images[c]) for c in layout.cameras}


def _frame_table(pa: Any, layout: _Layout, columns: dict[str, list]) -> Any:
    schema = [
        ("observation.state", pa.list_(pa.float32(), layout.state_dim)),
        ("action", pa.list_(pa.float32(), layout.action_dim)),
        ("timestamp", pa.float32()),
        ("frame_index", pa.int64()),
        ("episode_index", pa.int64()),
        ("index", pa.int64()),
        ("task_index", pa.int64()),
    ]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema += [(IMAGE_PREFIX + c, image_type) for c in layout.image_columns]
    schema += [(k, pa.float32() if w == 1 else pa.list_(pa.float32(), w)) for k, w in layout.extras.items()]
    return pa.table({name: pa.array(columns[name], type=kind) for name, kind in schema})


def _write_meta(root: Path, layout: _Layout, episode_rows: list[dict]) -> None:
    """``meta/``: ``info.json``, then the v2.1 JSON-lines files or the v3.0 tables."""
    pa = require_pyarrow()
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    config, cameras, fps = layout.config, layout.cameras, layout.fps
    task_texts, v3 = layout.task_texts, layout.v3
    height, width = layout.image_size
    vectors = {"observation.state": ("state", layout.state_dim), "action": ("action", layout.action_dim)}
    features: dict[str, dict[str, Any]] = {
        key: {"dtype": "float32", "shape": [dim], "names": [f"{stem}_{i}" for i in range(dim)]}
        for key, (stem, dim) in vectors.items()
    }
    scalars = {"timestamp": "float32"} | dict.fromkeys(
        ("frame_index", "episode_index", "index", "task_index"), "int64"
    )
    features |= {key: {"dtype": dtype, "shape": [1], "names": None} for key, dtype in scalars.items()}
    features |= {k: {"dtype": "float32", "shape": [w], "names": None} for k, w in layout.extras.items()}
    for c in cameras:
        spec: dict[str, Any] = {
            "dtype": config.camera_storage,
            "shape": [height, width, 3],
            "names": ["height", "width", "channels"],
        }
        if config.camera_storage == "video":
            spec["info"] = {
                "video.fps": fps,
                "video.codec": layout.codec,
                "video.pix_fmt": "yuv420p",
                "video.height": height,
                "video.width": width,
                "video.channels": 3,
                "has_audio": False,
            }
        features[IMAGE_PREFIX + c] = spec
    total = sum(r["length"] for r in episode_rows)
    info = {
        "codebase_version": config.version,
        "robot_type": config.robot_type,
        "total_episodes": len(episode_rows),
        "total_frames": total,
        "total_tasks": len(task_texts),
        "chunks_size": config.chunks_size,
        "fps": fps,
        "splits": {"train": f"0:{len(episode_rows)}"},
        "data_path": _V3_DATA if v3 else _V2_DATA,
        "video_path": (_V3_VIDEO if v3 else _V2_VIDEO)
        if config.camera_storage == "video" and cameras
        else None,
        "features": features,
    }
    if not v3:
        info |= {
            "total_chunks": (len(episode_rows) - 1) // config.chunks_size + 1,
            "total_videos": len(episode_rows) * len(cameras),
        }
    (meta / "info.json").write_text(json.dumps(info, indent=2))
    if not v3:
        lines = [
            {"episode_index": r["episode_index"], "tasks": r["tasks"], "length": r["length"]}
            for r in episode_rows
        ]
        (meta / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        (meta / "tasks.jsonl").write_text(
            "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(task_texts))
        )
        stats_lines = [
            json.dumps({"episode_index": r["episode_index"], "stats": r["stats"]}) + "\n"
            for r in episode_rows
        ]
        (meta / "episodes_stats.jsonl").write_text("".join(stats_lines))
        return
    # v3: the tasks table is a pandas frame indexed by the task text, as LeRobot writes it.
    pandas_columns = [
        {"name": name, "field_name": key, "pandas_type": kind, "numpy_type": numpy, "metadata": None}
        for name, key, kind, numpy in (
            ("task_index", "task_index", "int64", "int64"),
            (None, "__index_level_0__", "unicode", "object"),
        )
    ]
    pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": pandas_columns}
    tasks = pa.table(
        {"task_index": pa.array(range(len(task_texts)), pa.int64()), "__index_level_0__": task_texts}
    )
    pa.parquet.write_table(
        tasks.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), meta / "tasks.parquet"
    )
    rows = []
    for r in episode_rows:
        flat = {k: v for k, v in r.items() if k != "stats"}
        flat |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        flat |= {
            f"stats/{feature}/{name}": value for feature, s in r["stats"].items() for name, value in s.items()
        }
        rows.append(flat)
    path = meta / "episodes" / "chunk-000" / "file-000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pa.parquet.write_table(pa.Table.from_pylist(rows), path)
    merged = aggregate_stats([r["stats"] for r in episode_rows])
    merged = {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in merged.items()}
    (meta / "stats.json").write_text(json.dumps(merged, indent=2))
