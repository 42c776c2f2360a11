"""Success rates and costs per task, per difficulty bucket, and the two headline means.

Papers report the **bucket mean** (the unweighted mean of the difficulty buckets present, each
bucket the mean of its tasks); LeRobot's ``pc_success`` is the **episode mean** (every episode
weighs the same, so the 28 easy tasks dominate). Both are always given.

API:
- ``CellMetrics(success_rate, episodes, mean_steps, think_ratio, step_ms, control_hz)`` —
  ``think_ratio`` is the fraction of policy steps that re-planned, ``step_ms`` the mean policy
  latency per policy step, ``control_hz`` the env steps (actions) per second of policy latency: the
  control rate the policy sustains on this machine, simulator time excluded.
- ``aggregate(summaries) -> CellMetrics`` — pooled over episodes.
- ``EvalMetrics`` — ``tasks[task][mode]``, ``splits[bucket][mode]``, ``bucket_mean[mode]``,
  ``episode_mean[mode]``; ``to_dict()`` is the ``results.json`` layout (without ``protocol``),
  ``metrics_from_dict(data)`` reads it back.
- ``compute_metrics(summaries, bucket_of) -> EvalMetrics`` — ``bucket_of(task)`` names the bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from statistics import fmean
from typing import Any

from emcot.eval.records import EpisodeSummary
from emcot.io_utils import dataclass_from_dict


@dataclass(frozen=True)
class CellMetrics:
    """One table cell: a task (or bucket, or mean) under one mode."""

    success_rate: float
    episodes: int
    mean_steps: float
    think_ratio: float
    step_ms: float
    control_hz: float = 0.0


def aggregate(summaries: Sequence[EpisodeSummary]) -> CellMetrics:
    """Episodes pooled: success rate, mean env steps, re-plan share and latency per policy step."""
    if not summaries:
        raise ValueError("no episodes to aggregate")
    policy_steps = sum(s.policy_steps for s in summaries)
    step_s = sum(s.step_s for s in summaries)
    return CellMetrics(
        success_rate=fmean(float(s.success) for s in summaries),
        episodes=len(summaries),
        mean_steps=fmean(s.steps for s in summaries),
        think_ratio=sum(s.replans for s in summaries) / policy_steps if policy_steps else 0.0,
        step_ms=1000.0 * step_s / policy_steps if policy_steps else 0.0,
        control_hz=sum(s.steps for s in summaries) / step_s if step_s > 0 else 0.0,
    )


def mean_of_cells(cells: Sequence[CellMetrics]) -> CellMetrics:
    """The unweighted mean of cells (each task or bucket weighs the same); ``episodes`` is the total."""
    if not cells:
        raise ValueError("no cells to average")
    return CellMetrics(
        success_rate=fmean(c.success_rate for c in cells),
        episodes=sum(c.episodes for c in cells),
        mean_steps=fmean(c.mean_steps for c in cells),
        think_ratio=fmean(c.think_ratio for c in cells),
        step_ms=fmean(c.step_ms for c in cells),
        control_hz=fmean(c.control_hz for c in cells),
    )


@dataclass(frozen=True)
class EvalMetrics:
    """Every cell of an evaluation (see the module docstring)."""

    tasks: dict[str, dict[str, CellMetrics]] = field(default_factory=dict)
    splits: dict[str, dict[str, CellMetrics]] = field(default_factory=dict)
    bucket_mean: dict[str, CellMetrics] = field(default_factory=dict)
    episode_mean: dict[str, CellMetrics] = field(default_factory=dict)

    @property
    def modes(self) -> list[str]:
        """Modes in the order they first appear."""
        return list(self.episode_mean)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, the layout of ``results.json``."""

        def table(cells: dict[str, dict[str, CellMetrics]]) -> dict[str, Any]:
            return {row: {mode: asdict(cell) for mode, cell in modes.items()} for row, modes in cells.items()}

        return {
            "tasks": table(self.tasks),
            "splits": table(self.splits),
            "bucket_mean": {mode: asdict(cell) for mode, cell in self.bucket_mean.items()},
            "episode_mean": {mode: asdict(cell) for mode, cell in self.episode_mean.items()},
        }


def metrics_from_dict(data: dict[str, Any]) -> EvalMetrics:
    """The inverse of :meth:`EvalMetrics.to_dict` (``results.json`` without its protocol)."""

    def cell(values: dict[str, Any]) -> CellMetrics:
        return dataclass_from_dict(CellMetrics, values, where=" in results.json")

    def table(rows: dict[str, Any]) -> dict[str, dict[str, CellMetrics]]:
        return {row: {mode: cell(values) for mode, values in modes.items()} for row, modes in rows.items()}

    return EvalMetrics(
        tasks=table(data["tasks"]),
        splits=table(data["splits"]),
        bucket_mean={mode: cell(values) for mode, values in data["bucket_mean"].items()},
        episode_mean={mode: cell(values) for mode, values in data["episode_mean"].items()},
    )


def _ordered(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def compute_metrics(
    summaries: Sequence[EpisodeSummary],
    bucket_of: Callable[[str], str],
    *,
    bucket_order: Sequence[str] = (),
) -> EvalMetrics:
    """Per task, per bucket (mean of its tasks), the bucket mean and the episode mean, per mode.
    Rows follow the order episodes come in; buckets follow ``bucket_order`` when given."""
    modes = _ordered(s.mode for s in summaries)
    task_names = _ordered(s.task for s in summaries)
    tasks: dict[str, dict[str, CellMetrics]] = {}
    for task in task_names:
        for mode in modes:
            chosen = [s for s in summaries if s.task == task and s.mode == mode]
            if chosen:
                tasks.setdefault(task, {})[mode] = aggregate(chosen)
    present = _ordered(bucket_of(task) for task in task_names)
    order = [b for b in bucket_order if b in present] + [b for b in present if b not in bucket_order]
    splits: dict[str, dict[str, CellMetrics]] = {}
    for bucket in order:
        for mode in modes:
            cells = [tasks[t][mode] for t in task_names if bucket_of(t) == bucket and mode in tasks[t]]
            if cells:
                splits.setdefault(bucket, {})[mode] = mean_of_cells(cells)
    bucket_mean = {
        mode: mean_of_cells([row[mode] for row in splits.values() if mode in row]) for mode in modes
    }
    episode_mean = {mode: aggregate([s for s in summaries if s.mode == mode]) for mode in modes}
    return EvalMetrics(tasks=tasks, splits=splits, bucket_mean=bucket_mean, episode_mean=episode_mean)
