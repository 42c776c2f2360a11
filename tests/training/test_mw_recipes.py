"""The Meta-World recipes: a fresh policy fits its dataset, and stage 1 → stage 2 / reactive each train a step."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from emcot.experts.keypoints import CameraKeypoints, KeypointConfig
from emcot.policy.policy import EmCoTPolicy
from emcot.training.data.lerobot import LeRobotDataset
from emcot.training.data.sources import build_source, data_kinds
from emcot.training.keypoints import save_keypoints
from emcot.training.packing import PackingConfig
from emcot.training.policy_files import build_initial_policy
from emcot.training.recipes import Recipe, expand_variables, load_recipe
from emcot.training.trainer import train
from emcot.types import SampleKind

_spec = importlib.util.spec_from_file_location(
    "demo_vqa_data", Path(__file__).parent / "data" / "test_demo_vqa.py"
)
assert _spec is not None and _spec.loader is not None
demo_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_data)

RECIPES = (
    "mw-stage1-small",
    "mw-stage2-small",
    "mw-reactive-small",
    "mw-recovery-small",
    "mw-stage2-more-small",
    "mw-stage2-aim-small",
    "mw-stage2-keypoints-small",
    "mw-keypoints-warmup-small",
)


def tiny(recipe: Recipe) -> Recipe:
    """``recipe`` at the tiny preset with one small pack and one step, checkpointed."""
    model = recipe.model
    if model.init == "fresh":
        model = dataclasses.replace(model, preset="tiny", vocab_size=400)
    data = dataclasses.replace(recipe.data, packing=PackingConfig(600, 1200, 1))
    run = dataclasses.replace(recipe.train, total_steps=1, save_every=1, progress=False, ema_decay=None)
    return dataclasses.replace(recipe, model=model, data=data, train=run)


@pytest.fixture
def mw_data(tmp_path, monkeypatch):
    root, sidecar = demo_data.mw_like_dataset(tmp_path / "mw-small")
    monkeypatch.setenv("EMCOT_MW_DATA", str(root))
    monkeypatch.delenv("EMCOT_MW_CODEC", raising=False)
    return root, sidecar


def test_a_fresh_policy_has_the_datasets_cameras_sizes_statistics_and_texts(mw_data):
    root, _ = mw_data
    recipe = tiny(load_recipe("mw-stage1-small"))
    assert recipe.model.dataset == str(root) and recipe.model.codec is None
    policy = build_initial_policy(recipe)
    dataset = LeRobotDataset(root)
    assert policy.processor.settings.cameras == ["corner2"] and policy.processor.settings.robot == "mw-small"
    assert (policy.config.action.action_dim, policy.config.action.state_dim) == (4, 4)
    entry = policy.processor.norm_stats.for_robot("mw-small")
    assert entry["action"] is not None and entry["state"] is not None
    np.testing.assert_allclose(entry["action"].mean, dataset.stats["action"]["mean"], rtol=1e-6)
    np.testing.assert_allclose(entry["state"].std, dataset.stats["observation.state"]["std"], rtol=1e-6)
    tokenizer = policy.processor.tokenizer
    assert len(tokenizer) == policy.config.vocab_size
    for task in dataset.tasks.values():
        assert tokenizer.decode(tokenizer.encode(task)) == task
    # The small preset itself: same layout, 4-d actions, 8-step chunks.
    small = build_initial_policy(
        dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, preset="small"))
    )
    assert small.config.action.horizon == 8 and small.config.experts["und"].hidden_size == 192


def test_fresh_init_errors_name_the_fix(mw_data, tmp_path):
    recipe = tiny(load_recipe("mw-stage1-small"))
    with pytest.raises(ValueError, match="did you mean 'small'"):
        dataclasses.replace(recipe.model, preset="smal")
    with pytest.raises(ValueError, match="not a codec folder"):
        build_initial_policy(
            dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, codec=str(tmp_path)))
        )
    synthetic = load_recipe("stage1-tiny")
    with pytest.raises(ValueError, match="needs a LeRobot dataset"):
        build_initial_policy(synthetic, init="fresh")
    with pytest.raises(ValueError, match=r"\$\{NOPE\} but it is not set"):
        expand_variables("path: ${NOPE}")
    assert expand_variables("path: ${NOPE:-data/x}") == "path: data/x"


def test_each_recipe_builds_its_sources_and_trains_a_step(mw_data, tmp_path, monkeypatch):
    assert "lerobot_vqa" in data_kinds()
    stage1 = tiny(load_recipe("mw-stage1-small"))
    first = train(stage1, tmp_path / "stage1")
    assert first.step == 1 and np.isfinite(first.losses).all()
    monkeypatch.setenv("EMCOT_MW_STAGE1", str(tmp_path / "stage1"))
    # The recovery and more-stage-2 recipes continue a finished policy (here: the stage-1 run).
    monkeypatch.setenv("EMCOT_MW_STAGE2", str(tmp_path / "stage1"))
    monkeypatch.setenv("EMCOT_MW_DART", str(mw_data[0]))
    hidden = EmCoTPolicy.from_pretrained(first.policy_dir).config.hidden_size
    keypoints = save_keypoints(
        CameraKeypoints(KeypointConfig(num_keypoints=4, channels=16), hidden), tmp_path / "kp"
    )
    monkeypatch.setenv("EMCOT_MW_KEYPOINTS", str(keypoints))
    for name in RECIPES[1:]:
        recipe = tiny(load_recipe(name))
        assert recipe.model.init == str(tmp_path / "stage1")
        horizon = EmCoTPolicy.from_pretrained(first.policy_dir).config.action.horizon
        for spec in recipe.data.datasets:
            sample = build_source(spec, recipe, horizon)[0]
            if spec.kind == "lerobot" and spec.options.get("mode") == "emcot":
                assert sample.reasoning and (sample.subgoal is None) == (spec.options.get("subgoal") is False)
            assert sample.kind == (SampleKind.VQA if spec.kind == "lerobot_vqa" else sample.kind)
        result = train(recipe, tmp_path / name)
        assert result.step == 1 and np.isfinite(result.losses).all()
        trained = EmCoTPolicy.from_pretrained(result.policy_dir)
        assert (trained.model.keypoints is not None) == ("keypoints" in name)
    # The two-phase attachment: the warm-up trains the projection alone, the joint phase continues it.
    warm = EmCoTPolicy.from_pretrained(tmp_path / "mw-keypoints-warmup-small" / "final").model.state_dict()
    start = EmCoTPolicy.from_pretrained(tmp_path / "mw-keypoints-warmup-small" / "initial").model.state_dict()
    moved = {k for k in warm if not torch.equal(warm[k], start[k])}
    assert moved and all(k.startswith("keypoints.embed.") for k in moved)
    monkeypatch.setenv("EMCOT_MW_KEYPOINT_WARMUP", str(tmp_path / "mw-keypoints-warmup-small" / "final"))
    joint = tiny(load_recipe("mw-stage2-keypoints-joint-small"))
    assert joint.model.keypoints is None and joint.finetune is None
    assert train(joint, tmp_path / "joint").step == 1
    joint_start = EmCoTPolicy.from_pretrained(tmp_path / "joint" / "initial").model.state_dict()
    assert all(torch.equal(joint_start[k], warm[k]) for k in warm)
    # The wandering variant: the joint phase exactly, plus action chunks of the wandering runs.
    monkeypatch.setenv("EMCOT_MW_WANDER", str(tmp_path / "wander-data"))
    wander, joint_full = (
        load_recipe("mw-stage2-keypoints-wander-small"),
        load_recipe("mw-stage2-keypoints-joint-small"),
    )
    extra = [d for d in wander.data.datasets if d not in joint_full.data.datasets]
    assert [(d.kind, d.path, d.options) for d in extra] == [
        ("lerobot", str(tmp_path / "wander-data"), {"mode": "action"})
    ]
    assert len(wander.data.datasets) == len(joint_full.data.datasets) + 1
    assert (wander.model, wander.optim, wander.train) == (
        joint_full.model,
        joint_full.optim,
        joint_full.train,
    )
    monkeypatch.setenv("EMCOT_MW_WANDER", str(mw_data[0]))
    assert train(tiny(load_recipe("mw-stage2-keypoints-wander-small")), tmp_path / "wander").step == 1
    reactive = load_recipe("mw-reactive-small")
    stage2 = load_recipe("mw-stage2-small")
    # Same compute: steps, token budget and optimizer; same dataset.
    assert (reactive.train.total_steps, reactive.data.packing, reactive.optim) == (
        stage2.train.total_steps,
        stage2.data.packing,
        stage2.optim,
    )
    assert {d.options.get("mode") for d in reactive.data.datasets} == {"action"}
    # Recovery: stage 2's kinds of samples, from both datasets, at a lower peak learning rate.
    recovery = load_recipe("mw-recovery-small")
    assert recovery.optim.lr < stage2.optim.lr
    assert {d.path for d in recovery.data.datasets if d.kind == "lerobot"} == {str(mw_data[0])}

    def kinds(recipe: Recipe) -> set:
        return {(d.kind, d.options.get("mode"), d.options.get("subgoal")) for d in recipe.data.datasets}

    assert kinds(recovery) == kinds(stage2)
    # More stage 2: exactly stage 2's data mix, continued at a lower peak learning rate.
    more = load_recipe("mw-stage2-more-small")
    assert more.data == stage2.data and more.optim.lr < stage2.optim.lr
    # Aim points: stage 2's data mix again, on the re-annotated traces, at more-stage-2's learning rate.
    aim = load_recipe("mw-stage2-aim-small")
    assert aim.data == stage2.data and aim.optim.lr == more.optim.lr
    assert aim.train.total_steps < stage2.train.total_steps
    # Keypoints: more stage 2 (data mix and learning rate) with the fitted keypoints attached.
    with_keypoints = load_recipe("mw-stage2-keypoints-small")
    assert with_keypoints.data == stage2.data and with_keypoints.optim.lr == more.optim.lr
    assert with_keypoints.optim.lr_scale == {"keypoints": 20.0}  # the fresh module learns faster
    assert with_keypoints.model.keypoints == str(keypoints)


def test_a_fresh_policy_takes_a_trained_codec_with_its_calibration(mw_data, tmp_path):
    import json

    import torch

    from emcot.tokenizers.vae import LatentCodec, VAEConfig

    config = VAEConfig.tiny(image_size=(32, 32)).replace(scaling_factor=2.5, shift_factor=0.25)
    torch.manual_seed(7)
    codec = LatentCodec.from_config(config)
    folder = tmp_path / "codec"
    codec.vae.save_pretrained(folder, safe_serialization=True)
    (folder / "vae_config.json").write_text(json.dumps(config.to_dict()))
    recipe = tiny(load_recipe("mw-stage1-small"))
    policy = build_initial_policy(
        dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, codec=str(folder)))
    )
    assert policy.config.vae == config
    loaded = policy.model.latent_codec
    assert loaded is not None
    for key, value in codec.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    # Without vae_config.json the codec takes the preset's subgoal geometry (the tiny preset: 32 px).
    (folder / "vae_config.json").unlink()
    policy = build_initial_policy(
        dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, codec=str(folder)))
    )
    assert policy.config.vae is not None and policy.config.vae.image_size == (32, 32)
    assert policy.config.vae.scaling_factor == 2.5
