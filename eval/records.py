"""What one evaluation episode leaves behind, and its folder on disk.

API:
- ``EpisodeRecord`` — identity (``task``, ``mode``, ``episode``, ``seed``, ``instruction``), outcome
  (``success``, ``steps``, ``first_success``), per env step ``step_success`` and ``rewards``, per
  policy step ``policy_steps`` (:class:`PolicyStepRecord`: env step, re-planned, the rule that
  fired, actions executed, stage timings in seconds, the whole ``predicted`` chunk), per env step the
  ``actions`` sent, the re-plans' ``plans`` (:class:`PlanRecord`: reasoning text and subgoal image),
  ``frames`` (:class:`FrameRecord`: every k-th step, every re-plan and the last step) and ``wall_s``;
  ``summary() -> EpisodeSummary``; ``save(folder)`` writes ``episode.json`` plus PNGs atomically;
  ``EpisodeRecord.load(folder)`` (also reads format 1, which had no actions).
- ``EpisodeSummary`` — the numbers metrics need (``episode.json``'s ``summary`` entry; cheap to read
  with ``EpisodeSummary.load(folder)``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emcot.io_utils import dataclass_from_dict, read_json

EPISODE_FILE = "episode.json"
FORMAT_VERSION = 2


@dataclass(frozen=True)
class EpisodeSummary:
    """Outcome and cost of one episode: ``step_s`` sums the policy's step latencies (seconds)."""

    task: str
    mode: str
    episode: int
    seed: int
    success: bool
    steps: int
    policy_steps: int
    replans: int
    step_s: float

    @classmethod
    def load(cls, folder: str | Path) -> EpisodeSummary:
        """The summary stored in ``folder/episode.json``."""
        path = Path(folder) / EPISODE_FILE
        data = read_json(path, "episode file")
        if not isinstance(data, dict) or "summary" not in data:
            raise ValueError(f"episode file {path} has no summary; was it written by EpisodeRecord.save?")
        return dataclass_from_dict(cls, data["summary"], where=f" in {path}")


@dataclass(frozen=True)
class PolicyStepRecord:
    """One policy step: the env step its chunk started at, whether it re-planned and which rule
    fired, how many of its actions ran, its per-stage timings in seconds and the whole chunk its
    trace ``predicted`` (``[horizon][action_dim]``, robot units; empty for reference policies)."""

    env_step: int
    replanned: bool
    reason: str | None
    actions: int
    timings: dict[str, float] = field(default_factory=dict)
    predicted: list[list[float]] = field(default_factory=list)


@dataclass
class PlanRecord:
    """The trace of a re-planning step: its reasoning and its imagined subgoal (or None)."""

    env_step: int
    policy_step: int
    reason: str | None
    reasoning: str
    subgoal: np.ndarray | None = None


@dataclass
class FrameRecord:
    """One camera frame the policy saw, at ``env_step``."""

    env_step: int
    camera: str
    image: np.ndarray


@dataclass
class EpisodeRecord:
    """Everything one episode produced (see the module docstring)."""

    task: str
    mode: str
    episode: int
    seed: int
    instruction: str
    success: bool = False
    steps: int = 0
    first_success: int | None = None
    step_success: list[bool] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    actions: list[list[float]] = field(default_factory=list)
    policy_steps: list[PolicyStepRecord] = field(default_factory=list)
    plans: list[PlanRecord] = field(default_factory=list)
    frames: list[FrameRecord] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> EpisodeSummary:
        """The numbers the metrics read."""
        return EpisodeSummary(
            task=self.task,
            mode=self.mode,
            episode=self.episode,
            seed=self.seed,
            success=self.success,
            steps=self.steps,
            policy_steps=len(self.policy_steps),
            replans=sum(step.replanned for step in self.policy_steps),
            step_s=float(sum(step.timings.get("step", 0.0) for step in self.policy_steps)),
        )

    def _payload(self) -> dict[str, Any]:
        plans = [
            {**{k: v for k, v in asdict(plan).items() if k != "subgoal"}, "subgoal": _plan_png(i, plan)}
            for i, plan in enumerate(self.plans)
        ]
        frames = [{"env_step": f.env_step, "camera": f.camera, "image": _frame_png(f)} for f in self.frames]
        return {
            "format": FORMAT_VERSION,
            "summary": asdict(self.summary()),
            "instruction": self.instruction,
            "first_success": self.first_success,
            "step_success": self.step_success,
            "rewards": self.rewards,
            "actions": self.actions,
            "policy_steps": [asdict(step) for step in self.policy_steps],
            "plans": plans,
            "frames": frames,
            "wall_s": self.wall_s,
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``episode.json``, ``plans/*.png`` and ``frames/*.png`` into ``folder`` atomically:
        everything goes into a temporary sibling that is renamed into place, so a killed run leaves
        either the whole episode or none of it."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            payload = self._payload()
            for plan, entry in zip(self.plans, payload["plans"]):
                if plan.subgoal is not None:
                    _write_png(tmp / entry["subgoal"], plan.subgoal)
            for frame, entry in zip(self.frames, payload["frames"]):
                _write_png(tmp / entry["image"], frame.image)
            (tmp / EPISODE_FILE).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
            if folder.exists():
                shutil.rmtree(folder)  # an older copy of the same episode: the new one replaces it
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> EpisodeRecord:
        """Read an episode written by :meth:`save`, images included."""
        folder = Path(folder)
        data = read_json(folder / EPISODE_FILE, "episode file")
        version = data.get("format")
        if version not in (1, FORMAT_VERSION):
            raise ValueError(
                f"episode file {folder / EPISODE_FILE} has format {version!r}; this emcot reads 1 and "
                f"{FORMAT_VERSION} (a newer emcot wrote it?)"
            )
        summary = EpisodeSummary.load(folder)
        plans = [
            PlanRecord(
                env_step=p["env_step"],
                policy_step=p["policy_step"],
                reason=p["reason"],
                reasoning=p["reasoning"],
                subgoal=_read_png(folder / p["subgoal"]) if p["subgoal"] else None,
            )
            for p in data["plans"]
        ]
        frames = [
            FrameRecord(f["env_step"], f["camera"], _read_png(folder / f["image"])) for f in data["frames"]
        ]
        return cls(
            task=summary.task,
            mode=summary.mode,
            episode=summary.episode,
            seed=summary.seed,
            instruction=data["instruction"],
            success=summary.success,
            steps=summary.steps,
            first_success=data["first_success"],
            step_success=[bool(s) for s in data["step_success"]],
            rewards=[float(r) for r in data["rewards"]],
            actions=[[float(a) for a in action] for action in data.get("actions", [])],
            policy_steps=[PolicyStepRecord(**step) for step in data["policy_steps"]],
            plans=plans,
            frames=frames,
            wall_s=float(data["wall_s"]),
        )


def _plan_png(index: int, plan: PlanRecord) -> str | None:
    return None if plan.subgoal is None else f"plans/{index:03d}_step{plan.env_step:04d}.png"


def _frame_png(frame: FrameRecord) -> str:
    return f"frames/{frame.env_step:04d}_{frame.camera}.png"


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path, format="PNG")


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read episode image {path}: {err}") from None
