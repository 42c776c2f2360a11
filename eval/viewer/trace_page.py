"""The page of one saved trace (``Trace.save``, ``emcot generate --out``, ``emcot demo --no-sim``).

It shows the observation per camera, the reasoning exactly as the model wrote it, the imagined
subgoal, the action chunk plotted per dimension and the per-stage timings.

API:
- ``SavedTrace(trace, observations, state)`` and ``SavedTrace.load(folder)``.
- ``trace_body(saved) -> str`` — the page's sections (the episode page reuses the chunk plots).
- ``trace_page(folder) -> str`` — the whole page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from emcot.eval.viewer.html import esc, figure, img, page, table
from emcot.eval.viewer.svg import PALETTE, Series, line_chart
from emcot.inference.trace import Trace
from emcot.io_utils import read_json

TRACE_FILE = "trace.json"


@dataclass
class SavedTrace:
    """A trace read back from disk, with the observation it was made from when that was saved."""

    trace: Trace
    observations: dict[str, np.ndarray]
    state: list[float] | None

    @classmethod
    def load(cls, folder: str | Path) -> SavedTrace:
        """Read ``folder/trace.json`` and the images it names."""
        folder = Path(folder)
        trace = Trace.load(folder)
        data = read_json(folder / TRACE_FILE, "trace file")
        observations = {}
        for camera, name in (data.get("observations") or {}).items():
            try:
                with Image.open(folder / name) as image:
                    observations[camera] = np.asarray(image.convert("RGB"))
            except (OSError, ValueError) as err:
                raise ValueError(f"cannot read the observation image {folder / name}: {err}") from None
        return cls(trace, observations, data.get("state"))


def chunk_charts(chunk: np.ndarray, *, title: str = "action") -> str:
    """One chart per action dimension of a ``[horizon, dim]`` chunk (x: step within the chunk)."""
    chunk = np.asarray(chunk, np.float32)
    if chunk.ndim != 2 or chunk.size == 0:
        return "<p>no actions</p>"
    steps = list(range(len(chunk)))
    charts = [
        line_chart(
            [Series("predicted", steps, chunk[:, d].tolist(), PALETTE[d % len(PALETTE)], legend=False)],
            title=f"{title} dim {d}",
            x_label="step in chunk",
            width=280,
            height=160,
        )
        for d in range(chunk.shape[1])
    ]
    return f'<div class="plots">{"".join(charts)}</div>'


def timings_table(timings: dict[str, float]) -> str:
    """Stage timings in milliseconds, with each stage's share of the total when one is given."""
    total = timings.get("total") or timings.get("step") or sum(timings.values())
    rows = [
        [esc(stage), f"{1000.0 * seconds:.1f}", f"{100.0 * seconds / total:.0f} %" if total else "—"]
        for stage, seconds in timings.items()
    ]
    return table(["stage", "ms", "share"], rows)


def trace_body(saved: SavedTrace) -> str:
    """The sections of a trace page."""
    trace = saved.trace
    views = [
        figure(img(image, alt=f"observation {camera}"), f"observation · {camera}")
        for camera, image in saved.observations.items()
    ]
    if trace.subgoal is not None:
        views.append(figure(img(trace.subgoal, alt="imagined subgoal", cls="subgoal"), "imagined subgoal"))
    state = (
        "" if saved.state is None else f"<p class=meta>state: {esc(np.round(saved.state, 4).tolist())}</p>"
    )
    return "".join(
        [
            "<h2>What it saw and imagined</h2>",
            "".join(views) or "<p>no images were saved with this trace</p>",
            state,
            "<h2>Reasoning</h2>",
            f'<pre class="reasoning">{esc(trace.reasoning) or "(no reasoning in this mode)"}</pre>',
            f"<h2>Action chunk ({len(trace.actions)} steps)</h2>",
            chunk_charts(trace.actions),
            "<h2>Timings</h2>",
            timings_table(trace.timings),
        ]
    )


def trace_page(folder: str | Path) -> str:
    """The page of the trace saved in ``folder``."""
    saved = SavedTrace.load(folder)
    trace = saved.trace
    header = (
        "<h1>Trace</h1>"
        f'<p class="meta"><b>{esc(trace.instruction)}</b> · mode {esc(trace.mode)} · '
        f"{len(trace.actions)} actions · {esc(Path(folder).name)}</p>"
    )
    return page(f"emcot trace — {trace.instruction}", header + trace_body(saved))
