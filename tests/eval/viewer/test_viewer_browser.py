"""The viewer's pages in a real browser: headless Chromium renders them from disk (no network),
runs their script and draws something; the rendered DOM holds the reasoning, one subgoal per
re-plan and the table rows. Skips when no Chromium is installed (``.ci/run`` installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emcot.eval.records import EpisodeRecord
from emcot.eval.viewer import build_view
from emcot.inference.trace import Trace

BROWSER = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
    None,
)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="needs headless Chromium (Debian: apt-get install chromium; .ci/run installs it)"
)


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        str(BROWSER),
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--virtual-time-budget=3000",  # let the page's script run before the DOM is dumped
        f"--user-data-dir={page.parent / '.chromium'}",
        *args,
        page.resolve().as_uri(),
    ]
    env = {**os.environ, "HOME": str(page.parent)}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=True)


def screenshot(page: Path, size: str = "1280,1800") -> np.ndarray:
    shot = page.with_suffix(".png")
    chromium(page, f"--screenshot={shot}", f"--window-size={size}")
    with Image.open(shot) as image:
        return np.asarray(image.convert("RGB"))


def assert_not_blank(pixels: np.ndarray, min_drawn: float = 0.05) -> None:
    background = np.array([250, 250, 250])
    drawn = np.abs(pixels.astype(int) - background).sum(-1) > 30
    assert drawn.mean() > min_drawn, f"only {drawn.mean():.1%} of the screenshot differs from the background"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, charts and images, not a flat fill


def test_an_episode_page_renders_and_its_timeline_script_runs(recorded, tmp_path):
    episode, _ = recorded
    record = EpisodeRecord.load(episode)
    page = build_view(episode, tmp_path / "episode.html")
    assert_not_blank(screenshot(page))
    dom = chromium(page, "--dump-dom").stdout
    for plan in record.plans:
        assert plan.reasoning.replace("'", "&#x27;") in dom or plan.reasoning in dom
    assert dom.count('class="view subgoal"') == len(record.plans) == 3
    # the script ran: it labelled the slider and marked the plan followed at step 0 as current
    assert 'id="scrub-label">env step 0 · plan 1<' in dom
    assert dom.count('class="plan current"') == 1
    assert dom.count('class="frame shown"') == 1


def test_a_trace_page_renders(recorded, tmp_path):
    _, folder = recorded
    page = build_view(folder, tmp_path / "trace.html")
    assert_not_blank(screenshot(page, "1280,1000"))
    dom = chromium(page, "--dump-dom").stdout
    assert Trace.load(folder).reasoning in dom and dom.count('class="view subgoal"') == 1


def test_an_evaluation_page_renders_with_its_table_rows(recorded, tmp_path):
    episode, _ = recorded
    record = EpisodeRecord.load(episode)
    for i, success in enumerate((True, False)):
        record.episode, record.success = i, success
        record.save(tmp_path / "run" / "episodes" / "full" / record.task / f"{i:03d}")
    page = build_view(tmp_path / "run", tmp_path / "site" / "view.html", progress=False)
    assert_not_blank(screenshot(page, "1280,900"), min_drawn=0.02)  # tables: mostly text on white
    dom = chromium(page, "--dump-dom").stdout
    assert (
        dom.count('<tr class="failure">') == 1 and 'href="view_episodes/full/synthetic-push/000.html"' in dom
    )
    assert "<b>episode mean</b>" in dom and "50.0" in dom
