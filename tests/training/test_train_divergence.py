"""A diverging run stops with an error naming the step (or skips the step), and never writes NaN weights."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emcot.training.divergence import DivergenceError
from emcot.training.trainer import Trainer, train

_spec = importlib.util.spec_from_file_location("tiny_runs", Path(__file__).with_name("tiny_runs.py"))
tiny_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_runs)
recipe = tiny_runs.tiny_recipe


def test_a_huge_learning_rate_stops_the_run_naming_step_terms_and_grad_norm(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DivergenceError) as info:
        train(recipe(lr=1e6), out)
    message = str(info.value)
    assert "training diverged at step 3" in message
    assert "loss nan (text nan, subgoal nan, action nan), gradient norm nan" in message
    assert "Lower optim.lr" in message and "on_divergence: skip" in message
    assert not (out / "final").exists()
    # The checkpoint before the divergence was written and holds finite weights; none after it.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    weights = load_file(out / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_skip_mode_skips_the_update_and_counts_the_step(tmp_path):
    trainer = Trainer(recipe(on_divergence="skip"), tmp_path / "run")
    assert trainer.train_step()["skipped_steps"] == 0
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.weights["action"] = math.nan  # one poisoned step
    with pytest.warns(UserWarning, match="skipping step 2: loss nan"):
        metrics = trainer.train_step()
    assert math.isnan(metrics["loss"]) and metrics["skipped_steps"] == 1 and trainer.step == 2
    assert all(torch.equal(before[k], v) for k, v in trainer.model.named_parameters())
    assert all(p.grad is None for p in trainer.model.parameters())
    trainer.weights["action"] = 1.0
    metrics = trainer.train_step()
    assert math.isfinite(metrics["loss"]) and metrics["skipped_steps"] == 1
    assert not all(torch.equal(before[k], v) for k, v in trainer.model.named_parameters())


def test_skip_mode_still_stops_after_consecutive_bad_steps(tmp_path):
    bad = pytest.raises(DivergenceError, match="3 consecutive steps up to step 5 .*max_skipped_steps")
    with bad, pytest.warns(UserWarning, match="skipping step"):
        train(recipe(lr=1e6, on_divergence="skip", max_skipped_steps=3), tmp_path / "run")


def test_nonfinite_weights_are_never_written(tmp_path):
    trainer = Trainer(recipe(), tmp_path / "run")
    with torch.no_grad():
        next(trainer.model.parameters()).view(-1)[0] = math.inf
    with pytest.raises(DivergenceError, match="not writing .*checkpoint-0: .*NaN/inf .*weights"):
        trainer.checkpoint()
    with pytest.raises(DivergenceError, match="not writing .*final"):
        trainer.export()
    assert not list((tmp_path / "run").glob("*checkpoint-*")) and not (tmp_path / "run" / "final").exists()


def test_gradient_norm_is_logged_without_clipping(tmp_path):
    metrics = Trainer(recipe(clip=None), tmp_path / "run").train_step()
    assert math.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
