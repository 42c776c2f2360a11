"""The emcot command line: demo, info, generate and error reporting."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from emcot.cli.main import main


def test_demo_writes_a_full_trace(tmp_path, capsys):
    assert main(["demo", "--policy", "synthetic", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "reasoning" in out and "timings" in out
    trace = json.loads((tmp_path / "demo" / "trace.json").read_text())
    assert trace["mode"] == "full" and len(trace["actions"]) == 8 and len(trace["actions"][0]) == 4
    assert trace["reasoning"].startswith("The ")
    assert Image.open(tmp_path / "demo" / "subgoal.png").size == (32, 32)


def test_info_on_preset_and_folder(tmp_path, capsys):
    assert main(["info", "--preset", "halo-4.5b"]) == 0
    out = capsys.readouterr().out
    assert "expert:und" in out and "vision" in out and "total" in out
    total = next(line for line in out.splitlines() if line.strip().startswith("total"))
    assert "4.6" in total and "B" in total
    from emcot.policy.policy import EmCoTPolicy

    EmCoTPolicy.synthetic().save_pretrained(tmp_path / "p")
    assert main(["info", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "synthetic.action: dim 4" in out and "float32" in out and "card:" not in out
    assert main(["info", "default"]) == 0  # a bundled name; float16 on disk, float32 loaded
    out = capsys.readouterr().out
    assert "card: metaworld, corner2 at 128 px, tasks reach-v3" in out and "dtype: float32" in out


def test_generate_from_image_files(tmp_path, capsys):
    from emcot.synthetic.world import synthetic_samples

    sample = synthetic_samples(1, seed=4)[0]
    Image.fromarray(sample.observation.images["head"]).save(tmp_path / "head.png")
    state = ",".join(str(v) for v in sample.observation.state)
    code = main(
        [
            "generate",
            "--policy",
            "synthetic",
            "--image",
            f"head={tmp_path / 'head.png'}",
            "--state",
            state,
            "--instruction",
            sample.instruction,
            "--mode",
            "reason",
            "--out",
            str(tmp_path / "g"),
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "g" / "trace.json").read_text())["mode"] == "reason"


def test_errors_are_reported_not_raised(tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert main(["generate", "--policy", "synthetic", "--image", f"wrist={img}", "--instruction", "go"]) == 1
    assert "unknown ['wrist']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["info"])


def test_default_policy_runs_on_its_example_observation():
    from emcot.policy.policy import EmCoTPolicy

    policy = EmCoTPolicy.synthetic()
    obs = policy.example_observation()
    assert set(obs.images) == set(policy.cameras) and obs.state.shape == (4,)
    a = policy.generate_trace(obs, "push the red block to the left", seed=1)
    b = policy.generate_trace(obs, "push the red block to the left", seed=1)
    assert a.actions.shape == (8, 4) and a.subgoal is not None and a.reasoning
    assert a.reasoning == b.reasoning and np.array_equal(a.actions, b.actions)


def test_convert_halo_is_wired(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "halo", "--help"])
    assert exit_info.value.code == 0 and "--base" in capsys.readouterr().out
    assert main(["convert", "halo", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1


def test_train_is_wired(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0 and "--resume" in capsys.readouterr().out
    assert main(["train", "no-such-recipe", "--max-steps", "1"]) == 1
