"""Shipped recipes parse with the release's values; the CLI functions run the two stages; LoRA fine-tuning."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch
import yaml

from emcot.cli.train import add_train_arguments, run_train
from emcot.policy.policy import EmCoTPolicy
from emcot.training.policy_files import build_initial_policy
from emcot.training.recipes import RECIPE_DIR, Recipe, load_recipe, shipped_recipes
from emcot.training.trainer import Schedule, train

SHIPPED = {
    "stage1-tiny",
    "stage2-tiny",
    "finetune-tiny",
    "stage1-halo-4.5b",
    "stage2-halo-4.5b",
    "finetune-halo-4.5b",
}


def test_shipped_recipes_parse_with_the_release_values():
    assert SHIPPED <= set(shipped_recipes())
    for name in SHIPPED:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.optim.betas == (0.9, 0.95)
    s1, s2 = load_recipe("stage1-tiny"), load_recipe("stage2-tiny")
    assert (s1.loss.text_weight, s1.loss.subgoal_weight, s1.loss.action_weight) == (0.25, 0.5, 1.0)
    assert (s2.loss.text_weight, s2.loss.subgoal_weight, s2.loss.action_weight) == (1.0, 1.0, 1.0)
    assert {d.kind for d in s2.data.datasets} == {"synthetic_trace", "synthetic_vqa"}
    for name in ("stage1-halo-4.5b", "stage2-halo-4.5b", "finetune-halo-4.5b"):
        halo = load_recipe(name)
        assert halo.optim.lr == 5e-5 and halo.optim.warmup_steps == 500 and halo.optim.eps == 1e-15
        assert halo.train.ema_decay == 0.9999 and halo.optim.clip_grad_norm == 1.0
        assert 16_000 <= halo.data.packing.expected_tokens <= 24_000
        assert (halo.data.dropout.text, halo.data.dropout.vit, halo.data.dropout.vae) == (0.1, 0.3, 0.3)
    stage2 = load_recipe("stage2-halo-4.5b")
    weights = {d.kind: d.weight for d in stage2.data.datasets}
    assert weights == {"lerobot": 4.0, "vqa_json": 1.0}


def test_recipe_errors_name_the_fix(tmp_path):
    data = yaml.safe_load((RECIPE_DIR / "stage1-tiny.yaml").read_text())
    data["optim"]["learning_rate"] = 1.0
    with pytest.raises(ValueError, match="unknown keys \\['learning_rate'\\] in recipe section 'optim'"):
        Recipe.from_dict(data)
    with pytest.raises(ValueError, match="unknown data kind"):
        Recipe.from_dict({"name": "x", "data": {"datasets": [{"kind": "imagenet"}]}})
    with pytest.raises(ValueError, match="needs a path"):
        Recipe.from_dict({"name": "x", "data": {"datasets": [{"kind": "lerobot"}]}})
    with pytest.raises(ValueError, match="components.llm"):
        build_initial_policy(load_recipe("stage1-halo-4.5b"))
    with pytest.raises(ValueError, match="--init"):
        build_initial_policy(load_recipe("stage2-tiny"), init=str(tmp_path / "missing"))


def test_a_recipe_with_a_base_overrides_only_the_keys_it_names(tmp_path):
    (tmp_path / "parent.yaml").write_text("base: stage2-tiny\nname: parent\noptim: {lr: 1.0e-5}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nname: child\ntrain: {total_steps: 7}\n")
    stage2, child = load_recipe("stage2-tiny"), load_recipe(tmp_path / "child.yaml")
    assert child.name == "child" and child.optim.lr == 1.0e-5 and child.train.total_steps == 7
    assert child.optim == dataclasses.replace(stage2.optim, lr=1.0e-5)
    assert child.data == stage2.data and child.train == dataclasses.replace(stage2.train, total_steps=7)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\nname: loop\n")
    with pytest.raises(ValueError, match="loops back to itself"):
        load_recipe(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: no-such-recipe\nname: orphan\n")
    with pytest.raises(ValueError, match="neither a YAML file nor a shipped recipe"):
        load_recipe(tmp_path / "orphan.yaml")


def test_schedule_warms_up_then_decays():
    schedule = Schedule(warmup=4, total=14, kind="cosine", min_ratio=0.1)
    values = [schedule(s) for s in range(15)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0] and values[4] == 1.0
    assert values[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(values[4:], values[5:]))


def test_cli_runs_stage1_then_stage2_from_its_output(tmp_path, capsys):
    parser = add_train_arguments(argparse.ArgumentParser())
    first = parser.parse_args(
        ["stage1-tiny", "--max-steps", "2", "--output-dir", str(tmp_path / "s1"), "--no-progress"]
    )
    assert run_train(first) == 0
    assert "policy saved to" in capsys.readouterr().out
    second = parser.parse_args(
        [
            "stage2-tiny",
            "--max-steps",
            "2",
            "--output-dir",
            str(tmp_path / "s2"),
            "--init",
            str(tmp_path / "s1"),
        ]
    )
    assert run_train(second) == 0
    rows = [json.loads(line) for line in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "text", "subgoal", "action", "lr", "grad_norm", "tokens"} <= rows[-1].keys()
    policy = EmCoTPolicy.from_pretrained(tmp_path / "s2" / "final-ema")
    assert policy.config.loss.text_weight == 1.0
    assert (tmp_path / "s2" / "initial" / "config.json").is_file()
    # --init on a run folder starts from its averaged weights, the ones its evaluation uses.
    from safetensors.torch import load_file

    ema = load_file(tmp_path / "s1" / "final-ema" / "model.safetensors")
    raw = load_file(tmp_path / "s1" / "final" / "model.safetensors")
    started = load_file(tmp_path / "s2" / "initial" / "model.safetensors")
    key = next(k for k in ema if not torch.equal(ema[k], raw[k]))
    assert torch.equal(started[key], ema[key])


def test_lora_finetuning_saves_a_plain_policy(tmp_path):
    data = yaml.safe_load((RECIPE_DIR / "finetune-tiny.yaml").read_text())
    data["finetune"].pop("freeze")
    data["finetune"]["lora"] = {"experts": ["und", "gen"], "r": 4, "alpha": 8}
    data["train"].update(total_steps=3, save_every=3, progress=False)
    recipe = Recipe.from_dict(data)
    result = train(recipe, tmp_path / "lora")
    policy = EmCoTPolicy.from_pretrained(result.policy_dir)
    assert not any("lora" in k for k in policy.model.state_dict())
    sample_state = policy.example_observation()
    trace = policy.generate_trace(sample_state, "push the red block to the left", mode="reactive", seed=0)
    assert trace.actions.shape == (6, 6)


def test_a_trained_policy_takes_config_overrides_that_keep_its_weights(tmp_path):
    import dataclasses

    from emcot.synthetic.cue import build_cue_policy, cue_action_samples, cue_demos

    policy = build_cue_policy(cue_action_samples(cue_demos(2)), memory={"history_length": 4})
    policy.save_pretrained(tmp_path / "history")
    recipe = load_recipe("cue-topk-tiny")

    def started(**overrides):
        model = dataclasses.replace(recipe.model, init=str(tmp_path / "history"), overrides=overrides)
        return build_initial_policy(dataclasses.replace(recipe, model=model))

    topk = started(memory={"top_k": 8})
    assert (topk.model.config.memory.top_k, topk.model.config.memory.history_length) == (8, 4)
    mine = topk.model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in policy.model.state_dict().items())
    with pytest.raises(ValueError, match=r"change the weights of the starting policy .*memory.top_k"):
        started(memory={"state_aware": True})
    with pytest.raises(ValueError, match="'colour' is not a model config field"):
        started(colour="red")
    assert started().model.config.memory.top_k == 0  # no overrides: the policy as saved


def test_model_generation_sets_the_defaults_the_trained_policy_saves(tmp_path):
    data = yaml.safe_load((RECIPE_DIR / "stage1-tiny.yaml").read_text())
    data["model"]["generation"] = {"max_reasoning_tokens": 160, "mode": "reason"}
    data["train"].update(total_steps=1, save_every=1, progress=False)
    recipe = Recipe.from_dict(data)
    start = build_initial_policy(recipe)
    assert (start.generation.max_reasoning_tokens, start.generation.mode.value) == (160, "reason")
    saved = EmCoTPolicy.from_pretrained(train(recipe, tmp_path / "run").policy_dir)
    assert (saved.generation.max_reasoning_tokens, saved.generation.mode.value) == (160, "reason")
    # Without the section the starting point's own defaults stay.
    del data["model"]["generation"]
    assert build_initial_policy(Recipe.from_dict(data)).generation.max_reasoning_tokens == 96
    for bad, message in (
        ({"max_reasoning_tokens": 0}, "model.generation: .*max_reasoning_tokens"),
        ({"beams": 4}, r"model.generation: unknown generation options \['beams'\]"),
    ):
        data["model"]["generation"] = bad
        with pytest.raises(ValueError, match=message):
            build_initial_policy(Recipe.from_dict(data))
