"""Export a trained Meta-World policy as the bundled default (``EmCoTPolicy.default()``).

Weights are stored as float16 (loading upcasts them to float32) and the folder gets a policy card
(``policy_card.json``): the training tasks, the evaluation protocol, how it was trained, and one
real observation from held-out demos (``example_observation.png``), which ``emcot demo`` shows a
trace on when the simulator is not installed. Run from the repository root::

    python scripts/export_default_policy.py runs/mw-stage2-small/final-ema \\
        --dataset /work/data/mw-small --example-data /work/data/mw-heldout
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emcot.eval.envs.metaworld_tasks import TASK_DESCRIPTIONS, expand_tasks
from emcot.policy.card import ExampleObservation, PolicyCard
from emcot.policy.policy import DEFAULT_POLICY, EmCoTPolicy
from emcot.training.data.lerobot import LeRobotDataset

EXAMPLE_FILE = "example_observation.png"


def task_names(dataset: LeRobotDataset) -> list[str]:
    """The Meta-World task names of a collected dataset, in its task order (from the descriptions)."""
    names = []
    for description in dataset.tasks.values():
        matches = [name for name, text in TASK_DESCRIPTIONS.items() if text == description]
        if len(matches) != 1:
            raise SystemExit(
                f"the description {description!r} names {matches or 'no task'}; pass the task list with --tasks"
            )
        names.append(matches[0])
    return names


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "policy", type=Path, help="trained policy folder (e.g. runs/mw-stage2-small/final-ema)"
    )
    parser.add_argument(
        "--dataset", type=Path, required=True, help="the training demos (task list, protocol)"
    )
    parser.add_argument(
        "--example-data", type=Path, required=True, help="held-out demos to take the example from"
    )
    parser.add_argument("--example-task", default="pick-place-v3")
    parser.add_argument(
        "--tasks", help="the training tasks, comma-separated (default: from the descriptions)"
    )
    parser.add_argument(
        "--training", type=Path, help="JSON with training facts to record (recipes, steps, …)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_POLICY)
    args = parser.parse_args()

    policy = EmCoTPolicy.from_pretrained(args.policy)
    dataset = LeRobotDataset(args.dataset)
    camera = next(iter(dataset.cameras))
    held_out = LeRobotDataset(args.example_data)
    description = TASK_DESCRIPTIONS[args.example_task]
    episode = next(
        held_out.episode(i)
        for i in held_out.episode_indices
        if held_out.episode(i).instruction == description
    )
    observation = episode.observation(0, [camera])
    image = observation.images[camera]
    training = json.loads(args.training.read_text()) if args.training else {}
    training |= {"dataset": f"{len(dataset)} scripted demos of {len(dataset.tasks)} tasks", "camera": camera}
    policy.card = PolicyCard(
        benchmark="metaworld",
        tasks=tuple(expand_tasks(args.tasks)) if args.tasks else tuple(task_names(dataset)),
        camera="corner2",
        resolution=int(image.shape[0]),
        evaluation={"seed": 1000, "episodes": 10, "max_steps": 500, "stop_on_success": True},
        training=training,
        example=ExampleObservation(
            image=EXAMPLE_FILE,
            instruction=episode.instruction,
            state=None if observation.state is None else tuple(float(x) for x in observation.state),
            task=args.example_task,
        ),
    )
    policy.card_example = image
    folder = policy.save_pretrained(args.out, storage_dtype="float16")
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"wrote {folder}: {size / 2**20:.1f} MiB; tasks {', '.join(policy.card.tasks)}")


if __name__ == "__main__":
    main()
