"""`emcot train RECIPE`: command-line entry of the trainer (also ``python -m emcot.cli.train``).

Runs under ``accelerate launch`` and ``torchrun`` as well: every process parses the same arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emcot.cli.args import output_folder, positive_int
from emcot.training.recipes import load_recipe, shipped_recipes


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` options to ``parser``."""
    parser.add_argument(
        "recipe", help=f"a recipe YAML path or a shipped recipe name ({', '.join(shipped_recipes())})"
    )
    parser.add_argument(
        "--max-steps", type=positive_int, default=None, help="total optimizer steps (overrides the recipe)"
    )
    parser.add_argument(
        "--output-dir", type=output_folder, default=None, help="run folder (default: runs/<recipe name>)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --output-dir"
    )
    parser.add_argument(
        "--init",
        default=None,
        help="start from this policy folder (or previous run folder) instead of model.init",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--fsdp",
        action="store_true",
        help="shard weights, gradients and optimizer state over the launched processes (FSDP2)",
    )
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Run a training job from parsed arguments; returns the process exit code."""
    import dataclasses

    from emcot.training.trainer import train

    recipe = load_recipe(args.recipe)
    if args.max_steps is not None:
        recipe = recipe.replace_steps(args.max_steps)
    if args.no_progress:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, progress=False))
    if args.fsdp:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, fsdp=True))
    output = Path(args.output_dir) if args.output_dir else Path("runs") / recipe.name
    result = train(recipe, output, resume=args.resume, init=args.init)
    if result.policy_dir is not None:
        last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
        print(
            f"trained {recipe.name} to step {result.step} (last loss {last}); policy saved to {result.policy_dir}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m emcot.cli.train`` under torchrun/accelerate): the
    ``emcot train`` command, with the console script's one-line errors and ``--debug``."""
    from emcot.cli.main import main as emcot_main

    return emcot_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
