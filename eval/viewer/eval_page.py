"""The pages of an evaluation folder (``emcot eval --out``): its results table and every episode.

The index shows the success table (per task, per difficulty bucket, both means, per mode; each
cell links to that task's episodes), the cost table, the protocol and one row per episode,
failures first, each linking to its episode page. Metrics are computed from the episodes saved,
so an evaluation still running (or stopped) can be viewed too; the page says so.

API:
- ``write_evaluation_pages(folder, out, *, progress=True) -> Path`` — ``out`` (the index) and
  ``<out stem>_episodes/<mode>/<task>/<episode>.html`` beside it, linked relatively.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from emcot.eval.envs.metaworld_tasks import DIFFICULTY, TASK_DESCRIPTIONS, difficulty_of
from emcot.eval.evaluate import PROTOCOL_FILE, RESULTS_FILE
from emcot.eval.metrics import CellMetrics, EvalMetrics, compute_metrics
from emcot.eval.records import EPISODE_FILE, EpisodeRecord, EpisodeSummary
from emcot.eval.tables import COST_COLUMNS, cost_cells, percent
from emcot.eval.viewer.episode_page import episode_page
from emcot.eval.viewer.html import esc, page, table
from emcot.io_utils import read_json

OTHER_BUCKET = "other"


def _bucket_of(task: str) -> str:
    return difficulty_of(task) if task in TASK_DESCRIPTIONS else OTHER_BUCKET


def _protocol(folder: Path) -> dict[str, Any]:
    """The protocol of a finished evaluation (results.json: with its tasks and episode count), else
    of one under way (protocol.json), else nothing."""
    if (folder / RESULTS_FILE).is_file():
        results = read_json(folder / RESULTS_FILE, "results file")
        if isinstance(results, dict) and isinstance(results.get("protocol"), dict):
            return results["protocol"]
    return read_json(folder / PROTOCOL_FILE, "protocol file") if (folder / PROTOCOL_FILE).is_file() else {}


def _anchor(mode: str, task: str) -> str:
    return f"episodes-{mode}-{task}"


def _cell_link(cell: CellMetrics | None, mode: str, task: str) -> str:
    return percent(cell) if cell is None else f'<a href="#{esc(_anchor(mode, task))}">{percent(cell)}</a>'


def _success_table(metrics: EvalMetrics) -> str:
    modes = metrics.modes
    rows = [
        [esc(task), *(_cell_link(cells.get(m), m, task) for m in modes)]
        for task, cells in metrics.tasks.items()
    ]
    for bucket, cells in metrics.splits.items():
        episodes = max(cell.episodes for cell in cells.values())
        rows.append([f"<b>{esc(bucket)}</b> ({episodes} ep)", *(percent(cells.get(m)) for m in modes)])
    rows.append(["<b>bucket mean</b>", *(percent(metrics.bucket_mean.get(m)) for m in modes)])
    rows.append(["<b>episode mean</b>", *(percent(metrics.episode_mean.get(m)) for m in modes)])
    return table(["success %", *modes], rows, cls="results")


def _episode_rows(entries: list[tuple[EpisodeSummary, str]]) -> str:
    # failures first, then by mode, task and episode, so what needs looking at is on top
    ordered = sorted(entries, key=lambda e: (e[0].success, e[0].mode, e[0].task, e[0].episode))
    rows, classes, seen = [], [], set()
    for summary, href in ordered:
        anchor = _anchor(summary.mode, summary.task)
        target = "" if anchor in seen else f' id="{esc(anchor)}"'
        seen.add(anchor)
        outcome = (
            '<span class="badge ok">success</span>'
            if summary.success
            else '<span class="badge fail">failure</span>'
        )
        ms = 1000.0 * summary.step_s / summary.policy_steps if summary.policy_steps else 0.0
        rows.append(
            [
                f'<a{target} href="{esc(href)}">{esc(summary.task)} #{summary.episode}</a>',
                esc(summary.mode),
                str(summary.seed),
                outcome,
                str(summary.steps),
                str(summary.replans),
                f"{ms:.1f}",
            ]
        )
        classes.append("" if summary.success else "failure")
    header = ["episode", "mode", "seed", "outcome", "steps", "re-plans", "ms / policy step"]
    return table(header, rows, cls="episodes", row_classes=classes)


def write_evaluation_pages(folder: str | Path, out: str | Path, *, progress: bool = True) -> Path:
    """Write the index page ``out`` of the evaluation in ``folder`` and one page per episode."""
    folder, out = Path(folder), Path(out)
    episode_files = sorted((folder / "episodes").glob(f"*/*/*/{EPISODE_FILE}"))
    if not episode_files:
        raise ValueError(f"{folder} holds no saved episodes (episodes/<mode>/<task>/<n>/{EPISODE_FILE})")
    protocol = _protocol(folder)
    pages = out.parent / f"{out.stem}_episodes"
    index_name = out.name
    entries: list[tuple[EpisodeSummary, str]] = []
    for path in tqdm(episode_files, desc="episode pages", unit="ep", disable=not progress):
        record = EpisodeRecord.load(path.parent)
        target = pages / record.mode / record.task / f"{record.episode:03d}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            episode_page(record, title_link=(f"../../../{index_name}", "evaluation")), encoding="utf-8"
        )
        entries.append((record.summary(), target.relative_to(out.parent).as_posix()))
    # rows in the protocol's task order (the policy card's), tasks it does not name after them
    order = {task: i for i, task in enumerate(protocol.get("tasks") or [])}
    summaries = sorted((e[0] for e in entries), key=lambda s: order.get(s.task, len(order)))
    metrics = compute_metrics(summaries, _bucket_of, bucket_order=(*DIFFICULTY, OTHER_BUCKET))
    complete = (folder / RESULTS_FILE).is_file()
    state = (
        "complete"
        if complete
        else "incomplete: results.json is not written yet, the tables cover the episodes saved so far"
    )
    cost_rows = [[esc(mode), *cost_cells(cell)] for mode, cell in metrics.episode_mean.items()]
    protocol_rows = [[esc(key), esc(value)] for key, value in protocol.items()]
    body = "".join(
        [
            "<h1>Evaluation</h1>",
            f'<p class="meta"><b>{esc(folder.resolve().name)}</b> · {len(entries)} episodes · {esc(state)}</p>',
            "<h2>Success</h2>",
            "<p class=meta>Bucket mean: the unweighted mean of the difficulty buckets present; episode mean: every episode weighs the same.</p>",
            _success_table(metrics),
            "<h2>Cost</h2>",
            table(["mode", *COST_COLUMNS], cost_rows),
            f"<h2>Episodes ({len(entries)}, failures first)</h2>",
            _episode_rows(entries),
            "<h2>Protocol</h2>",
            table(["key", "value"], protocol_rows) if protocol_rows else "<p>no protocol.json</p>",
        ]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(f"emcot evaluation — {folder.resolve().name}", body), encoding="utf-8")
    return out
