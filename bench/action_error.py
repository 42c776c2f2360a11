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
with its own frame means the policy does not read the scene from the image. With
``--annotated-reasoning`` (reason mode, annotated demos) it is also scored acting on the
*annotated* reasoning of the frame, teacher-forced as a kept plan (``act_on_plan``), and on the
annotated reasoning of another episode of the same task at the same step: does the action chunk
follow what the reasoning says (e.g. its aim point), and how good would it be if the reasoning
were right? With ``--without-keypoints`` (a policy with camera keypoints) it is also scored with its
keypoints detached, on its own frame: how much of the chunk the keypoints decide.

    emcot collect metaworld --tasks <the card's> --episodes 4 --seed 0 --out data/mw-train4
    emcot collect metaworld --tasks <the card's> --episodes 4 --seed 1500 --out data/mw-held4
    python bench/action_error.py --policy default --data data/mw-train4 data/mw-held4 [--mode reactive]
    python bench/action_error.py --policy P --data data/mw-held4 --mode reason --annotated-reasoning
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import torch

from emcot.inference.plan import KeptPlan
from emcot.policy import EmCoTPolicy
from emcot.sequence.layouts import reasoning_ids
from emcot.training.annotation.annotations import EpisodeAnnotation, read_annotations
from emcot.training.data.emcot_samples import format_reasoning
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


def annotated_plan(policy: EmCoTPolicy, annotation: EpisodeAnnotation, t: int, instruction: str) -> KeptPlan:
    """The annotated reasoning of frame ``t`` (clipped to the episode) as a reason-mode plan to act on."""
    t = min(t, annotation.num_frames - 1)
    sub = next(i for i, s in enumerate(annotation.subtasks) if s.start <= t <= s.end)
    text = format_reasoning(annotation, sub, t)
    proc = policy.processor
    ids = reasoning_ids(proc.tokenizer.encode(text), proc.special)
    return KeptPlan(instruction=instruction, reasoning=text, reasoning_ids=ids, subgoal_latents=None)


@contextlib.contextmanager
def keypoints_detached(policy: EmCoTPolicy, detached: bool) -> Iterator[None]:
    """The policy without its camera keypoints (the state token as the state alone) while inside."""
    kept = policy.model.keypoints
    if detached:
        policy.model.keypoints = None
    try:
        yield
    finally:
        policy.model.keypoints = kept


def chunk_errors(policy: EmCoTPolicy, dataset: LeRobotDataset, args: argparse.Namespace) -> dict:
    """Per task: squared errors [frames, action_dim] of the policy and of the two references."""
    camera = policy.cameras[0]
    data_camera = camera if camera in dataset.cameras else next(iter(dataset.cameras))
    mean_action = dataset.stats[dataset.action_key]["mean"]  # the dataset's own statistics
    errors: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    lender = swap_partners(dataset) if args.swap_images or args.annotated_reasoning else {}
    annotations = read_annotations(dataset.root / "annotations.jsonl") if args.annotated_reasoning else {}
    for index in dataset.episode_indices:
        episode = dataset.episode(index)
        images = episode.images(data_camera)
        partner = lender.get(index)
        other = (
            None if partner is None or not args.swap_images else dataset.episode(partner).images(data_camera)
        )
        for t in range(0, len(episode) - args.horizon, args.stride):
            expert = episode.actions[t : t + args.horizon]
            row = errors[episode.instruction]
            sources = {"policy": images[t]}
            if other is not None:
                sources["policy, other episode's frame"] = other[min(t, len(other) - 1)]
            seed = index * 1000 + t
            runs = [(label, image, False) for label, image in sources.items()]
            if args.without_keypoints:
                runs.append(("policy, keypoints detached", images[t], True))
            for label, image, detached in runs:
                observation = Observation(images={camera: image}, state=episode.states[t])
                with keypoints_detached(policy, detached):
                    trace = policy.generate_trace(observation, episode.instruction, mode=args.mode, seed=seed)
                predicted = np.asarray(trace.actions)[: args.horizon]
                row[label].append(((predicted - expert) ** 2).mean(0))
            plans = {}
            if args.annotated_reasoning:
                plans["annotated reasoning"] = annotated_plan(
                    policy, annotations[index], t, episode.instruction
                )
                if partner is not None:
                    plans["other episode's annotated reasoning"] = annotated_plan(
                        policy, annotations[partner], t, episode.instruction
                    )
            for label, plan in plans.items():
                observation = Observation(images={camera: images[t]}, state=episode.states[t])
                trace, _ = policy.act_on_plan(observation, plan, seed=seed)
                row[label].append(((np.asarray(trace.actions)[: args.horizon] - expert) ** 2).mean(0))
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
    parser.add_argument(
        "--annotated-reasoning",
        action="store_true",
        help="reason mode: also score acting on the annotated reasoning (DATA/annotations.jsonl)",
    )
    parser.add_argument(
        "--without-keypoints",
        action="store_true",
        help="also score the policy with its camera keypoints detached (how much they decide)",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.annotated_reasoning and args.mode != "reason":
        parser.error("--annotated-reasoning scores reason-mode plans: pass --mode reason")
    torch.set_num_threads(args.threads)
    policy = EmCoTPolicy.load(args.policy)
    if args.without_keypoints and policy.model.keypoints is None:
        parser.error("--without-keypoints needs a policy with camera keypoints")
    for path in args.data:
        start = time.perf_counter()
        errors = chunk_errors(policy, LeRobotDataset(path), args)
        frames = sum(len(row["policy"]) for row in errors.values())
        report(f"{path} ({frames} frames, {args.mode} mode, {time.perf_counter() - start:.0f} s)", errors)


if __name__ == "__main__":
    main()
