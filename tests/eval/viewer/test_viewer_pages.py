"""The viewer's pages, read back as HTML: what each section holds, against the records they show."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from emcot.cli.main import main
from emcot.eval.records import EPISODE_FILE, EpisodeRecord, FrameRecord, PlanRecord, PolicyStepRecord
from emcot.eval.viewer import ViewKind, build_view, view_kind
from emcot.eval.viewer.episode_page import plan_views
from emcot.eval.viewer.svg import nice_ticks
from emcot.inference.trace import Trace


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def having(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in a.get("class", "").split())]


def no_network(html: str) -> None:
    assert not re.search(r"https?://", html), "the page names a network address"
    assert "<link" not in html and "@import" not in html


def test_an_episode_page_shows_every_plan_with_its_three_scenes(recorded, tmp_path):
    episode, _ = recorded
    record = EpisodeRecord.load(episode)
    html = build_view(episode, tmp_path / "episode.html").read_text()
    page = Elements(html)
    no_network(html)
    plans = page.having("div", "plan")
    assert len(plans) == len(record.plans) == 3  # every_k=1 over three chunks
    assert [int(p["data-start"]) for p in plans] == [p.env_step for p in record.plans] == [0, 8, 16]
    assert len(page.having("img", "subgoal")) == sum(p.subgoal is not None for p in record.plans)
    assert len(page.having("img", "reached")) == 3
    text = "".join(page.text)
    for plan in record.plans:
        assert plan.reasoning in text
    # the timeline: one frame per kept step (every 4th, the re-plans, the last), a slider over them
    steps = sorted({f.env_step for f in record.frames})
    assert [int(d["data-step"]) for d in page.having("div", "frame")] == steps
    assert {0, 8, 16, record.steps} <= set(steps)
    assert page.having("input")[0]["max"] == str(len(steps) - 1)
    # one chart per action dimension, each with a cursor the slider moves
    assert (
        len([a for a in page.having("svg", "chart") if a.get("aria-label", "").startswith("action dim")]) == 4
    )
    assert "every_k (2)" in text and "no_plan (1)" in text  # the rules that fired, counted
    assert ("success at step" in text) == record.success


def test_a_sub_task_ends_at_the_first_plan_that_says_something_else():
    frames = [FrameRecord(s, "head", np.full((4, 4, 3), s, np.uint8)) for s in (0, 8, 16, 24, 30)]
    plans = [
        PlanRecord(0, 0, "no_plan", "reach the block", np.zeros((4, 4, 3), np.uint8)),
        PlanRecord(8, 1, "every_k", "reach the block", np.zeros((4, 4, 3), np.uint8)),
        PlanRecord(16, 2, "every_k", "push it left", np.full((4, 4, 3), 20, np.uint8)),
        PlanRecord(24, 3, "every_k", "push it left", None),
    ]
    record = EpisodeRecord("t", "full", 0, 0, "x", steps=30, plans=plans, frames=frames)
    views = plan_views(record)
    assert [(v.start, v.end, v.reached_step) for v in views] == [
        (0, 16, 16),
        (8, 16, 16),
        (16, 30, 30),
        (24, 30, 30),
    ]
    imagined, copied = views[2].psnr()
    # subgoal (all 20) vs reached (all 30): mse 100; observation (16) vs reached: mse 196
    assert imagined == pytest.approx(10 * np.log10(255**2 / 100)) and copied == pytest.approx(
        10 * np.log10(255**2 / 196)
    )
    assert views[3].psnr() is None  # no subgoal to score


def test_a_trace_page_shows_observation_reasoning_subgoal_chunk_and_timings(recorded, tmp_path):
    _, folder = recorded
    trace = Trace.load(folder)
    html = build_view(folder, tmp_path / "trace.html").read_text()
    page = Elements(html)
    no_network(html)
    assert trace.reasoning in "".join(page.text)
    assert [a["alt"] for a in page.having("img")] == ["observation head", "imagined subgoal"]
    charts = [a["aria-label"] for a in page.having("svg", "chart")]
    assert charts == [f"action dim {d}" for d in range(trace.actions.shape[1])]
    for stage, seconds in trace.timings.items():  # the timings table, in milliseconds
        assert f"<td>{stage}</td><td>{1000 * seconds:.1f}</td>" in html


def write_evaluation(root: Path, outcomes: dict[tuple[str, str, int], bool]) -> None:
    for (mode, task, episode), success in outcomes.items():
        record = EpisodeRecord(
            task,
            mode,
            episode,
            1000 + episode,
            "do it",
            success=success,
            steps=10,
            first_success=10 if success else None,
            step_success=[False] * 9 + [success],
            rewards=[0.0] * 10,
            actions=[[0.0] * 4] * 10,
            policy_steps=[PolicyStepRecord(0, True, "no_plan", 10, {"step": 0.01}, [[0.0] * 4] * 10)],
            plans=[PlanRecord(0, 0, "no_plan", f"{task} {mode} {episode}", np.zeros((8, 8, 3), np.uint8))],
            frames=[FrameRecord(0, "corner2", np.zeros((8, 8, 3), np.uint8))],
        )
        record.save(root / "episodes" / mode / task / f"{episode:03d}")
    (root / "protocol.json").write_text(json.dumps({"policy": "default", "seed": 1000}))


def test_an_evaluation_page_tabulates_and_links_every_episode_failures_first(tmp_path):
    outcomes = {
        ("full", "reach-v3", 0): True,
        ("full", "reach-v3", 1): False,
        ("full", "pick-place-v3", 0): False,
        ("reactive", "reach-v3", 0): True,
        ("reactive", "reach-v3", 1): True,
        ("reactive", "pick-place-v3", 0): True,
    }
    write_evaluation(tmp_path / "run", outcomes)
    assert view_kind(tmp_path / "run")[0] is ViewKind.EVALUATION
    index = build_view(tmp_path / "run", tmp_path / "site" / "view.html", progress=False)
    html = index.read_text()
    no_network(html)
    page = Elements(html)
    text = " ".join(page.text)
    assert "incomplete" in text  # no results.json: the tables cover the episodes saved so far
    results = page.having("table", "results")
    assert results
    # rows: both tasks, their buckets (easy, hard), the bucket mean, the episode mean; cells link to episodes
    table = html.split('class="results"')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + 2 + 2 + 2
    assert "50.0" in table and "100.0" in table and "0.0" in table
    links = [a["href"] for a in page.having("a") if a.get("href", "").endswith(".html")]
    assert len(links) == len(outcomes)
    assert all((index.parent / link).is_file() for link in links)
    episodes = html.split('class="episodes"')[1]
    order = re.findall(r"(failure|success)</span>", episodes)
    assert order == ["failure"] * 2 + ["success"] * 4
    anchors = {a["id"] for a in page.having("a") if "id" in a}
    cell_targets = {a["href"][1:] for a in page.having("a") if a.get("href", "").startswith("#")}
    assert cell_targets == anchors == {f"episodes-{m}-{t}" for m, t, _ in outcomes}
    episode_page = (index.parent / links[0]).read_text()
    no_network(episode_page)
    assert 'href="../../../view.html"' in episode_page
    # finished: results.json's protocol names the tasks, and the rows follow its order, not the folders'
    protocol = {"policy": "default", "seed": 1000, "tasks": ["reach-v3", "pick-place-v3"], "episodes": 2}
    (tmp_path / "run" / "results.json").write_text(json.dumps({"protocol": protocol}))
    html = build_view(tmp_path / "run", tmp_path / "site" / "view.html", progress=False).read_text()
    table = html.split('class="results"')[1].split("</table>")[0]
    assert "· complete" in html and table.index("reach-v3") < table.index("pick-place-v3")
    assert "<td>episodes</td><td>2</td>" in html  # the protocol table shows the finished protocol


def test_view_refuses_folders_it_cannot_show(tmp_path):
    with pytest.raises(ValueError, match="holds none of episode.json"):
        view_kind(tmp_path)
    with pytest.raises(ValueError, match="holds no saved episodes"):
        (tmp_path / "episodes").mkdir()
        build_view(tmp_path, tmp_path / "view.html")


def test_episode_records_of_format_1_still_load_and_show(recorded, tmp_path):
    episode, _ = recorded
    old = tmp_path / "old"
    EpisodeRecord.load(episode).save(old)
    data = json.loads((old / EPISODE_FILE).read_text())
    data["format"] = 1
    del data["actions"]
    for step in data["policy_steps"]:
        del step["predicted"]
    (old / EPISODE_FILE).write_text(json.dumps(data))
    record = EpisodeRecord.load(old)
    assert record.actions == [] and record.policy_steps[0].predicted == []
    assert "keeps no actions" in build_view(old, tmp_path / "old.html").read_text()
    data["format"] = 99
    (old / EPISODE_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format 99"):
        EpisodeRecord.load(old)


def test_emcot_view_writes_the_page_and_a_rerun_request_needs_an_episode(recorded, tmp_path, capsys):
    episode, trace = recorded
    assert main(["view", str(trace), "--out", str(tmp_path / "t.html")]) == 0
    assert f"trace page: {(tmp_path / 't.html').resolve()}" in capsys.readouterr().out
    assert main(["view", str(trace), "--rerun", str(tmp_path / "t.rrd")]) == 1
    assert "--rerun records one episode" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["view", str(tmp_path / "missing")])
    assert exit_.value.code == 2 and "is not a folder" in capsys.readouterr().err


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 48, 6) == [0, 10, 20, 30, 40]
    assert nice_ticks(-0.23, 0.71, 4) == [-0.2, 0.0, 0.2, 0.4, 0.6]
    assert nice_ticks(3, 3) == [3]
