"""Fitting camera keypoints (:mod:`emcot.experts.keypoints`) to simulator positions, and attaching
them to a policy.

The labels are privileged: a collected Meta-World dataset records the object's and the goal's
positions (``sim.object_position``, ``sim.goal_position``), which the keypoints learn to read from
the camera alone, so a policy that carries them needs only pixels at run time. The object column
is recorded *after* each action, so the object seen in frame t is row t − 1 (row 0 for frame 0).

``fit_keypoints`` checkpoints atomically like :func:`emcot.training.codec.fit_codec` and draws its
batches as a function of (seed, step), so a resumed run trains exactly as an uninterrupted one.
Errors are Euclidean distances in centimetres, per target group (object, goal) and per task.

With a camera projection (``KeypointTrainConfig.projection``: the ``[3, 4]`` matrix of
``MetaWorldEnv.image_projection``) the first keypoints are also taught *where in the frame* each
target group is: keypoint *i*'s softmax expectation regresses target *i*'s image point. Regressing
positions alone let the keypoints settle on whatever predicts them in a demo — the hand on its
way there, too — so that, driving the scripted expert, the estimates ran after the hand
(``bench/localised_expert.py``); a keypoint pinned to the object's pixels cannot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.optim import AdamW
from tqdm.auto import tqdm

from emcot.experts.keypoints import CameraKeypoints, KeypointConfig
from emcot.io_utils import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    Range,
    check_fields,
    check_value,
    read_json,
)
from emcot.tokenizers.vision_processing import VisionImageProcessor, unpatchify
from emcot.training.annotation.sim_rules import GOAL_COLUMN, OBJECT_COLUMN
from emcot.training.codec import epoch_batch_indices
from emcot.training.fit_run import FitRun, FitSchedule
from emcot.training.trainer import Schedule

KEYPOINT_CONFIG_FILE = "keypoint_config.json"
KEYPOINT_WEIGHTS_FILE = "keypoints.safetensors"
# The positions the keypoints regress, in this order (3 values each).
TARGET_COLUMNS = (OBJECT_COLUMN, GOAL_COLUMN)
TARGET_GROUPS = ("object", "goal")


@dataclass
class KeypointFrames:
    """Camera frames with their target positions: ``images`` uint8 ``[N, H, W, 3]``, ``targets``
    float32 ``[N, 6]`` (object xyz, goal xyz in metres), ``tasks`` the instruction of each frame."""

    images: np.ndarray
    targets: np.ndarray
    tasks: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def take(self, rows: np.ndarray) -> KeypointFrames:
        """The frames at ``rows``."""
        return KeypointFrames(self.images[rows], self.targets[rows], [self.tasks[i] for i in rows])


def keypoint_frames(
    root: str | Path, camera: str, *, stride: int = 1, progress: bool = True
) -> list[KeypointFrames]:
    """Every ``stride``-th frame of ``camera`` with its target positions, one entry per episode of a
    LeRobot dataset that has the target columns."""
    from emcot.training.data.lerobot import LeRobotDataset

    check_value("keypoint_frames stride", stride, int, AT_LEAST_ONE)
    dataset = LeRobotDataset(root)
    episodes = []
    for index in tqdm(dataset.episode_indices, desc="decode", leave=False, disable=not progress):
        episode = dataset.episode(index)
        columns = episode.columns("sim.")
        missing = [c for c in TARGET_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"{root} lacks the columns {missing}; collect it with this version of `emcot collect metaworld`"
            )
        objects = columns[OBJECT_COLUMN]
        seen_object = np.concatenate([objects[:1], objects[:-1]])  # row t − 1 is what frame t shows
        targets = np.concatenate([seen_object, columns[GOAL_COLUMN]], axis=1).astype(np.float32)
        rows = np.arange(0, len(targets), stride)
        images = episode.images(camera)[rows]
        episodes.append(KeypointFrames(images, targets[rows], [episode.instruction] * len(rows)))
    return episodes


def split_episodes(
    episodes: Sequence[KeypointFrames], val_every: int
) -> tuple[KeypointFrames, KeypointFrames]:
    """(train, validation): every ``val_every``-th episode of each task (counted per instruction) validates."""
    check_value("split_episodes val_every", val_every, int, Range(ge=2))
    parts: dict[bool, list[KeypointFrames]] = {False: [], True: []}
    seen: dict[str, int] = {}
    for episode in episodes:
        task = episode.tasks[0]
        seen[task] = seen.get(task, 0) + 1
        parts[seen[task] % val_every == 0].append(episode)
    if not parts[False] or not parts[True]:
        raise ValueError(f"need at least {val_every} episodes of some task to hold one out")
    return concat_frames(parts[False]), concat_frames(parts[True])


def concat_frames(parts: Sequence[KeypointFrames]) -> KeypointFrames:
    """The frames of ``parts`` back to back."""
    return KeypointFrames(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.targets for p in parts]),
        [t for p in parts for t in p.tasks],
    )


def normalised_pixels(processor: VisionImageProcessor, images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` → ``[N, 3, H', W']`` exactly as the policy's processor feeds its camera."""
    size = processor.target_size(images.shape[1], images.shape[2])
    if size == images.shape[1:3]:  # the common case, vectorised: no resize
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        return (pixels - processor.mean) / processor.std
    patch = processor.config.patch_size
    return torch.stack([unpatchify(*processor(image), patch) for image in images])


