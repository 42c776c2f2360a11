"""`--resume` skips a damaged newest checkpoint for the previous good one, and survives a torn metrics line."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from emcot.training.trainer import train

_spec = importlib.util.spec_from_file_location("tiny_runs", Path(__file__).with_name("tiny_runs.py"))
tiny_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_runs)

RECIPE = tiny_runs.tiny_recipe(total_steps=4, save_every=2, keep_last=2)


def losses(folder: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def cut(path: Path) -> None:
    """Keep the first half of a file, as a full disk or a killed copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "model.safetensors missing": lambda c: (c / "model.safetensors").unlink(),
    "model.safetensors truncated": lambda c: cut(c / "model.safetensors"),
    "optimizer.pt truncated": lambda c: cut(c / "optimizer.pt"),
    "scheduler.json truncated": lambda c: cut(c / "scheduler.json"),
    "trainer_state.json missing": lambda c: (c / "trainer_state.json").unlink(),
    "trainer_state.json truncated": lambda c: cut(c / "trainer_state.json"),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fallback") / "reference"
    train(RECIPE, out)
    return out


def interrupted_copy(reference: Path, out: Path) -> Path:
    """The reference run as if it had been killed after writing checkpoint-4 but before exporting."""
    shutil.copytree(reference, out)
    shutil.rmtree(out / "final")
    return out


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_falls_back_to_the_previous_good_checkpoint(reference, tmp_path, damage):
    out = interrupted_copy(reference, tmp_path / "run")
    DAMAGE[damage](out / "checkpoint-4")
    file = damage.split()[0]
    with pytest.warns(
        UserWarning,
        match=f"skipping damaged checkpoints checkpoint-4 \\(.*{file}.*resuming from checkpoint-2",
    ):
        result = train(RECIPE, out, resume=True)
    assert result.step == 4 and (out / "final" / "model.safetensors").is_file()
    assert losses(out) == pytest.approx(losses(reference), rel=1e-6)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_resume_without_any_good_checkpoint_names_them_all(reference, tmp_path):
    out = interrupted_copy(reference, tmp_path / "run")
    cut(out / "checkpoint-4" / "model.safetensors")
    (out / "checkpoint-2" / "optimizer.pt").unlink()
    with pytest.raises(
        ValueError,
        match="no checkpoint in .* can be resumed from: checkpoint-4 .*model.safetensors.*; checkpoint-2 .*optimizer.pt",
    ):
        train(RECIPE, out, resume=True)


def test_a_torn_last_metrics_line_does_not_block_resume(reference, tmp_path):
    out = interrupted_copy(reference, tmp_path / "run")
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 1.2')
    train(RECIPE, out, resume=True)
    assert losses(out) == losses(reference)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, '{"step": 2, "lo')
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    shutil.rmtree(out / "final")
    with pytest.raises(ValueError, match="metrics.jsonl line 2 is not valid JSON"):
        train(RECIPE, out, resume=True)
