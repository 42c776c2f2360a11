"""An episode as a Rerun recording: the file verifies with Rerun's own reader and holds the
cameras, the plans, both action streams and the outcome. Skips without the ``rerun`` extra."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from emcot.cli.main import main
from emcot.eval.records import EpisodeRecord

pytest.importorskip("rerun", reason="needs the rerun extra: pip install 'emcot[rerun]'")


def rrd(*args: str) -> str:
    command = [sys.executable, "-m", "rerun", "rrd", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def test_an_episode_becomes_a_rerun_recording_with_every_stream(recorded, tmp_path, capsys):
    episode, _ = recorded
    record = EpisodeRecord.load(episode)
    path = tmp_path / "episode.rrd"
    assert main(["view", str(episode), "--out", str(tmp_path / "e.html"), "--rerun", str(path)]) == 0
    assert f"rerun recording: {path.resolve()}" in capsys.readouterr().out
    rrd("verify", str(path))
    listing = rrd("print", "-v", str(path))
    entities = {"/camera/head", "/plan/reasoning", "/plan/subgoal", "/plan/reached", "/plan/observation"}
    entities |= {f"/action/{kind}/{d}" for kind in ("executed", "predicted") for d in range(4)}
    entities |= {"/reward", "/success", "/latency_ms", "/plan/rule"}
    for entity in entities:
        assert f" - {entity} - " in listing, entity
    assert rows(listing, "/camera/head") == len(record.frames)
    assert rows(listing, "/plan/reasoning") == len(record.plans) == 3
    assert rows(listing, "/action/executed/0") == record.steps
    assert rows(listing, "/latency_ms") == len(record.policy_steps)


def rows(listing: str, entity: str) -> int:
    """Rows logged to ``entity``, summed over its chunks (``Chunk(…) with N rows (…) - /entity - …``)."""
    found = re.findall(rf"with (\d+) rows? \([^)]*\) - {re.escape(entity)} - ", listing)
    return sum(int(n) for n in found)
