"""``emcot predict-frame``: imagine the next frame from context image files and a prompt."""

from __future__ import annotations

import argparse
import time

from emcot.cli.args import (
    add_policy_argument,
    finite_float,
    image_output,
    load_policy,
    positive_int,
    read_image,
    save_image,
)


def add_predict_frame_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``predict-frame`` options to ``parser``."""
    add_policy_argument(parser)
    parser.add_argument(
        "--image", action="append", required=True, help="context frame PATH (repeat, oldest first)"
    )
    parser.add_argument("--prompt", required=True, help="e.g. 'Imagine the next scene: push the block left.'")
    parser.add_argument(
        "--out", type=image_output, required=True, help="where to write the predicted frame (.png)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="denoising steps (default: the policy's)"
    )
    parser.add_argument("--text-guidance", type=finite_float, default=None)
    parser.add_argument("--image-guidance", type=finite_float, default=None)
    parser.add_argument(
        "--no-vae-context", action="store_true", help="leave out the frames' clean VAE latent copies"
    )


def run_predict_frame(args: argparse.Namespace) -> int:
    """Read the frames (file errors come before the model loads), predict the next one and save it."""
    frames = [read_image(path) for path in args.image]
    policy = load_policy(args.policy)
    start = time.perf_counter()
    image = policy.predict_frame(
        frames,
        args.prompt,
        seed=args.seed,
        steps=args.steps,
        text_guidance=args.text_guidance,
        image_guidance=args.image_guidance,
        vae_context=not args.no_vae_context,
    )
    elapsed = time.perf_counter() - start
    print(
        f"frame       : {'x'.join(map(str, image.size))} from {len(frames)} context frame(s), {elapsed:.3f} s"
    )
    print(f"saved to    : {save_image(image, args.out)}")
    return 0
