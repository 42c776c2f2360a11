"""Fitting camera keypoints: the target columns are read with the object one frame behind, a short
fit localises a square far better than the mean, a resumed fit equals an uninterrupted one, and a
fitted folder attaches to a policy without changing its outputs (or refuses another width)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from emcot.experts.keypoints import CameraKeypoints, KeypointConfig
from emcot.synthetic.world import build_synthetic_policy, synthetic_samples
from emcot.training.annotation.sim_rules import (
    GOAL_COLUMN,
    GRIPPER_COLUMN,
    OBJECT_COLUMN,
    SIM_INFO_KEYS,
    SIM_PREFIX,
)
from emcot.training.data.lerobot_writer import EpisodeData, WriterConfig, write_lerobot_dataset
from emcot.training.keypoints import (
    KeypointTrainConfig,
    concat_frames,
    fit_keypoints,
    keypoint_frames,
    localisation_errors,
    position_errors,
    save_keypoints,
    split_episodes,
    with_target_statistics,
)
from emcot.training.policy_files import with_keypoints

T, SIDE = 6, 32


def _episode(rng: np.random.Generator) -> EpisodeData:
    """A white 4 px square sliding right on black; its position in metres is pixels / 100."""
    start = rng.integers(2, 20, size=2)
    xs = start[0] + np.arange(T)
    frames = np.zeros((T, SIDE, SIDE, 3), np.uint8)
    for t, x in enumerate(xs):
        frames[t, start[1] : start[1] + 4, x : x + 4] = 255
    # Recorded after each action: row t is where the square is in frame t + 1.
    after = np.stack([xs + 1, np.full(T, start[1]), np.zeros(T)], 1) / 100
    goal = np.tile(rng.uniform(0, 0.3, 3), (T, 1))
    columns = {OBJECT_COLUMN: after, GOAL_COLUMN: goal, GRIPPER_COLUMN: np.zeros(T)}
    columns |= {SIM_PREFIX + key: np.zeros(T) for key in SIM_INFO_KEYS}
    zeros = np.zeros((T, 4), np.float32)
    return EpisodeData(
        "Push the square",
        zeros,
        zeros,
        {"head": frames},
        {k: np.asarray(v, np.float32) for k, v in columns.items()},
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("kp") / "data"
    return write_lerobot_dataset(
        root, [_episode(rng) for _ in range(20)], 80, WriterConfig(camera_storage="image")
    )


@pytest.fixture(scope="module")
def policy():
    return build_synthetic_policy(synthetic_samples(4, seed=0), seed=0)


def test_frames_pair_each_image_with_the_object_it_shows(dataset):
    episodes = keypoint_frames(dataset, "head")
    assert len(episodes) == 20 and len(episodes[0]) == T
    first = episodes[0]
    for t in range(1, T):
        row, col = np.argwhere(first.images[t, :, :, 0] == 255).min(0)
        assert first.targets[t, :2].tolist() == pytest.approx([col / 100, row / 100])
    # Nothing is recorded before the first action: frame 0 takes row 0 (exact when it does not move).
    assert first.targets[0].tolist() == first.targets[1].tolist()
    assert np.ptp(first.targets[:, 3:], axis=0).max() == 0  # the goal does not move
    train, val = split_episodes(episodes, 5)
    assert (len(train), len(val)) == (16 * T, 4 * T)
    assert len(concat_frames(episodes[:3])) == 3 * T
    with pytest.raises(ValueError, match="hold one out"):
        split_episodes(episodes[:3], 5)


def test_frames_need_the_position_columns(tmp_path):
    episode = _episode(np.random.default_rng(1))
    del episode.extras[GOAL_COLUMN]
    root = write_lerobot_dataset(tmp_path / "old", [episode], 80, WriterConfig(camera_storage="image"))
    with pytest.raises(ValueError, match=r"lacks the columns \['sim.goal_position'\]"):
        keypoint_frames(root, "head")


def _module(train, hidden):
    torch.manual_seed(0)
    config = with_target_statistics(
        KeypointConfig(num_keypoints=8, channels=16, head_hidden=64), train.targets
    )
    return CameraKeypoints(config, hidden)


def test_a_short_fit_localises_far_better_than_the_mean(dataset, policy, tmp_path):
    train, val = split_episodes(keypoint_frames(dataset, "head"), 5)
    module = _module(train, policy.model.config.hidden_size)
    config = KeypointTrainConfig(
        steps=300, batch_size=32, lr=3e-3, warmup_steps=20, eval_every=300, checkpoint_every=300
    )
    result = fit_keypoints(
        module, policy.processor.vision, train, val, config, out_dir=tmp_path, progress=False
    )
    assert result.finished and result.step == 300
    mean_cm = np.linalg.norm((val.targets - train.targets.mean(0))[:, :3], axis=1).mean() * 100
    errors = localisation_errors(module, policy.processor.vision, val)
    assert position_errors(train.targets.mean(0), val)["object_cm"] == pytest.approx(mean_cm, rel=1e-5)
    assert errors["object_cm"] < 0.35 * mean_cm, (errors, mean_cm)
    assert set(errors["per_task"]) == {"Push the square"}


def test_a_resumed_fit_equals_an_uninterrupted_one(dataset, policy, tmp_path):
    train, val = split_episodes(keypoint_frames(dataset, "head"), 5)
    config = KeypointTrainConfig(steps=6, batch_size=8, warmup_steps=2, eval_every=3, checkpoint_every=3)
    hidden, vision = policy.model.config.hidden_size, policy.processor.vision
    straight = _module(train, hidden)
    fit_keypoints(straight, vision, train, val, config, out_dir=tmp_path / "a", progress=False)
    resumed = _module(train, hidden)
    assert not fit_keypoints(
        resumed, vision, train, val, config, out_dir=tmp_path / "b", progress=False, stop_after=3
    ).finished
    again = _module(train, hidden)
    result = fit_keypoints(again, vision, train, val, config, out_dir=tmp_path / "b", progress=False)
    assert result.resumed_from == 3 and result.finished
    for (name, a), b in zip(straight.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    other = dataclasses.replace(config, lr=1e-4)
    with pytest.raises(ValueError, match="other settings or data"):
        fit_keypoints(
            _module(train, hidden), vision, train, val, other, out_dir=tmp_path / "b", progress=False
        )


def test_attaching_fitted_keypoints_keeps_the_policy_outputs(dataset, policy, tmp_path):
    train, _ = split_episodes(keypoint_frames(dataset, "head"), 5)
    folder = save_keypoints(_module(train, policy.model.config.hidden_size), tmp_path / "kp")
    attached = with_keypoints(policy, folder)
    assert attached.model.keypoints is not None and attached.model.config.keypoints.target_mean
    sample = synthetic_samples(1, seed=3)[0]
    a = policy.generate_trace(sample.observation, sample.instruction, mode="reactive", seed=0).actions
    b = attached.generate_trace(sample.observation, sample.instruction, mode="reactive", seed=0).actions
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="already has camera keypoints"):
        with_keypoints(attached, folder)
    narrow = save_keypoints(_module(train, 8), tmp_path / "narrow")
    with pytest.raises(ValueError, match="embeds into width 8"):
        with_keypoints(policy, narrow)


def test_lr_scale_gives_a_module_its_own_learning_rate():
    from emcot.training.finetune import scaled_param_groups
    from emcot.training.recipes import OptimConfig

    model = build_synthetic_policy(
        synthetic_samples(2, seed=0), keypoints=KeypointConfig(num_keypoints=4, channels=16)
    ).model
    optim = OptimConfig(lr=1e-3, lr_scale={"keypoints": 20})
    plain, scaled = scaled_param_groups(model, optim.lr, optim.lr_scale)
    assert scaled["lr"] == pytest.approx(2e-2) and plain["lr"] == 1e-3
    assert {id(p) for p in scaled["params"]} == {id(p) for p in model.keypoints.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(plain["params"]) + len(scaled["params"]) == len(trainable)
    with pytest.raises(ValueError, match=r"optim.lr_scale names \['keypoint'\], which hold no trainable"):
        scaled_param_groups(model, 1e-3, {"keypoint": 2.0})
    with pytest.raises(ValueError, match="optim.lr_scale.keypoints"):
        OptimConfig(lr_scale={"keypoints": -1.0})


def test_a_fresh_read_out_can_warm_up_alone_on_the_policys_own_robot():
    from emcot.training.finetune import FinetuneConfig, adapt_policy, set_trainable

    policy = build_synthetic_policy(
        synthetic_samples(2, seed=0), keypoints=KeypointConfig(num_keypoints=4, channels=16)
    )
    robot, stats = policy.processor.settings.robot, policy.processor.norm_stats.to_dict()
    config = FinetuneConfig(robot=None, train_only=("keypoints",))
    adaptation = adapt_policy(policy, config, synthetic_samples(2, seed=5))
    assert policy.processor.norm_stats.to_dict() == stats and adaptation.robot == robot
    counts = set_trainable(policy.model, config)
    assert list(counts) == ["keypoints"]
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable == {"keypoints." + n for n, _ in policy.model.keypoints.named_parameters()}


# The square's image point from its position in metres: its centre is 2 px right of and below
# (100 x, 100 y), and the keypoints' coordinates run from −1 to 1 across the 32 px frame.
SQUARE_PROJECTION = (6.25, 0, 0, 4 / SIDE - 1, 0, 6.25, 0, 4 / SIDE - 1, 0, 0, 0, 1)


def test_image_points_project_the_square_onto_its_pixels(dataset):
    from emcot.training.keypoints import image_points

    frames = keypoint_frames(dataset, "head")[0]
    points = image_points(torch.from_numpy(frames.targets), torch.tensor(SQUARE_PROJECTION).reshape(3, 4))
    assert points.shape == (T, 2, 2)
    for t in range(1, T):  # frame 0 takes row 0, one pixel ahead (see the first test)
        row, col = np.argwhere(frames.images[t, :, :, 0] == 255).mean(0) + 0.5  # pixel centres
        assert points[t, 0].tolist() == pytest.approx([col / SIDE * 2 - 1, row / SIDE * 2 - 1], abs=1e-5)
    with pytest.raises(ValueError, match="12 values"):
        KeypointTrainConfig(projection=(1.0, 2.0))


def test_point_supervision_pins_the_first_keypoint_to_the_object(dataset, policy, tmp_path):
    from emcot.training.keypoints import image_points, normalised_pixels

    train, val = split_episodes(keypoint_frames(dataset, "head"), 5)
    projection = torch.tensor(SQUARE_PROJECTION).reshape(3, 4)
    wanted = image_points(torch.from_numpy(val.targets), projection)[:, 0]
    pixels = normalised_pixels(policy.processor.vision, val.images)
    off_px = {}
    for name, weight in (("positions only", 0.0), ("with points", 1.0)):
        module = _module(train, policy.model.config.hidden_size)
        config = KeypointTrainConfig(
            steps=300, batch_size=32, lr=3e-3, warmup_steps=20, eval_every=300, checkpoint_every=300,
            projection=SQUARE_PROJECTION if weight else (), point_weight=weight,
        )  # fmt: skip
        fit_keypoints(
            module, policy.processor.vision, train, val, config, out_dir=tmp_path / name, progress=False
        )
        with torch.no_grad():
            first = module.locate(pixels).points[:, 0]
        off_px[name] = float((first - wanted).norm(dim=-1).mean() * SIDE / 2)
    assert off_px["with points"] < 1.5 and off_px["positions only"] > 2 * off_px["with points"], off_px
