"""``emcot generate``: one trace from image files, a state and an instruction."""

from __future__ import annotations

import argparse

import numpy as np

from emcot.cli.args import (
    MODES,
    add_policy_argument,
    camera_path,
    load_policy,
    output_folder,
    print_trace,
    read_image,
    state_vector,
)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``generate`` options to ``parser``."""
    add_policy_argument(parser)
    parser.add_argument(
        "--image", type=camera_path, action="append", required=True, help="CAMERA=PATH (repeat per camera)"
    )
    parser.add_argument(
        "--state", type=state_vector, default=None, help="comma-separated state vector in robot units"
    )
    parser.add_argument("--instruction", required=True)
    parser.add_argument("--mode", default=None, choices=MODES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=output_folder, default=None, help="folder to save the trace in")


def _read_camera_images(items: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    images = {}
    for name, path in items:
        if name in images:
            raise ValueError(f"camera '{name}' is given twice with --image")
        images[name] = read_image(path)
    return images


def run_generate(args: argparse.Namespace) -> int:
    """Read the images (file errors come before the model loads), then generate and print the trace."""
    from emcot.types import Observation

    obs = Observation(_read_camera_images(args.image), args.state)
    policy = load_policy(args.policy)
    trace = policy.generate_trace(obs, args.instruction, mode=args.mode, seed=args.seed)
    print_trace(trace, args.out, obs)
    if args.out is not None:
        print(f"view it     : emcot view {args.out}")
    return 0
