"""Fit camera keypoints (``emcot.experts.keypoints``) for a policy on a collected Meta-World dataset.

The keypoints learn to read the object's and the goal's positions (the dataset's
``sim.object_position`` / ``sim.goal_position`` columns) from the policy's camera, normalised the
way the policy's processor normalises it. Attach the result with a recipe's
``model.keypoints: OUT`` (e.g. ``mw-stage2-keypoints-small``). Run from the repository root::

    python scripts/train_camera_keypoints.py --dataset /work/data/mw-g [/work/data/mw-wander] \\
        --heldout /work/data/mw-g-held4 --policy default --out /work/data/keypoints

``OUT`` receives ``keypoints.safetensors`` + ``keypoint_config.json`` (read by
``emcot.training.keypoints.load_keypoints``), ``report.json`` (every number printed) and ``run/``
(checkpoints and ``metrics.jsonl``; rerunning the same command resumes there).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from emcot.experts.keypoints import CameraKeypoints, KeypointConfig
from emcot.policy.policy import EmCoTPolicy
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        nargs="+",
        required=True,
        help="LeRobot datasets with the sim.* position columns (e.g. demos, and wandering runs: "
        "emcot collect --wander-steps, whose hand is not where the task leads it)",
    )
    parser.add_argument("--heldout", type=Path, help="another dataset (other seeds) to report errors on")
    parser.add_argument(
        "--policy", default="default", help="the policy the keypoints are for (its camera and width)"
    )
    parser.add_argument("--camera", help="camera to read (default: the policy's first)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stride", type=int, default=2, help="keep every n-th frame of an episode")
    parser.add_argument("--val-every", type=int, default=10, help="hold out every n-th episode per task")
    parser.add_argument("--num-keypoints", type=int, default=16)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--point-weight",
        type=float,
        default=0.0,
        help="also teach the first keypoints the object's and goal's image points, with this loss "
        "weight (needs the [sim] extra for the camera's projection; 0: positions only)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args()


def camera_projection(camera: str, resolution: int) -> tuple[float, ...]:
    """The Meta-World camera's world → image projection (the same in every task), row by row."""
    from emcot.eval.envs.metaworld import MetaWorldConfig, MetaWorldEnv

    with MetaWorldEnv("reach-v3", MetaWorldConfig(resolution=resolution, cameras=(camera,))) as env:
        return tuple(env.image_projection(camera).reshape(-1).tolist())


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = EmCoTPolicy.load(args.policy)
    camera = args.camera or policy.cameras[0]
    processor = policy.processor.vision
    started = time.perf_counter()
    episodes = [
        episode
        for dataset in args.dataset
        for episode in keypoint_frames(dataset, camera, stride=args.stride, progress=not args.no_progress)
    ]
    train, val = split_episodes(episodes, args.val_every)
    print(
        f"frames: {len(train)} train, {len(val)} validation ({time.perf_counter() - started:.0f} s to decode)"
    )
    config = with_target_statistics(
        KeypointConfig(num_keypoints=args.num_keypoints, channels=args.channels), train.targets
    )
    torch.manual_seed(args.seed)
    module = CameraKeypoints(config, policy.model.config.hidden_size)
    print(f"parameters: {sum(p.numel() for p in module.parameters()):,}")
    train_config = KeypointTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        projection=camera_projection(camera, train.images.shape[1]) if args.point_weight else (),
        point_weight=args.point_weight,
    )
    started = time.perf_counter()
    result = fit_keypoints(
        module, processor, train, val, train_config, out_dir=args.out / "run", progress=not args.no_progress
    )
    report = {
        "datasets": [str(path) for path in args.dataset],
        "camera": camera,
        "policy": args.policy,
        "point_weight": args.point_weight,
        "train_frames": len(train),
        "val_frames": len(val),
        "steps": result.step,
        "fit_seconds_this_call": time.perf_counter() - started,
        "validation": localisation_errors(module, processor, val),
        # Predicting every frame's training mean: the error a blind localiser would make.
        "mean_baseline": position_errors(train.targets.mean(0), val),
    }
    if args.heldout is not None:
        heldout = concat_frames(
            keypoint_frames(args.heldout, camera, stride=args.stride, progress=not args.no_progress)
        )
        report["heldout"] = localisation_errors(module, processor, heldout)
    save_keypoints(module, args.out)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
