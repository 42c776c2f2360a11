"""One table from several ``emcot eval`` result folders: variants side by side.

Each evaluation folder holds one policy under one protocol (modes, re-planning rules, async); a
study compares many — an EM-CoT policy with re-planning every chunk, every k steps, on subgoal
reached, asynchronously, a reactive baseline, the scripted expert, random. Runs are only compared
when they were measured alike (same seeds, episode length, resolution, success rule).

API:
- ``RunSpec.parse("FOLDER[=LABEL]")`` — a results folder and its column label (default: the folder
  name); a run with several modes gives one column per mode, ``LABEL/MODE``.
- ``load_run(spec) -> LoadedRun`` — its ``protocol`` and ``metrics`` from ``results.json``.
- ``compare_markdown(runs) -> str`` — success per task, bucket, bucket mean and episode mean, the
  cost per column (episodes, steps, think ratio, ms per step, control Hz), and the protocol keys
  that differ between columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emcot.eval.evaluate import RESULTS_FILE
from emcot.eval.metrics import EvalMetrics, metrics_from_dict
from emcot.eval.tables import COST_COLUMNS, cost_cells, markdown_table, percent
from emcot.io_utils import read_json

# Protocol keys that must agree for two runs to share a table.
COMPARABLE_KEYS = ("benchmark", "seed", "max_steps", "resolution", "stop_on_success", "camera")


@dataclass(frozen=True)
class RunSpec:
    """A results folder and the label its columns get."""

    folder: Path
    label: str

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        """``FOLDER`` or ``FOLDER=LABEL``."""
        folder, sep, label = text.partition("=")
        if not folder or (sep and not label.strip()):
            raise ValueError(f"a run is FOLDER or FOLDER=LABEL, got {text!r}")
        path = Path(folder)
        return cls(path, label.strip() if sep else path.name)


@dataclass(frozen=True)
class LoadedRun:
    """One evaluation's label, protocol and metrics."""

    label: str
    protocol: dict[str, Any]
    metrics: EvalMetrics

    def columns(self) -> list[tuple[str, str]]:
        """``(column name, mode)`` pairs: the label alone for a one-mode run."""
        modes = self.metrics.modes
        if len(modes) == 1:
            return [(self.label, modes[0])]
        return [(f"{self.label}/{mode}", mode) for mode in modes]


def load_run(spec: RunSpec) -> LoadedRun:
    """Read ``spec.folder/results.json`` (written when an evaluation completes)."""
    path = spec.folder / RESULTS_FILE
    if not path.is_file():
        raise ValueError(
            f"{spec.folder} has no {RESULTS_FILE}; run `emcot eval` into it until every episode is done"
        )
    data = read_json(path, "evaluation results")
    protocol = data.pop("protocol", {})
    return LoadedRun(spec.label, protocol, metrics_from_dict(data))


def _check_comparable(runs: Sequence[LoadedRun]) -> None:
    first = runs[0]
    for run in runs[1:]:
        differ = [k for k in COMPARABLE_KEYS if run.protocol.get(k) != first.protocol.get(k)]
        if differ:
            raise ValueError(
                f"runs {first.label!r} and {run.label!r} were measured differently ({differ}); "
                "compare runs of one protocol"
            )
    names = [name for run in runs for name, _ in run.columns()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"column names {repeated} repeat; give the runs distinct labels (FOLDER=LABEL)")


def _rows(runs: Sequence[LoadedRun]) -> tuple[list[str], list[str]]:
    tasks = list(dict.fromkeys(task for run in runs for task in run.metrics.tasks))
    buckets = list(dict.fromkeys(bucket for run in runs for bucket in run.metrics.splits))
    return tasks, buckets


def compare_markdown(runs: Sequence[LoadedRun]) -> str:
    """The success table, the cost table and the differing protocol keys of ``runs``."""
    if not runs:
        raise ValueError("nothing to compare: name at least one results folder")
    _check_comparable(runs)
    columns = [(run, name, mode) for run in runs for name, mode in run.columns()]
    header = ["success %", *(name for _, name, _ in columns)]
    tasks, buckets = _rows(runs)

    def row(label: str, cell_of) -> list[str]:
        return [label, *(percent(cell_of(run.metrics, mode)) for run, _, mode in columns)]

    def task_cell(task: str):
        return lambda m, mode: m.tasks.get(task, {}).get(mode)

    def bucket_cell(bucket: str):
        return lambda m, mode: m.splits.get(bucket, {}).get(mode)

    rows = [row(task, task_cell(task)) for task in tasks]
    rows += [row(f"**{bucket}**", bucket_cell(bucket)) for bucket in buckets]
    rows.append(row("**bucket mean**", lambda m, mode: m.bucket_mean.get(mode)))
    rows.append(row("**episode mean**", lambda m, mode: m.episode_mean.get(mode)))
    cost_rows = [[name, *cost_cells(run.metrics.episode_mean[mode])] for run, name, mode in columns]
    parts = [markdown_table(header, rows), "", markdown_table(["run", *COST_COLUMNS], cost_rows)]
    parts += ["", *_protocol_notes(runs)]
    return "\n".join(parts) + "\n"


def _protocol_notes(runs: Sequence[LoadedRun]) -> list[str]:
    keys = list(dict.fromkeys(k for run in runs for k in run.protocol))
    shared = {
        k: runs[0].protocol.get(k)
        for k in keys
        if all(r.protocol.get(k) == runs[0].protocol.get(k) for r in runs)
    }
    lines = ["Protocol (all runs): " + ", ".join(f"{k}={v}" for k, v in shared.items() if k != "camera")]
    for run in runs:
        own = {k: run.protocol.get(k) for k in keys if k not in shared}
        if own:
            lines.append(f"- {run.label}: " + ", ".join(f"{k}={v}" for k, v in own.items()))
    return lines
