"""EM-CoT annotation sidecar: one JSON line per episode, schema-validated on read and write.

A line records the plan (task narrative), the subtasks with contiguous frame ranges, each one's
first-person reasoning and subgoal frame (the subtask's terminal frame), the motion primitives,
optional video-QA pairs about the episode's past, and which annotator and prompt versions produced it. Failed episodes are kept in the same file
with ``status: "failed"`` and an ``error`` so that a summary can list them and a re-run can retry
them; when an episode appears several times, the last line wins.

Appends are flushed and fsynced line by line, so killing the annotator loses at most the line
being written; a torn trailing line is cut off when the file is next opened for appending.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from emcot.training.annotation.primitives import PrimitiveSegment

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed")
_FIELDS = {
    "schema_version",
    "dataset",
    "episode_index",
    "status",
    "num_frames",
    "instruction",
    "plan",
    "subtasks",
    "primitives",
    "annotator",
    "prompt_versions",
    "error",
    "attempts",
    "video_qa",
}


@dataclass
class SubtaskAnnotation:
    """One subtask: its text, inclusive frame range, first-person reasoning and subgoal frame."""

    text: str
    start: int
    end: int
    reasoning: str
    subgoal_frame: int

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "reasoning": self.reasoning,
            "subgoal_frame": self.subgoal_frame,
        }


@dataclass(frozen=True)
class VideoQA:
    """A question about the episode's past, asked at frame ``asked_at``, whose answer shows at the
    earlier frame ``evidence`` (video-QA co-training, written by the VLM annotator)."""

    question: str
    answer: str
    asked_at: int
    evidence: int

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "question": self.question,
            "answer": self.answer,
            "asked_at": self.asked_at,
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, data: dict) -> VideoQA:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["question"]), str(data["answer"]), int(data["asked_at"]), int(data["evidence"]))


@dataclass
class EpisodeAnnotation:
    """The EM-CoT annotation of one episode (or the record of its failure)."""

    episode_index: int
    num_frames: int
    instruction: str
    status: str = "ok"
    plan: str = ""
    subtasks: list[SubtaskAnnotation] = field(default_factory=list)
    primitives: list[PrimitiveSegment] = field(default_factory=list)
    annotator: dict = field(default_factory=dict)
    prompt_versions: dict = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    dataset: str = ""
    schema_version: int = SCHEMA_VERSION
    video_qa: list[VideoQA] = field(default_factory=list)

    def validate(self) -> EpisodeAnnotation:
        """Check the schema and the frame ranges; raise ValueError naming the problem."""
        where = f"episode {self.episode_index}"
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"{where}: schema_version {self.schema_version} is not {SCHEMA_VERSION}; re-annotate."
            )
        if self.status not in STATUSES:
            raise ValueError(f"{where}: status must be one of {STATUSES}, got {self.status!r}.")
        if self.episode_index < 0 or self.num_frames < 1:
            raise ValueError(f"{where}: episode_index must be >= 0 and num_frames >= 1.")
        if self.status == "failed":
            if not self.error:
                raise ValueError(f"{where}: a failed annotation must say why in 'error'.")
            return self
        self._check_subtasks(where)
        for qa in self.video_qa:
            if not qa.question.strip() or not qa.answer.strip():
                raise ValueError(f"{where}: a video-QA pair has an empty question or answer.")
            if not 0 <= qa.evidence < qa.asked_at < self.num_frames:
                raise ValueError(
                    f"{where}: video-QA '{qa.question}' is asked at frame {qa.asked_at} about frame "
                    f"{qa.evidence}; it needs 0 <= evidence < asked_at < {self.num_frames}."
                )
        for p in self.primitives:
            if p.end >= self.num_frames:
                raise ValueError(f"{where}: primitive {p} runs past the episode end.")
        return self

    def _check_subtasks(self, where: str) -> None:
        """Subtasks with text, in order and contiguous over every frame, each with its subgoal inside."""
        if not self.subtasks:
            raise ValueError(f"{where}: an ok annotation needs at least one subtask.")
        expected_start = 0
        for i, sub in enumerate(self.subtasks):
            if not sub.text.strip() or not sub.reasoning.strip():
                raise ValueError(f"{where}: subtask {i} has an empty text or reasoning.")
            if sub.start != expected_start or sub.end < sub.start:
                raise ValueError(
                    f"{where}: subtask {i} covers frames {sub.start}-{sub.end}; subtasks must be in order, "
                    f"contiguous and start at frame {expected_start}."
                )
            if not sub.start <= sub.subgoal_frame <= sub.end:
                raise ValueError(
                    f"{where}: subtask {i} subgoal_frame {sub.subgoal_frame} is outside its range."
                )
            expected_start = sub.end + 1
        if expected_start != self.num_frames:
            raise ValueError(
                f"{where}: subtasks end at frame {expected_start - 1}, the episode at {self.num_frames - 1}."
            )

    def subtask_index_at(self, t: int) -> int:
        """Index of the subtask whose frame range contains frame ``t``."""
        for i, sub in enumerate(self.subtasks):
            if sub.start <= t <= sub.end:
                return i
        raise ValueError(f"Frame {t} is not covered by any subtask of episode {self.episode_index}.")

    def to_dict(self) -> dict:
        """JSON-ready form (validated first)."""
        self.validate()
        return {
            "schema_version": self.schema_version,
            "dataset": self.dataset,
            "episode_index": self.episode_index,
            "status": self.status,
            "num_frames": self.num_frames,
            "instruction": self.instruction,
            "plan": self.plan,
            "subtasks": [s.to_dict() for s in self.subtasks],
            "primitives": [p.to_dict() for p in self.primitives],
            "annotator": dict(self.annotator),
            "prompt_versions": dict(self.prompt_versions),
            "error": self.error,
            "attempts": self.attempts,
            **({"video_qa": [qa.to_dict() for qa in self.video_qa]} if self.video_qa else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> EpisodeAnnotation:
        """Build and validate from a decoded JSON line; unknown or missing fields are errors."""
        if not isinstance(data, dict):
            raise ValueError(f"An annotation line must be a JSON object, got {type(data).__name__}.")
        unknown, missing = set(data) - _FIELDS, {"episode_index", "num_frames", "status"} - set(data)
        if unknown or missing:
            raise ValueError(f"Annotation has unknown fields {sorted(unknown)} / lacks {sorted(missing)}.")
        try:
            subtasks = [
                SubtaskAnnotation(
                    str(s["text"]),
                    int(s["start"]),
                    int(s["end"]),
                    str(s["reasoning"]),
                    int(s["subgoal_frame"]),
                )
                for s in data.get("subtasks", [])
            ]
            annotation = cls(
                episode_index=int(data["episode_index"]),
                num_frames=int(data["num_frames"]),
                instruction=str(data.get("instruction", "")),
                status=str(data["status"]),
                plan=str(data.get("plan", "")),
                subtasks=subtasks,
                primitives=[PrimitiveSegment.from_dict(p) for p in data.get("primitives", [])],
                annotator=dict(data.get("annotator", {})),
                prompt_versions=dict(data.get("prompt_versions", {})),
                error=data.get("error"),
                attempts=int(data.get("attempts", 1)),
                dataset=str(data.get("dataset", "")),
                schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
                video_qa=[VideoQA.from_dict(qa) for qa in data.get("video_qa", [])],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"Malformed annotation record: {exc!r}.") from exc
        return annotation.validate()


def read_annotations(path: str | Path) -> dict[int, EpisodeAnnotation]:
    """Read a sidecar file into {episode_index: annotation}; the last line of an episode wins.

    A torn last line (no trailing newline, invalid JSON: the writer was killed mid-line) is
    skipped with a warning; an invalid complete line raises ValueError with its line number.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    out: dict[int, EpisodeAnnotation] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines) and not text.endswith("\n")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn:
                warnings.warn(f"{path}: dropping a partial last line (an interrupted write).", stacklevel=2)
                continue
            raise ValueError(f"{path}:{number} is not valid JSON ({exc}); fix or delete that line.") from exc
        try:
            annotation = EpisodeAnnotation.from_dict(record)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from exc
        out[annotation.episode_index] = annotation
    return out


class AnnotationWriter:
    """Append-only, crash-safe writer of a sidecar file; thread-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()/__exit__
        self._lock = threading.Lock()

    def _repair_tail(self) -> None:
        # Cut a torn last line so that the next append starts on a fresh line.
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        try:
            json.loads(data[keep:])
        except ValueError:
            with open(self.path, "r+b") as f:
                f.truncate(keep)
            return
        # A complete record that only lacks its newline is kept.
        with open(self.path, "ab") as f:
            f.write(b"\n")

    def write(self, annotation: EpisodeAnnotation) -> None:
        """Validate, append one line, flush and fsync."""
        line = json.dumps(annotation.to_dict(), ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> AnnotationWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
