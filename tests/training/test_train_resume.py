"""Checkpoints are atomic and complete; a killed run resumes to the same losses as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from emcot.synthetic.world import build_synthetic_policy, synthetic_samples
from emcot.training.recipes import RECIPE_DIR, load_recipe
from emcot.training.trainer import train

STEPS = 16


def losses(folder: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def command(recipe_file: Path, out: Path, init: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "emcot.cli.train", str(recipe_file), "--output-dir", str(out)]
    return cmd + ["--init", str(init), "--no-progress", *extra]


# Every run is its own process with the same settings, so float reductions agree bit for bit.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    init = root / "init"
    build_synthetic_policy(synthetic_samples(8, seed=0)).save_pretrained(init)
    data = yaml.safe_load((RECIPE_DIR / "stage1-tiny.yaml").read_text())
    data["data"]["datasets"].append({"kind": "synthetic_trace", "weight": 1.0, "num_samples": 16, "seed": 4})
    data["data"]["packing"] = {"expected_tokens": 600, "max_tokens": 900, "packs_per_step": 2}
    data["train"].update(total_steps=STEPS, save_every=2, keep_last=2, eval_every=4, progress=False)
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        command(recipe_file, root / "reference", init), env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, init, recipe_file, root / "reference"


def test_killed_run_resumes_to_identical_losses(setup):
    root, init, recipe_file, reference = setup
    out = root / "killed"
    proc = subprocess.Popen(
        command(recipe_file, out, init),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=ENV,
    )
    deadline = time.time() + 240
    while not (out / "checkpoint-6").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert done and max(done) < STEPS and not (out / "final").exists()
    resumed = subprocess.run(
        command(recipe_file, out, init, "--resume"), env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = losses(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert losses(out) == expected
    assert "val/loss" in json.loads((out / "metrics.jsonl").read_text().splitlines()[3])
    for name in ("final/model.safetensors", "final-ema/model.safetensors"):
        a, b = load_file(out / name), load_file(reference / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_contents_and_retention(setup):
    _, _, _, out = setup
    kept = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert kept == [f"checkpoint-{STEPS - 2}", f"checkpoint-{STEPS}"]
    assert not list(out.glob(".checkpoint-*"))
    ckpt = out / f"checkpoint-{STEPS}"
    names = {p.name for p in ckpt.iterdir()}
    assert {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.pt",
        "scheduler.json",
        "trainer_state.json",
    } <= names
    assert {"rng-0.safetensors", "rng-0.json"} <= names
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["data"]["position"] > 0
    optimizer = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert tuple(optimizer["param_groups"][0]["betas"]) == (0.9, 0.95) and optimizer["state"]


def test_refuses_to_overwrite_and_reports_unknown_recipes(setup, tmp_path, capsys):
    root, init, recipe_file, reference = setup
    from emcot.cli.train import main

    with pytest.raises(ValueError, match="--resume"):
        train(load_recipe(recipe_file), reference, init=str(init))
    assert main(["no-such-recipe", "--output-dir", str(tmp_path / "x")]) == 1
    assert "shipped recipes" in capsys.readouterr().err
