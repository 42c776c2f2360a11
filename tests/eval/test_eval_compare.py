"""``emcot compare``: result folders of several evaluations as one table."""

from __future__ import annotations

import argparse
import json

import pytest

from emcot.eval.compare import RunSpec, compare_markdown, load_run
from emcot.eval.envs.metaworld_tasks import DIFFICULTY, difficulty_of
from emcot.eval.metrics import compute_metrics, metrics_from_dict
from emcot.eval.records import EpisodeSummary

PROTOCOL = {"benchmark": "metaworld", "seed": 1000, "max_steps": 500, "resolution": 128,
            "stop_on_success": True, "camera": {"name": "corner2"}}  # fmt: skip


def _summaries(mode, outcomes, step_s=0.5):
    rows = []
    for task, successes in outcomes.items():
        for episode, ok in enumerate(successes):
            rows.append(EpisodeSummary(task, mode, episode, 1000 + episode, ok, 100, 10, 2, step_s))
    return rows


def _write_run(folder, summaries, **protocol):
    metrics = compute_metrics(summaries, difficulty_of, bucket_order=DIFFICULTY)
    folder.mkdir(parents=True)
    payload = {**metrics.to_dict(), "protocol": {**PROTOCOL, **protocol}}
    (folder / "results.json").write_text(json.dumps(payload))
    return metrics


def test_metrics_survive_results_json():
    metrics = compute_metrics(_summaries("full", {"reach-v3": [True, False]}), difficulty_of)
    assert metrics_from_dict(json.loads(json.dumps(metrics.to_dict()))) == metrics


def test_runs_side_by_side_with_labels_modes_and_protocol_differences(tmp_path):
    _write_run(tmp_path / "emcot", _summaries("full", {"reach-v3": [True, True], "pick-place-v3": [False, True]})
               + _summaries("reactive", {"reach-v3": [True, False], "pick-place-v3": [False, False]}, 0.05),
               policy="mine", replan="every_k=1")  # fmt: skip
    _write_run(tmp_path / "expert", _summaries("expert", {"reach-v3": [True, True]}), policy="expert")
    runs = [
        load_run(RunSpec.parse(f"{tmp_path / 'emcot'}=em")),
        load_run(RunSpec.parse(str(tmp_path / "expert"))),
    ]
    text = compare_markdown(runs)
    header = text.splitlines()[0]
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "success %",
        "em/full",
        "em/reactive",
        "expert",
    ]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.splitlines()
        if line.startswith("| ")
    }
    assert rows["reach-v3"] == ["100.0", "50.0", "100.0"]
    assert rows["pick-place-v3"] == ["50.0", "0.0", "—"]  # the expert run has no pick-place
    assert rows["**episode mean**"] == ["75.0", "25.0", "100.0"]
    # Control rate: 200 env steps over 2 × 0.5 s (full) vs 2 × 0.05 s (reactive).
    assert rows["em/full"][-1] == "200.0" and rows["em/reactive"][-1] == "2000.0"
    assert "- em: policy=mine, replan=every_k=1" in text and "- expert: policy=expert" in text
    shared = next(line for line in text.splitlines() if line.startswith("Protocol (all runs): "))
    assert "seed=1000" in shared and "policy=" not in shared


def test_incomparable_or_ambiguous_runs_are_refused(tmp_path):
    _write_run(tmp_path / "a", _summaries("full", {"reach-v3": [True]}))
    _write_run(tmp_path / "b", _summaries("full", {"reach-v3": [True]}), seed=2000)
    _write_run(tmp_path / "c", _summaries("full", {"reach-v3": [False]}))

    def load(name, label=None):
        return load_run(RunSpec.parse(str(tmp_path / name) + (f"={label}" if label else "")))

    with pytest.raises(ValueError, match=r"measured differently \(\['seed'\]\)"):
        compare_markdown([load("a"), load("b")])
    with pytest.raises(ValueError, match="give the runs distinct labels"):
        compare_markdown([load("a", "x"), load("c", "x")])
    with pytest.raises(ValueError, match="has no results.json; run `emcot eval`"):
        load_run(RunSpec.parse(str(tmp_path / "missing")))
    for bad in ("", "=label", "folder="):
        with pytest.raises(ValueError, match="FOLDER or FOLDER=LABEL"):
            RunSpec.parse(bad)


def test_the_command_line_prints_and_writes(tmp_path, capsys):
    from emcot.cli.compare import add_compare_arguments, run_compare

    _write_run(tmp_path / "a", _summaries("full", {"reach-v3": [True]}))
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    args = parser.parse_args([f"{tmp_path / 'a'}=mine", "--out", str(tmp_path / "t" / "table.md")])
    assert run_compare(args) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split("|")[2].strip() == "mine"
    assert (tmp_path / "t" / "table.md").read_text() == printed
