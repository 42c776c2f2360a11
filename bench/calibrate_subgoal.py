"""Calibrate the ``SubgoalReached`` threshold of the bundled policy on the synthetic pushing world
(prints numbers, asserts nothing; the chosen value is ``SUBGOAL_REACHED_THRESHOLD``).

Each episode: the gripper approaches the block (8 frames) and pushes it to its goal (8 frames);
the last two push frames count as "reached". Distances are measured to the true subgoal frame
(the latent metric alone: this sets the default) and to the subgoal the policy imagines from the
first frame (what the rule sees at run time with this policy).

python bench/calibrate_subgoal.py [--episodes 40] [--threads 2]
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

REACHED_FRAMES = 2


def describe(name: str, values: np.ndarray) -> str:
    q = np.percentile(values, [5, 25, 50, 75, 95])
    return f"{name:<12} n={values.size:<4} p5 {q[0]:.3f}  p25 {q[1]:.3f}  median {q[2]:.3f}  p75 {q[3]:.3f}  p95 {q[4]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = EmCoTPolicy.synthetic()
    samples = synthetic_samples(args.episodes, seed=123)
    episodes = []
    for sample in samples:
        frames = push_frames(sample)
        reached = [i >= len(frames) - REACHED_FRAMES for i in range(len(frames))]
        episodes.append(CalibrationEpisode(sample.observation, sample.instruction, frames, reached))
    for label, with_truth in (("true subgoal frame", True), ("imagined subgoal", False)):
        chosen = [
            dataclasses.replace(e, subgoal=s.subgoal) if with_truth else e
            for e, s in zip(episodes, samples, strict=True)
        ]
        result = calibrate_subgoal_threshold(policy, chosen)
        print(f"bundled policy, {args.episodes} synthetic episodes, distance to the {label}:")
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