@dataclass(frozen=True)
class KeypointTrainConfig:
    """How :func:`fit_keypoints` trains: schedule, batch, checkpoint and evaluation cadence."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    eval_every: int = 250
    keep_last: int = 2
    val_frames: int = 1024
    projection: tuple[float, ...] = ()  # 12 values, the [3, 4] matrix row by row; () = positions only
    point_weight: float = 1.0

    def __post_init__(self) -> None:
        counts = ("steps", "batch_size", "checkpoint_every", "eval_every", "keep_last", "val_frames")
        bounds = {"lr": POSITIVE, "grad_clip": POSITIVE, "min_lr_ratio": UNIT_INTERVAL}
        bounds |= dict.fromkeys(counts, AT_LEAST_ONE)
        bounds |= dict.fromkeys(("warmup_steps", "weight_decay", "point_weight"), NON_NEGATIVE)
        check_fields(self, "KeypointTrainConfig", **bounds)
        object.__setattr__(self, "projection", tuple(float(v) for v in self.projection))
        if self.projection and len(self.projection) != 12:
            raise ValueError(
                f"KeypointTrainConfig.projection must be a [3, 4] matrix (12 values), got {len(self.projection)}"
            )


def image_points(targets: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Target positions ``[N, 3G]`` (metres) → their image points ``[N, G, 2]`` under ``projection``
    ``[3, 4]``, in the keypoints' [−1, 1] coordinates (outside that range: out of view)."""
    points = targets.reshape(len(targets), -1, 3)
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1) @ projection.T
    return homogeneous[..., :2] / homogeneous[..., 2:]


def with_target_statistics(config: KeypointConfig, targets: np.ndarray) -> KeypointConfig:
    """``config`` normalising its targets to zero mean and unit std on ``targets`` ``[N, targets]``."""
    if targets.ndim != 2 or targets.shape[1] != config.targets:
        raise ValueError(f"targets must be [N, {config.targets}], got {targets.shape}")
    std = np.maximum(targets.std(0), 1e-3)  # a constant coordinate (a fixed goal height) stays finite
    return replace(config, target_mean=tuple(targets.mean(0).tolist()), target_std=tuple(std.tolist()))


@torch.no_grad()
def localisation_errors(
    module: CameraKeypoints, processor: VisionImageProcessor, frames: KeypointFrames, batch_size: int = 128
) -> dict[str, Any]:
    """Mean Euclidean error (cm) of each target group, overall and per task, on ``frames``."""
    was_training = module.training
    module.eval()
    found = []
    for start in range(0, len(frames), batch_size):
        pixels = normalised_pixels(processor, frames.images[start : start + batch_size])
        found.append(module.denormalise(module.locate(pixels).positions).numpy())
    module.train(was_training)
    return position_errors(np.concatenate(found), frames)


def position_errors(predicted: np.ndarray, frames: KeypointFrames) -> dict[str, Any]:
    """Mean Euclidean error (cm) of ``predicted`` positions ``[N, targets]`` against ``frames``' targets,
    per target group, overall and per task (e.g. a constant prediction for a blind baseline)."""
    predicted = np.broadcast_to(predicted, frames.targets.shape).reshape(len(frames), -1, 3)
    distance = np.linalg.norm(predicted - frames.targets.reshape(len(frames), -1, 3), axis=2) * 100
    tasks = np.asarray(frames.tasks)
    out: dict[str, Any] = {f"{g}_cm": float(distance[:, i].mean()) for i, g in enumerate(TARGET_GROUPS)}
    out["per_task"] = {
        task: {f"{g}_cm": float(distance[tasks == task, i].mean()) for i, g in enumerate(TARGET_GROUPS)}
        for task in sorted(set(frames.tasks))
    }
    return out


