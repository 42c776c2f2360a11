"""``emcot compare``: several ``emcot eval`` result folders as one table (variants side by side)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _run_spec(text: str):
    from emcot.eval.compare import RunSpec

    try:
        return RunSpec.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``compare`` arguments to ``parser``."""
    parser.add_argument(
        "runs", nargs="+", type=_run_spec, help="results folders of `emcot eval`, each FOLDER or FOLDER=LABEL"
    )
    parser.add_argument("--out", type=Path, help="also write the tables to this Markdown file")


def run_compare(args: argparse.Namespace) -> int:
    """Print (and optionally write) the comparison of the runs."""
    from emcot.eval.compare import compare_markdown, load_run

    text = compare_markdown([load_run(spec) for spec in args.runs])
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0
