"""Rule-based motion primitives from proprioception: idle / move (with direction) / grasp / release.

Per arm, a frame is *idle* when both the end-effector (or joint) speed and the gripper change are
below thresholds; idle runs of at least ``min_idle_frames`` separate the active stretches. Inside
an active stretch a frame whose gripper closes or opens by at least ``gripper_change`` is a grasp
or a release, and the remaining frames are moves whose direction keeps every axis that carries at
least ``direction_share`` of the displacement. Defaults follow the HALO annotator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

KINDS = ("idle", "move", "grasp", "release")


@dataclass(frozen=True)
class PrimitiveConfig:
    """Thresholds of the extractor, in the units of the state vector (per frame)."""

    idle_speed: float = 0.01
    gripper_change: float = 0.01
    min_idle_frames: int = 3
    direction_share: float = 0.2
    direction_eps: float = 0.005
    # Sign of the gripper value change when it closes: -1 when the value is an opening width.
    gripper_close_sign: int = -1
    # Words for the positive/negative direction of each Cartesian axis (x, y, z).
    axis_words: tuple[tuple[str, str], ...] = (("right", "left"), ("forward", "backward"), ("up", "down"))

    def __post_init__(self):
        if self.idle_speed <= 0 or self.gripper_change <= 0 or self.min_idle_frames < 1:
            raise ValueError("idle_speed and gripper_change must be > 0 and min_idle_frames >= 1.")
        if not 0 < self.direction_share <= 1:
            raise ValueError(f"direction_share must be in (0, 1], got {self.direction_share}.")
        if self.gripper_close_sign not in (-1, 1):
            raise ValueError("gripper_close_sign must be -1 (value is an opening) or 1 (value is a closure).")


@dataclass(frozen=True)
class ArmSpec:
    """Which state entries describe one arm.

    ``name`` is "left"/"right" (or "" for a single-arm robot); ``position`` holds the indices of
    the end-effector x, y, z (``kind="end_effector"``) or of the joints (``kind="joint"``, no
    Cartesian direction); ``gripper`` is the index of the gripper value or None.
    """

    name: str
    position: tuple[int, ...]
    gripper: int | None = None
    kind: str = "end_effector"

    def __post_init__(self):
        if self.kind not in ("end_effector", "joint"):
            raise ValueError(f"ArmSpec.kind must be 'end_effector' or 'joint', got {self.kind!r}.")
        if not self.position:
            raise ValueError(f"Arm {self.name!r} needs at least one position index.")
        if self.kind == "end_effector" and len(self.position) != 3:
            raise ValueError(
                f"Arm {self.name!r}: an end-effector arm needs exactly 3 position indices (x, y, z)."
            )

    @classmethod
    def parse(cls, text: str) -> ArmSpec:
        """Parse ``NAME:POSITIONS[:GRIPPER[:KIND]]``, e.g. ``left:0,1,2:6`` or ``right:7-12:13:joint``."""
        parts = text.split(":")
        if len(parts) < 2 or len(parts) > 4:
            raise ValueError(f"Arm spec {text!r} must look like NAME:0,1,2[:GRIPPER[:end_effector|joint]].")
        try:
            position: list[int] = []
            for item in parts[1].split(","):
                lo, _, hi = item.partition("-")
                position += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
            gripper = int(parts[2]) if len(parts) > 2 and parts[2] != "" else None
        except ValueError as exc:
            raise ValueError(f"Arm spec {text!r} has a non-integer index; use e.g. left:0,1,2:6.") from exc
        return cls(parts[0], tuple(position), gripper, parts[3] if len(parts) > 3 else "end_effector")


@dataclass(frozen=True)
class PrimitiveSegment:
    """A run of frames ``start..end`` (inclusive) in which one arm does one primitive."""

    arm: str
    kind: str
    start: int
    end: int
    direction: tuple[str, ...] = ()
    effector: str = "gripper"

    def sentence(self) -> str:
        """Plain English, e.g. "move the left gripper up and forward" or "close the right gripper"."""
        owner = f"the {self.arm} " if self.arm else "the "
        if self.kind == "idle":
            return f"keep {owner}arm still"
        if self.kind == "grasp":
            return f"close {owner}gripper"
        if self.kind == "release":
            return f"open {owner}gripper"
        words = list(self.direction)
        where = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1] if words else ""
        return f"move {owner}{self.effector}" + (f" {where}" if where else "")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        out = asdict(self)
        out["direction"] = list(self.direction)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PrimitiveSegment:
        """Inverse of ``to_dict``; raises ValueError on a malformed record."""
        try:
            segment = cls(
                str(data["arm"]),
                str(data["kind"]),
                int(data["start"]),
                int(data["end"]),
                tuple(str(d) for d in data.get("direction", [])),
                str(data.get("effector", "gripper")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"Primitive record {data!r} needs arm, kind, start, end.") from exc
        if segment.kind not in KINDS or not 0 <= segment.start <= segment.end:
            raise ValueError(f"Primitive record {data!r} has an unknown kind or an inverted frame range.")
        return segment


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) ranges where ``flags`` is True."""
    runs, start = [], None
    for t, flag in enumerate(flags):
        if flag and start is None:
            start = t
        elif not flag and start is not None:
            runs.append((start, t - 1))
            start = None
    if start is not None:
        runs.append((start, len(flags) - 1))
    return runs