@dataclass
class KeypointFitResult:
    """What :func:`fit_keypoints` did: the last step, whether the schedule finished, the records."""

    step: int
    finished: bool
    resumed_from: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class _KeypointRun(FitRun):
    """One keypoint run: the shared bookkeeping plus its training step and validation."""

    def __init__(
        self, module: CameraKeypoints, config: KeypointTrainConfig, out: Path, train: KeypointFrames
    ):
        self.config, self.train = config, train
        identity = {"train": asdict(config), "keypoints": module.config.to_dict(), "train_frames": len(train)}
        # The embedding into the state token is the policy's to train; here only the localiser.
        self.params = [p for n, p in module.named_parameters() if not n.startswith("embed.")]
        opt = AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        super().__init__(
            module,
            opt,
            out,
            identity,
            what="keypoint",
            lr_hint="KeypointTrainConfig.lr",
            keep_last=config.keep_last,
        )
        self.keypoints = module
        self.projection = torch.tensor(config.projection).reshape(3, 4) if config.projection else None
        groups = module.config.targets // 3
        if self.projection is not None and module.config.num_keypoints < groups:
            raise ValueError(
                f"point supervision needs a keypoint per target group ({groups}), got {module.config.num_keypoints}"
            )
        self.schedule = Schedule(config.warmup_steps, config.steps, "cosine", config.min_lr_ratio)

    def train_step(self, processor: VisionImageProcessor) -> float:
        """One AdamW step on the batch (seed, step) selects; returns its loss: the MSE of normalised
        targets, plus ``point_weight`` × the MSE of the first keypoints against the targets' image
        points (those in view) when a projection is set."""
        cfg = self.config
        self.set_lr(cfg.lr * self.schedule(self.step))
        picks = epoch_batch_indices(len(self.train), cfg.batch_size, cfg.seed, self.step)
        pixels = normalised_pixels(processor, self.train.images[picks])
        metres = torch.from_numpy(self.train.targets[picks])
        found = self.keypoints.locate(pixels)
        loss = (found.positions - self.keypoints.normalise(metres)).pow(2).mean()
        if self.projection is not None:
            wanted = image_points(metres, self.projection)
            in_view = (wanted.abs() <= 1).all(dim=-1, keepdim=True)
            error = (found.points[:, : wanted.shape[1]] - wanted).pow(2) * in_view
            loss = loss + cfg.point_weight * error.sum() / in_view.sum().clamp(min=1) / 2
        return self.update(loss, self.params, cfg.grad_clip)

    def evaluate(self, processor: VisionImageProcessor, val: KeypointFrames) -> dict[str, Any]:
        """Validation errors and the mean training loss since the last record, appended to metrics.jsonl."""
        errors = localisation_errors(self.keypoints, processor, val)
        return self.record({k: v for k, v in errors.items() if k != "per_task"})


def fit_keypoints(
    module: CameraKeypoints,
    processor: VisionImageProcessor,
    train: KeypointFrames,
    val: KeypointFrames,
    config: KeypointTrainConfig,
    *,
    out_dir: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
) -> KeypointFitResult:
    """Train ``module``'s localiser to regress ``train``'s targets, continuing from the newest good
    checkpoint in ``out_dir``; ``stop_after`` ends this call after that step (checkpointed)."""
    (out := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    val = val.take(np.linspace(0, len(val) - 1, min(config.val_frames, len(val))).round().astype(int))
    run = _KeypointRun(module, config, out, train)
    result = KeypointFitResult(0, False, resumed_from=run.resume())
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    schedule = FitSchedule(config.steps, end, config.eval_every, config.checkpoint_every)
    module.train()
    result.history += run.train_until(
        schedule,
        lambda: run.train_step(processor),
        lambda: run.evaluate(processor, val),
        desc="keypoints",
        progress=progress,
    )
    module.eval()
    result.step, result.finished = run.step, run.step >= config.steps
    return result


def save_keypoints(module: CameraKeypoints, folder: str | Path) -> Path:
    """``module``'s config and weights as a folder :func:`load_keypoints` / :func:`with_keypoints` read."""
    (folder := Path(folder)).mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
        str(folder / KEYPOINT_WEIGHTS_FILE),
    )
    (folder / KEYPOINT_CONFIG_FILE).write_text(json.dumps(module.config.to_dict(), indent=2))
    return folder


def load_keypoints(folder: str | Path, hidden_size: int) -> CameraKeypoints:
    """The keypoints saved in ``folder`` for a model of width ``hidden_size``."""
    folder = Path(folder)
    config = KeypointConfig.from_dict(read_json(folder / KEYPOINT_CONFIG_FILE, "keypoint config"))
    module = CameraKeypoints(config, hidden_size)
    weights = load_file(str(folder / KEYPOINT_WEIGHTS_FILE))
    if weights["embed.weight"].shape != module.embed.weight.shape:
        raise ValueError(
            f"{folder} embeds into width {weights['embed.weight'].shape[0]}, the model is {hidden_size} wide; "
            "fit the keypoints for this policy"
        )
    module.load_state_dict(weights)
    return module
