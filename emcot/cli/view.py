"""``emcot view``: the static HTML page of a saved trace, episode, demo or evaluation folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from emcot.cli.args import output_file


def _existing_folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"'{path}' is not a folder (a trace, episode, demo or evaluation)")
    return path


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``view`` options to ``parser``."""
    parser.add_argument(
        "run",
        type=_existing_folder,
        help="a folder from Trace.save / emcot generate --out, emcot demo, or emcot eval --out",
    )
    parser.add_argument(
        "--out", type=output_file, help="the page to write (default: RUN/view.html); opens from disk"
    )
    parser.add_argument(
        "--rerun",
        type=output_file,
        metavar="RRD",
        help="also write the episode as a Rerun recording (needs pip install 'emcot[rerun]')",
    )
    parser.add_argument("--no-progress", action="store_true")


def run_view(args: argparse.Namespace) -> int:
    """Write the page (and the Rerun recording when asked), print where they are."""
    from emcot.eval.records import EpisodeRecord
    from emcot.eval.viewer import ViewKind, build_view, view_kind

    kind, folder = view_kind(args.run)
    if args.rerun is not None and kind is not ViewKind.EPISODE:
        raise ValueError(f"--rerun records one episode; {args.run} holds a {kind.value}")
    out = args.out or Path(args.run) / "view.html"
    page = build_view(folder, out, progress=not args.no_progress)
    print(f"{kind.value} page: {page.resolve()}")
    if args.rerun is not None:
        from emcot.eval.viewer.rerun_log import write_rerun

        print(f"rerun recording: {write_rerun(EpisodeRecord.load(folder), args.rerun).resolve()}")
    return 0
