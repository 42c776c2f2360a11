"""Calibrate the ``SubgoalReached`` threshold of a policy (prints numbers, asserts nothing).

Synthetic (default, the bundled ``synthetic`` policy; its value is ``SUBGOAL_REACHED_THRESHOLD``):
each episode, the gripper approaches the block (8 frames) and pushes it to its goal (8 frames);
the last two push frames count as "reached". With ``--data`` (an annotated LeRobot dataset of
held-out demos) every sub-task is an episode: its first frame is the observation, every
``--stride``-th frame up to the sub-task's end is scored, and frames within ``--reached-within``
frames of the annotated subgoal frame count as reached.
Distances are measured to the true subgoal frame (the latent metric alone) and to the subgoal the
policy imagines from the first frame (what the rule sees at run time with this policy).

python bench/calibrate_subgoal.py [--episodes 40] [--threads 2]
python bench/calibrate_subgoal.py --policy default --data /work/data/mw-heldout [--episodes 40]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from emcot.policy.policy import EmCoTPolicy
from emcot.runtime.calibration import CalibrationEpisode, calibrate_subgoal_threshold
from emcot.runtime.rules import SUBGOAL_REACHED_THRESHOLD
from emcot.synthetic.world import push_frames, synthetic_samples
from emcot.types import Observation

REACHED_FRAMES = 2


def describe(name: str, values: np.ndarray) -> str:
    q = np.percentile(values, [5, 25, 50, 75, 95])
    return f"{name:<12} n={values.size:<4} p5 {q[0]:.3f}  p25 {q[1]:.3f}  median {q[2]:.3f}  p75 {q[3]:.3f}  p95 {q[4]:.3f}"


def synthetic_episodes(count: int) -> tuple[list[CalibrationEpisode], list[np.ndarray]]:
    """Pushing episodes of the synthetic world and their true subgoal frames."""
    samples = synthetic_samples(count, seed=123)
    episodes = []
    for sample in samples:
        frames = push_frames(sample)
        reached = [i >= len(frames) - REACHED_FRAMES for i in range(len(frames))]
        episodes.append(CalibrationEpisode(sample.observation, sample.instruction, frames, reached))
    return episodes, [s.subgoal for s in samples]


def demo_episodes(
    policy: EmCoTPolicy, data: str, count: int, stride: int, within: int
) -> tuple[list[CalibrationEpisode], list[np.ndarray]]:
    """One calibration episode per annotated sub-task of a LeRobot dataset's demos."""
    from emcot.training.annotation.annotations import read_annotations
    from emcot.training.data.lerobot import LeRobotDataset

    dataset = LeRobotDataset(data)
    annotations = read_annotations(f"{data}/annotations.jsonl")
    camera = policy.cameras[0]
    source = camera if camera in dataset.cameras else next(iter(dataset.cameras))
    episodes, truths = [], []
    for index in dataset.episode_indices:
        annotation = annotations.get(index)
        if annotation is None or annotation.status != "ok":
            continue
        episode = dataset.episode(index)
        images = episode.images(source)
        for subtask in annotation.subtasks:
            picks = list(range(subtask.start, subtask.end + 1, stride))
            seen = episode.observation(subtask.start, [source])
            observation = Observation(images={camera: seen.images[source]}, state=seen.state)
            reached = [abs(t - subtask.subgoal_frame) <= within for t in picks]
            frames = [images[t] for t in picks]
            episodes.append(CalibrationEpisode(observation, episode.instruction, frames, reached))
            truths.append(images[subtask.subgoal_frame])
            if len(episodes) == count:
                return episodes, truths
    return episodes, truths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--policy", default="synthetic", help="bundled name or policy folder")
    parser.add_argument(
        "--data", help="annotated LeRobot dataset of held-out demos (default: synthetic world)"
    )
    parser.add_argument("--stride", type=int, default=4, help="--data: score every k-th frame")
    parser.add_argument("--reached-within", type=int, default=4, help="--data: frames of the subgoal frame")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = EmCoTPolicy.load(args.policy)
    if args.data is None:
        episodes, truths = synthetic_episodes(args.episodes)
        where = f"{len(episodes)} synthetic episodes"
    else:
        episodes, truths = demo_episodes(policy, args.data, args.episodes, args.stride, args.reached_within)
        where = f"{len(episodes)} sub-tasks of {args.data}"
    for label, with_truth in (("true subgoal frame", True), ("imagined subgoal", False)):
        chosen = [
            dataclasses.replace(e, subgoal=truth) if with_truth else e
            for e, truth in zip(episodes, truths, strict=True)
        ]
        result = calibrate_subgoal_threshold(policy, chosen)
        print(f"policy {args.policy}, {where}, distance to the {label}:")
        print(describe("reached", result.reached))
        print(describe("not reached", result.not_reached))
        fire = (result.reached < SUBGOAL_REACHED_THRESHOLD).mean()
        quiet = (result.not_reached >= SUBGOAL_REACHED_THRESHOLD).mean()
        print(
            f"  best threshold {result.threshold:.3f} (balanced accuracy {result.balanced_accuracy:.3f}, "
            f"AUC {result.auc:.3f}); shipped default {SUBGOAL_REACHED_THRESHOLD}: fires on {fire:.3f} "
            f"of reached frames, quiet on {quiet:.3f} of the others"
        )


if __name__ == "__main__":
    main()
