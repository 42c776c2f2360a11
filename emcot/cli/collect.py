"""``emcot collect metaworld``: scripted expert demonstrations → a LeRobot v3 dataset.

Resumable: attempts finished so far stay in ``OUT/collect-work/`` and a rerun (after a kill, or
asking for more episodes) only simulates what is missing; the dataset is written at the end.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from emcot.cli.args import finite_float, non_negative_int, output_folder, positive_int, seed_number


def _collect_metaworld(args: argparse.Namespace) -> int:
    # Imported here: the simulator's wrapper stays out of every other command's start-up.
    from emcot.eval.collect import CollectConfig, collect_metaworld

    config = CollectConfig(
        tasks=tuple(args.tasks.split(",")),
        out=str(args.out),
        episodes=args.episodes,
        seed=args.seed,
        resolution=args.resolution,
        cameras=tuple(name.strip() for name in args.cameras.split(",") if name.strip()),
        storage=args.storage,
        keep_failed=args.keep_failed,
        max_steps=args.max_steps,
        max_attempts=args.max_attempts,
        action_noise=args.action_noise,
        wander_steps=args.wander_steps,
    )
    summary = collect_metaworld(config, progress=not args.no_progress)
    print(summary.format(config.episodes))
    return 1 if summary.shortfalls(config.episodes) else 0


# Suite name → the collection it runs.
_SUITES: dict[str, Callable[[argparse.Namespace], int]] = {"metaworld": _collect_metaworld}


def add_collect_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``collect`` arguments to ``parser``."""
    parser.add_argument("suite", choices=list(_SUITES), help="simulator whose scripted experts play")
    parser.add_argument("--tasks", required=True, help="tasks or splits, e.g. push,drawer-open or mt10, easy")
    parser.add_argument("--episodes", type=positive_int, default=50, help="episodes kept per task")
    parser.add_argument(
        "--seed", type=seed_number, default=0, help="episode i uses seed + i (evaluation: 1000 + i)"
    )
    parser.add_argument("--out", type=output_folder, required=True, help="dataset folder (created)")
    parser.add_argument("--resolution", type=positive_int, default=128, help="square frame side in pixels")
    parser.add_argument("--cameras", default="corner2", help="comma-separated: corner2, gripperPOV")
    storage = parser.add_mutually_exclusive_group()
    storage.add_argument("--video", dest="storage", action="store_const", const="video", help="mp4 (default)")
    storage.add_argument("--images", dest="storage", action="store_const", const="image", help="lossless PNG")
    parser.set_defaults(storage="video")
    parser.add_argument("--keep-failed", action="store_true", help="keep failed attempts as episodes too")
    parser.add_argument("--max-steps", type=positive_int, default=500, help="step cap of an episode")
    parser.add_argument(
        "--max-attempts", type=positive_int, help="attempts per task at most (default: twice --episodes)"
    )
    parser.add_argument(
        "--action-noise",
        type=finite_float,
        default=0.0,
        help="σ of Gaussian noise added to the executed xyz actions; the expert's action is recorded (DART)",
    )
    parser.add_argument(
        "--wander-steps",
        type=non_negative_int,
        default=0,
        help="first drive the hand to random waypoints for this many steps, recording the expert's actions",
    )
    parser.add_argument("--no-progress", action="store_true")


def run_collect(args: argparse.Namespace) -> int:
    """Collect the demos and write the dataset; 0 when every task has its episodes, 1 otherwise."""
    return _SUITES[args.suite](args)
