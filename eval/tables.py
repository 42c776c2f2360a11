"""Evaluation tables as Markdown: what ``emcot eval`` prints and writes to ``results.md``.

API:
- ``results_table(metrics) -> str`` — one row per task, then one per difficulty bucket, then the
  bucket mean and the episode mean; one column per mode with the success rate in percent; a second
  table gives mean steps, think ratio and step latency per mode.
- ``results_markdown(metrics, protocol) -> str`` — both tables under a title, with the protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from emcot.eval.metrics import CellMetrics, EvalMetrics


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _percent(cell: CellMetrics | None) -> str:
    return "—" if cell is None else f"{100.0 * cell.success_rate:.1f}"


def success_table(metrics: EvalMetrics) -> str:
    """Success rate (%) per task, bucket and mean (rows) and mode (columns)."""
    modes = metrics.modes
    rows: list[list[str]] = []
    for task, cells in metrics.tasks.items():
        rows.append([task, *(_percent(cells.get(mode)) for mode in modes)])
    for bucket, cells in metrics.splits.items():
        episodes = max(cell.episodes for cell in cells.values())
        rows.append([f"**{bucket}** ({episodes} ep)", *(_percent(cells.get(mode)) for mode in modes)])
    rows.append(["**bucket mean**", *(_percent(metrics.bucket_mean.get(mode)) for mode in modes)])
    rows.append(["**episode mean**", *(_percent(metrics.episode_mean.get(mode)) for mode in modes)])
    return _markdown(["success %", *modes], rows)


def cost_table(metrics: EvalMetrics) -> str:
    """Per mode (episode-pooled): episodes, mean env steps, think ratio and ms per policy step."""
    rows = [
        [mode, str(c.episodes), f"{c.mean_steps:.1f}", f"{c.think_ratio:.3f}", f"{c.step_ms:.2f}"]
        for mode, c in metrics.episode_mean.items()
    ]
    return _markdown(["mode", "episodes", "mean steps", "think ratio", "ms / policy step"], rows)


def results_table(metrics: EvalMetrics) -> str:
    """The success table, then the cost table."""
    return success_table(metrics) + "\n\n" + cost_table(metrics)


def _protocol_lines(protocol: Mapping[str, Any]) -> list[str]:
    return [f"- {key}: {value}" for key, value in protocol.items()]


def results_markdown(metrics: EvalMetrics, protocol: Mapping[str, Any]) -> str:
    """``results.md``: the tables and the protocol they were measured under."""
    parts = [
        "# Meta-World evaluation",
        "",
        "Bucket mean = unweighted mean of the difficulty buckets present (what papers report); "
        "episode mean = every episode weighs the same (LeRobot's pc_success).",
        "",
        results_table(metrics),
        "",
        "## Protocol",
        "",
        *_protocol_lines(protocol),
        "",
    ]
    return "\n".join(parts)
