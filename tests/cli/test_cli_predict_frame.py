"""`emcot predict-frame`: image files and a prompt in, the predicted frame written as a PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emcot.cli.main import main
from emcot.policy.policy import EmCoTPolicy
from emcot.synthetic.world import synthetic_samples

PROMPT = "Imagine the next scene: push the red block to the left."


def test_predict_frame_writes_the_policy_prediction(tmp_path, capsys):
    first, second = (s.observation.images["head"] for s in synthetic_samples(2, seed=6))
    paths = []
    for i, frame in enumerate((first, second)):
        paths += ["--image", str(tmp_path / f"f{i}.png")]
        Image.fromarray(frame).save(tmp_path / f"f{i}.png")
    out = tmp_path / "pred" / "next.png"
    base = [
        "predict-frame",
        "--policy",
        "synthetic",
        *paths,
        "--prompt",
        PROMPT,
        "--seed",
        "3",
        "--steps",
        "4",
    ]
    assert main([*base, "--out", str(out)]) == 0
    assert "saved to" in capsys.readouterr().out
    written = np.asarray(Image.open(out))
    expected = EmCoTPolicy.synthetic().predict_frame([first, second], PROMPT, seed=3, steps=4)
    assert np.array_equal(written, np.asarray(expected))

    assert main([*base, "--out", str(tmp_path / "plain.png"), "--no-vae-context"]) == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "plain.png")), written)


def test_predict_frame_reports_errors(tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert (
        main(
            [
                "predict-frame",
                "--policy",
                "synthetic",
                "--image",
                str(tmp_path / "missing.png"),
                "--prompt",
                "go",
                "--out",
                out,
            ]
        )
        == 1
    )
    assert "no image file" in capsys.readouterr().err
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "f.png")
    frame = ["--image", str(tmp_path / "f.png")]
    assert main(["predict-frame", "--policy", "synthetic", *frame, "--prompt", " ", "--out", out]) == 1
    assert "non-empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a usage error: refused before the model loads
        main(
            ["predict-frame", "--policy", "synthetic", *frame, "--prompt", "go", "--out", out, "--steps", "0"]
        )
    assert exit_info.value.code == 2 and "argument --steps" in capsys.readouterr().err
