"""``emcot demo``: the bundled tiny policy on a scene of its synthetic pushing task."""

from __future__ import annotations

import argparse

from emcot.cli.args import MODES, output_folder, print_trace, save_image


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` options to ``parser``."""
    parser.add_argument(
        "--out",
        type=output_folder,
        default="emcot-demo",
        help="folder for reasoning.txt, subgoal.png, trace.json",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default="full", choices=MODES)


def run_demo(args: argparse.Namespace) -> int:
    """Generate a full trace for one synthetic scene and save it with the observed image."""
    from PIL import Image

    from emcot.policy.policy import EmCoTPolicy
    from emcot.synthetic.world import synthetic_samples

    policy = EmCoTPolicy.default()
    sample = synthetic_samples(1, seed=args.seed)[0]
    trace = policy.generate_trace(sample.observation, sample.instruction, mode=args.mode, seed=args.seed)
    print_trace(trace, args.out)
    save_image(Image.fromarray(sample.observation.images[policy.cameras[0]]), args.out / "observation.png")
    return 0
