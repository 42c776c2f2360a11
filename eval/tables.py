"""Evaluation tables as Markdown: what ``emcot eval`` prints and writes to ``results.md``.

API:
- ``results_table(metrics) -> str`` — one row per task, then one per difficulty bucket, then the
  bucket mean and the episode mean; one column per mode with the success rate in percent; a second
  table gives mean steps, think ratio, step latency and control rate per mode.
- ``results_markdown(metrics, protocol) -> str`` — both tables under a title, with the protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from emcot.eval.metrics import CellMetrics, EvalMetrics


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with padded columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def percent(cell: CellMetrics | None) -> str:
    """A success rate in percent with one decimal, or — for a missing cell."""
    return "—" if cell is None else f"{100.0 * cell.success_rate:.1f}"


COST_COLUMNS = ("episodes", "mean steps", "think ratio", "ms / policy step", "control Hz")


def success_table(metrics: EvalMetrics) -> str:
    """Success rate (%) per task, bucket and mean (rows) and mode (columns)."""
    modes = metrics.modes
    rows: list[list[str]] = []
    for task, cells in metrics.tasks.items():
        rows.append([task, *(percent(cells.get(mode)) for mode in modes)])
    for bucket, cells in metrics.splits.items():
        episodes = max(cell.episodes for cell in cells.values())
        rows.append([f"**{bucket}** ({episodes} ep)", *(percent(cells.get(mode)) for mode in modes)])
    rows.append(["**bucket mean**", *(percent(metrics.bucket_mean.get(mode)) for mode in modes)])
    rows.append(["**episode mean**", *(percent(metrics.episode_mean.get(mode)) for mode in modes)])
    return markdown_table(["success %", *modes], rows)


def cost_table(metrics: EvalMetrics) -> str:
    """Per mode (episode-pooled): episodes, mean env steps, think ratio, ms per policy step and the
    control rate (env steps per second of policy latency)."""
    rows = [[mode, *cost_cells(c)] for mode, c in metrics.episode_mean.items()]
    return markdown_table(["mode", *COST_COLUMNS], rows)


def cost_cells(c: CellMetrics) -> list[str]:
    """The cost columns (:data:`COST_COLUMNS`) of one cell."""
    return [
        str(c.episodes),
        f"{c.mean_steps:.1f}",
        f"{c.think_ratio:.3f}",
        f"{c.step_ms:.2f}",
        f"{c.control_hz:.1f}",
    ]


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
