"""Two CPU processes (torchrun, gloo DDP) train exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import pytest
import torch
import yaml
from safetensors.torch import load_file

from emcot.training.recipes import RECIPE_DIR, load_recipe
from emcot.training.synthetic import build_synthetic_policy, synthetic_samples
from emcot.training.trainer import train

STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not installed")
def test_two_processes_equal_one_process(tmp_path):
    init = tmp_path / "init"
    build_synthetic_policy(synthetic_samples(8, seed=0)).save_pretrained(init)
    data = yaml.safe_load((RECIPE_DIR / "stage2-tiny.yaml").read_text())
    data["data"]["datasets"].append({"kind": "synthetic_generation", "weight": 1.0, "num_samples": 16})
    data["data"]["packing"] = {"expected_tokens": 500, "max_tokens": 800, "packs_per_step": 4}
    data["train"].update(total_steps=STEPS, save_every=STEPS, eval_every=2, progress=False)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(data))

    cmd = [
        "torchrun",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ]
    cmd += ["-m", "emcot.training.cli_train", str(recipe_file), "--output-dir", str(tmp_path / "two")]
    cmd += ["--init", str(init), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "two" / "checkpoint-4" / "rng-1.safetensors").is_file()

    single = train(load_recipe(recipe_file), tmp_path / "one", init=str(init))
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in one] == [m["step"] for m in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two):
        assert a["tokens"] == b["tokens"]
        for key in ("loss", "text", "subgoal", "action", "grad_norm", "val/loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert single.losses == pytest.approx([m["loss"] for m in two], rel=1e-5)
    w1 = load_file(tmp_path / "one" / "final" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "final" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5)