def _direction(displacement: np.ndarray, config: PrimitiveConfig) -> tuple[str, ...]:
    total = float(np.linalg.norm(displacement))
    if total < config.direction_eps:
        return ()
    shares = np.abs(displacement) / total
    # Strongest axis first, so the sentence leads with the dominant motion.
    kept = [i for i in np.argsort(-shares, kind="stable") if shares[i] >= config.direction_share]
    return tuple(config.axis_words[i][0 if displacement[i] > 0 else 1] for i in kept)


def _arm_labels(
    states: np.ndarray, arm: ArmSpec, config: PrimitiveConfig
) -> list[tuple[str, tuple[str, ...]]]:
    n = len(states)
    position = states[:, list(arm.position)].astype(np.float64)
    delta = np.zeros_like(position)
    delta[1:] = np.diff(position, axis=0)
    gripper_delta = np.zeros(n)
    if arm.gripper is not None:
        gripper_delta[1:] = np.diff(states[:, arm.gripper].astype(np.float64))
    idle = (np.linalg.norm(delta, axis=1) < config.idle_speed) & (
        np.abs(gripper_delta) < config.gripper_change
    )
    idle[0] = True  # nothing is known to move before the first frame
    labels: list[tuple[str, tuple[str, ...]]] = [("move", ())] * n
    if idle.all():
        return [("idle", ())] * n
    for start, end in _runs(idle):
        if end - start + 1 >= config.min_idle_frames:
            labels[start : end + 1] = [("idle", ())] * (end - start + 1)
    closing = gripper_delta * config.gripper_close_sign
    for t in range(1, n):
        if labels[t][0] == "idle":
            continue
        if closing[t] >= config.gripper_change:
            labels[t] = ("grasp", ())
        elif closing[t] <= -config.gripper_change:
            labels[t] = ("release", ())
    moving = np.array([kind == "move" for kind, _ in labels])
    for start, end in _runs(moving):
        direction = _direction(delta[start : end + 1].sum(0), config) if arm.kind == "end_effector" else ()
        labels[start : end + 1] = [("move", direction)] * (end - start + 1)
    return labels


def extract_primitives(
    states: np.ndarray, arms: Sequence[ArmSpec], config: PrimitiveConfig | None = None
) -> list[PrimitiveSegment]:
    """Segment a (T, D) state trajectory into primitives for each arm, sorted by start then arm."""
    config = config or PrimitiveConfig()
    states = np.asarray(states)
    if states.ndim != 2 or len(states) == 0:
        raise ValueError(f"states must be a non-empty (T, D) array, got shape {states.shape}.")
    if not arms:
        raise ValueError("extract_primitives needs at least one ArmSpec (e.g. ArmSpec('', (0, 1, 2), 6)).")
    segments = []
    for arm in arms:
        used = list(arm.position) + ([arm.gripper] if arm.gripper is not None else [])
        if max(used) >= states.shape[1] or min(used) < -states.shape[1]:
            raise ValueError(
                f"Arm {arm.name!r} uses state index {max(used)} but states have {states.shape[1]} dims."
            )
        labels = _arm_labels(states, arm, config)
        effector = "gripper" if arm.kind == "end_effector" else "arm"
        start = 0
        for t in range(1, len(labels) + 1):
            if t == len(labels) or labels[t] != labels[start]:
                segments.append(
                    PrimitiveSegment(arm.name, labels[start][0], start, t - 1, labels[start][1], effector)
                )
                start = t
    return sorted(segments, key=lambda s: (s.start, s.arm))


def primitives_in_range(segments: Sequence[PrimitiveSegment], start: int, end: int) -> list[PrimitiveSegment]:
    """The non-idle segments that overlap frames ``start..end``, in time order."""
    return [s for s in segments if s.kind != "idle" and s.start <= end and s.end >= start]


def primitive_log(segments: Sequence[PrimitiveSegment]) -> str:
    """One line per segment, "frames 0-11 (left arm): move the left gripper down", for prompts."""
    lines = []
    for s in sorted(segments, key=lambda s: (s.start, s.arm)):
        arm = f" ({s.arm} arm)" if s.arm else ""
        lines.append(f"frames {s.start}-{s.end}{arm}: {s.sentence()}")
    return "\n".join(lines)
