"""See what the policy thought: static HTML pages of traces, episodes and evaluations.

Every page opens from disk with no network (styles, script and images inline; plots are inline
SVG). An evaluation is a folder: the index page and one page per episode beside it.

API:
- ``ViewKind`` — ``TRACE``, ``EPISODE``, ``EVALUATION``; ``view_kind(folder) -> (ViewKind, folder)``
  recognises the folders ``Trace.save``, ``EpisodeRecord.save``, ``emcot demo`` and ``emcot eval``
  write (a demo folder resolves to its ``episode/``).
- ``build_view(source, out, *, progress=True) -> Path`` — the page of ``source`` at ``out``.
- ``write_rerun(record, path) -> Path`` (in :mod:`emcot.eval.viewer.rerun_log`, needs ``rerun-sdk``).
"""

from __future__ import annotations

import enum
from pathlib import Path

from emcot.eval.records import EPISODE_FILE, EpisodeRecord
from emcot.eval.viewer.episode_page import episode_page
from emcot.eval.viewer.eval_page import write_evaluation_pages
from emcot.eval.viewer.trace_page import TRACE_FILE, trace_page


class ViewKind(enum.Enum):
    """What a folder holds."""

    TRACE = "trace"
    EPISODE = "episode"
    EVALUATION = "evaluation"


def view_kind(folder: str | Path) -> tuple[ViewKind, Path]:
    """What ``folder`` holds, and the folder that holds it (an ``emcot demo`` folder → its episode)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; pass a saved trace, episode, demo or evaluation folder")
    if (folder / EPISODE_FILE).is_file():
        return ViewKind.EPISODE, folder
    if (folder / "episode" / EPISODE_FILE).is_file():
        return ViewKind.EPISODE, folder / "episode"
    if (folder / "episodes").is_dir():
        return ViewKind.EVALUATION, folder
    if (folder / TRACE_FILE).is_file():
        return ViewKind.TRACE, folder
    raise ValueError(
        f"{folder} holds none of {EPISODE_FILE} (an episode), episode/{EPISODE_FILE} (emcot demo), "
        f"episodes/ (emcot eval) or {TRACE_FILE} (a saved trace)"
    )


def build_view(source: str | Path, out: str | Path, *, progress: bool = True) -> Path:
    """Write the page of ``source`` (any folder :func:`view_kind` knows) to ``out``; returns ``out``."""
    kind, folder = view_kind(source)
    out = Path(out)
    if kind is ViewKind.EVALUATION:
        return write_evaluation_pages(folder, out, progress=progress)
    html = episode_page(EpisodeRecord.load(folder)) if kind is ViewKind.EPISODE else trace_page(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out


__all__ = ["ViewKind", "build_view", "view_kind"]
