"""Open-loop action error on demos: does the policy fit its training demos better than new ones?

For every ``--stride``-th frame of each episode the policy generates an action chunk (``--mode``)
from the recorded observation, and the first ``--horizon`` actions are compared with the expert's
recorded ones (mean squared error per action dimension, in robot units). Run it on demos with the
training seeds and on demos with held-out seeds: a train error far below the held-out one means
the policy memorises (more data would help), equal errors mean it has not fit its own data yet
(more training would help). Two references calibrate the numbers: predicting the dataset's mean
action, and holding the expert's previous action for the whole chunk. With ``--swap-images`` the
policy is also scored on the same state and time step but the camera frame of *another* episode of
the same task (other object and goal positions, and that episode's hand): an error no worse than
with its own frame means the policy does not read the scene from the image.

    emcot collect metaworld --tasks <the card's> --episodes 4 --seed 0 --out data/mw-train4
    emcot collect metaworld --tasks <the card's> --episodes 4 --seed 1500 --out data/mw-held4
    python bench/action_error.py --policy default --data data/mw-train4 data/mw-held4 [--mode reactive]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from emcot.policy import EmCoTPolicy
from emcot.training.data.lerobot import LeRobotDataset
from emcot.types import Observation


def swap_partners(dataset: LeRobotDataset) -> dict[int, int | None]:
    """Each episode → the next episode of the same task (cyclically), None when it is the only one."""
    by_task: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index in dataset.episode_indices:
        by_task[tuple(dataset.record(index).tasks)].append(index)
    return {
        index: (group[(k + 1) % len(group)] if len(group) > 1 else None)
        for group in by_task.values()
        for k, index in enumerate(group)
    }


def chunk_errors(policy: EmCoTPolicy, dataset: LeRobotDataset, args: argparse.Namespace) -> dict:
    """Per task: squared errors [frames, action_dim] of the policy and of the two references."""
    camera = policy.cameras[0]
    data_camera = camera if camera in dataset.cameras else next(iter(dataset.cameras))
    mean_action = dataset.stats[dataset.action_key]["mean"]  # the dataset's own statistics
    errors: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    lender = swap_partners(dataset) if args.swap_images else {}
    for index in dataset.episode_indices:
        episode = dataset.episode(index)
        images = episode.images(data_camera)
        other = None if lender.get(index) is None else dataset.episode(lender[index]).images(data_camera)
        for t in range(0, len(episode) - args.horizon, args.stride):
            expert = episode.actions[t : t + args.horizon]
            row = errors[episode.instruction]
            sources = {"policy": images[t]}
            if other is not None:
                sources["policy, other episode's frame"] = other[min(t, len(other) - 1)]
            for label, image in sources.items():
                observation = Observation(images={camera: image}, state=episode.states[t])
                trace = policy.generate_trace(
                    observation, episode.instruction, mode=args.mode, seed=index * 1000 + t
                )
                predicted = np.asarray(trace.actions)[: args.horizon]
                row[label].append(((predicted - expert) ** 2).mean(0))
            previous = episode.actions[max(t - 1, 0)]
            row["mean action"].append(((mean_action - expert) ** 2).mean(0))
            row["hold previous"].append(((previous - expert) ** 2).mean(0))
    return errors


def report(label: str, errors: dict) -> None:
    """Print one dataset's table: MSE per task for each predictor (xyz mean, gripper)."""
    predictors = list(dict.fromkeys(p for row in errors.values() for p in row))
    print(f"\n{label}: mean squared error per action dimension, first actions of each chunk")
    print("| task | " + " | ".join(f"{p} (xyz / grip)" for p in predictors) + " |")
    print("|" + "---|" * (len(predictors) + 1))
    totals: dict[str, list[np.ndarray]] = defaultdict(list)
    for task, row in errors.items():
        cells = []
        for p in predictors:
            if p not in row:  # a task with a single episode has no other frame to swap in
                cells.append("—")
                continue
            mse = np.mean(row[p], axis=0)
            totals[p].append(mse)
            cells.append(f"{mse[:3].mean():.3f} / {mse[3:].mean():.3f}")
        print(f"| {task} | " + " | ".join(cells) + " |")
    means = {p: np.mean(v, axis=0) for p, v in totals.items()}
    print(
        "| **task mean** | "
        + " | ".join(f"{m[:3].mean():.3f} / {m[3:].mean():.3f}" for m in means.values())
        + " |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", required=True, help="policy folder or bundled name")
    parser.add_argument(
        "--data", required=True, nargs="+", help="LeRobot datasets (e.g. train seeds, held-out seeds)"
    )
    parser.add_argument("--mode", default="reactive", choices=["full", "reason", "reactive"])
    parser.add_argument("--stride", type=int, default=8, help="score every stride-th frame")
    parser.add_argument("--horizon", type=int, default=8, help="actions compared per chunk")
    parser.add_argument(
        "--swap-images",
        action="store_true",
        help="also score the policy on another episode's frame (does it read the scene?)",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = EmCoTPolicy.load(args.policy)
    for path in args.data:
        start = time.perf_counter()
        errors = chunk_errors(policy, LeRobotDataset(path), args)
        frames = sum(len(row["policy"]) for row in errors.values())
        report(f"{path} ({frames} frames, {args.mode} mode, {time.perf_counter() - start:.0f} s)", errors)


if __name__ == "__main__":
    main()
