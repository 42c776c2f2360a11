"""How far can a policy get that sees the scene through the camera keypoints? The scripted expert,
driven by the localiser's positions instead of the simulator's.

Meta-World's scripted experts read the object's position (``obs[4:7]``) and the goal's
(``obs[36:39]``) from the simulator. Here they read what the fitted camera keypoints
(``scripts/train_camera_keypoints.py``) find in the policy's own camera frame, rendered at every
step: the object's, the goal's, or both replaced. That is the closed-loop ceiling of any policy
whose only view of the scene is the localiser — and it separates the two reasons a keypoint policy
can fail: the positions are not good enough, or the policy does not act on them well enough.
``--noise`` adds arms with the true positions and Gaussian noise of that standard deviation on the
expert's xyz actions, the size of a learned policy's open-loop error (``bench/action_error.py``:
an xyz MSE of 0.12 is a standard deviation of about 0.35).

    python bench/localised_expert.py --keypoints data/keypoints --tasks reach-v3,push-v3 --episodes 10 --noise 0.35

Episodes follow the evaluation protocol (seed 1000 + i by default, 500 steps, stop at the first
success). Prints success per task and arm, the bucket-free task mean, and the localiser's mean
errors (cm, object and goal) over the steps it drove.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from emcot.eval.envs.metaworld import MetaWorldConfig, MetaWorldEnv
from emcot.eval.policies import ScriptedExpert
from emcot.experts.keypoints import CameraKeypoints
from emcot.policy import EmCoTPolicy
from emcot.tokenizers.vision_processing import VisionImageProcessor
from emcot.training.keypoints import load_keypoints, normalised_pixels

OBJECT_SLICE, GOAL_SLICE = slice(4, 7), slice(36, 39)


@dataclass(frozen=True)
class Arm:
    """What the expert is given: which positions come from the camera, and action noise on xyz."""

    name: str
    object_from_camera: bool = False
    goal_from_camera: bool = False
    noise: float = 0.0


ARMS = (
    Arm("simulator"),
    Arm("object-from-camera", object_from_camera=True),
    Arm("goal-from-camera", goal_from_camera=True),
    Arm("both-from-camera", object_from_camera=True, goal_from_camera=True),
)


class Localiser:
    """The fitted keypoints' object and goal positions (metres) in one camera frame."""

    def __init__(self, module: CameraKeypoints, processor: VisionImageProcessor) -> None:
        self.module, self.processor = module.eval(), processor

    @torch.no_grad()
    def __call__(self, frame: np.ndarray) -> np.ndarray:
        pixels = normalised_pixels(self.processor, frame[None])
        return self.module.denormalise(self.module.locate(pixels).positions)[0].double().numpy()


def run_episode(
    env: MetaWorldEnv, arm: Arm, localiser: Localiser, seed: int
) -> tuple[bool, list[np.ndarray]]:
    """One episode of the expert given ``arm``'s view; success and the localiser's (object, goal)
    errors in cm at each step it drove."""
    expert = ScriptedExpert(env.task)
    rng = np.random.default_rng(seed)
    observation = env.reset(seed)
    errors: list[np.ndarray] = []
    for _ in range(env.max_steps):
        raw = observation.raw.copy()
        if arm.object_from_camera or arm.goal_from_camera:
            found = localiser(observation.images[env.cameras[0]])
            truth = np.stack([raw[OBJECT_SLICE], raw[GOAL_SLICE]])
            errors.append(np.linalg.norm(found.reshape(2, 3) - truth, axis=1) * 100)
            if arm.object_from_camera:
                raw[OBJECT_SLICE] = found[:3]
            if arm.goal_from_camera:
                raw[GOAL_SLICE] = found[3:]
        action = expert.action(raw)
        if arm.noise:
            action[:3] += rng.normal(0.0, arm.noise, 3).astype(np.float32)
        outcome = env.step(action)
        if outcome.success:
            return True, errors
        observation = outcome.observation
    return False, errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keypoints", required=True, help="a folder of fitted camera keypoints")
    parser.add_argument("--policy", default="default", help="the policy whose processor the keypoints read")
    parser.add_argument(
        "--tasks", required=True, help="comma-separated Meta-World tasks, e.g. push-v3,reach-v3"
    )
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument(
        "--noise", type=float, nargs="*", default=[], help="extra arms: true positions, xyz noise σ"
    )
    parser.add_argument(
        "--arms", help=f"comma-separated subset of {[arm.name for arm in ARMS]} (default: all)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [arm for arm in ARMS if args.arms is None or arm.name in args.arms.split(",")]
    policy = EmCoTPolicy.load(args.policy)
    localiser = Localiser(
        load_keypoints(args.keypoints, policy.model.config.hidden_size), policy.processor.vision
    )
    arms = tuple(chosen) + tuple(Arm(f"noise-{s:g}", noise=s) for s in args.noise)
    camera = policy.cameras[0]
    table: dict[str, dict[str, float]] = {arm.name: {} for arm in arms}
    cm: dict[str, list[np.ndarray]] = {arm.name: [] for arm in arms}
    started = time.perf_counter()
    for task in args.tasks.split(","):
        with MetaWorldEnv(task, MetaWorldConfig(cameras=(camera,))) as env:
            for arm in arms:
                wins = 0
                for episode in range(args.episodes):
                    success, errors = run_episode(env, arm, localiser, args.seed + episode)
                    wins += success
                    cm[arm.name] += errors
                table[arm.name][task] = 100.0 * wins / args.episodes
                print(f"{task:28s} {arm.name:20s} {table[arm.name][task]:5.1f} %", flush=True)
    tasks = args.tasks.split(",")
    print(f"\n| success % | {' | '.join(arm.name for arm in arms)} |")
    print("|---" * (len(arms) + 1) + "|")
    for task in tasks:
        print(f"| {task} | {' | '.join(f'{table[a.name][task]:.0f}' for a in arms)} |")
    means = [np.mean([table[a.name][t] for t in tasks]) for a in arms]
    print(f"| **mean** | {' | '.join(f'{m:.1f}' for m in means)} |")
    print("\nlocaliser error while it drove (cm, object / goal):")
    for arm in arms:
        if cm[arm.name]:
            obj, goal = np.mean(cm[arm.name], axis=0)
            print(f"  {arm.name}: {obj:.2f} / {goal:.2f}")
    print(f"{len(tasks) * len(arms) * args.episodes} episodes in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
