"""Video encoding and decoding with PyAV, as used by LeRobot datasets.

PyAV is an optional dependency (the ``data`` extra), imported only when a video is touched so
that the rest of the package works without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

# Codecs tried in order when the caller does not name one: H.264 is fast and in every PyAV wheel
# we know of; SVT-AV1 is LeRobot's default; MPEG-4 part 2 is the universal fallback.
_PREFERRED_CODECS = ("libx264", "libsvtav1", "mpeg4")


def require_av():
    """Import PyAV or raise an ImportError that says how to install it."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Reading or writing LeRobot videos needs PyAV: pip install 'emcot[data]' (or pip install av)."
        ) from exc
    return av


def available_codec(preferred: Sequence[str] = _PREFERRED_CODECS) -> str:
    """Return the first encoder in ``preferred`` that the installed PyAV build provides."""
    av = require_av()
    for name in preferred:
        if name in av.codecs_available:
            return name
    raise ValueError(
        f"None of the video codecs {list(preferred)} is available in this PyAV build; install av>=12."
    )


def encode_video(
    path: str | Path,
    frames: Sequence[np.ndarray] | np.ndarray,
    fps: int,
    *,
    codec: str | None = None,
    quality: int = 18,
    gop: int = 2,
    start_pts: int = 0,
) -> str:
    """Encode uint8 (H, W, 3) RGB frames into an mp4 file with pix_fmt yuv420p.

    ``quality`` is the constant-rate factor (lower is better; used by x264 and SVT-AV1),
    ``gop`` the keyframe interval (small, like LeRobot, so that random access stays cheap).
    Frame ``i`` gets the presentation time ``(start_pts + i) / fps``. Returns the codec used.
    """
    av = require_av()
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError("encode_video needs at least one frame.")
    height, width = frames[0].shape[:2]
    for i, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape != (height, width, 3):
            raise ValueError(
                f"Frame {i} has shape {frame.shape} / dtype {frame.dtype}; every frame must be uint8 "
                f"({height}, {width}, 3)."
            )
    if height % 2 or width % 2:
        raise ValueError(
            f"yuv420p video needs even frame sizes, got {height}x{width}; crop or pad the images."
        )
    codec = codec or available_codec()
    options = {"g": str(gop)}
    if codec in ("libx264", "libsvtav1"):
        options["crf"] = str(quality)
    else:
        # MPEG-4 has no CRF; a fixed low quantiser keeps the test tolerance comparable.
        options["qscale"] = "2"
    time_base = Fraction(1, int(fps))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=int(fps), options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = start_pts + i, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec


def decode_video(
    path: str | Path, start_s: float = 0.0, end_s: float | None = None, tolerance_s: float = 1e-4
) -> tuple[np.ndarray, np.ndarray]:
    """Decode the frames of ``path`` whose timestamps lie in ``[start_s, end_s)``.

    Returns ``(frames uint8 (N, H, W, 3), timestamps float64 (N,))`` with timestamps in seconds
    from the start of the file. Seeking jumps to the keyframe before ``start_s`` so that
    episodes late in a concatenated (LeRobot v3) file do not decode everything before them.
    """
    av = require_av()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Video file {path} does not exist; check the dataset's video_path template.")
    images, times = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start_s > tolerance_s:
            container.seek(int(start_s / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * stream.time_base)
            if t < start_s - tolerance_s:
                continue
            if end_s is not None and t >= end_s - tolerance_s:
                break
            images.append(frame.to_ndarray(format="rgb24"))
            times.append(t)
    if not images:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8), np.zeros((0,), dtype=np.float64)
    return np.stack(images), np.asarray(times, dtype=np.float64)


def match_timestamps(decoded_times: np.ndarray, wanted_times: np.ndarray, tolerance_s: float) -> np.ndarray:
    """Index into ``decoded_times`` of the nearest decoded frame for each wanted timestamp.

    Raises ValueError when a wanted timestamp has no decoded frame within ``tolerance_s``, which
    means the parquet timestamps and the video disagree (wrong fps or a truncated file).
    """
    if len(decoded_times) == 0:
        raise ValueError(
            "The video segment decoded to zero frames; the file is empty or the time range is wrong."
        )
    order = np.argsort(decoded_times)
    sorted_times = decoded_times[order]
    if len(sorted_times) == 1:
        nearest = np.zeros(len(wanted_times), dtype=np.int64)
    else:
        pos = np.clip(np.searchsorted(sorted_times, wanted_times), 1, len(sorted_times) - 1)
        use_left = np.abs(wanted_times - sorted_times[pos - 1]) <= np.abs(wanted_times - sorted_times[pos])
        nearest = np.where(use_left, pos - 1, pos)
    error = np.abs(sorted_times[nearest] - wanted_times)
    if np.any(error > tolerance_s):
        worst = int(np.argmax(error))
        raise ValueError(
            f"No video frame within {tolerance_s:.4f}s of timestamp {wanted_times[worst]:.4f}s "
            f"(nearest {sorted_times[nearest[worst]]:.4f}s); the video does not match the parquet timestamps."
        )
    return order[nearest]
