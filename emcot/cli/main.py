"""The ``emcot`` command line: demo, generate, predict-frame, info, train, annotate, serve, collect,
eval, compare, view, convert.

Every failure ends as one line ``emcot <command>: error: <message>`` on stderr: exit 2 for a usage
error (caught by the argument types before any work), 1 for a failure in the work, 130 for Ctrl-C.
``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import NamedTuple, NoReturn

import yaml

from emcot.cli.annotate import add_annotate_arguments, run_annotate
from emcot.cli.collect import add_collect_arguments, run_collect
from emcot.cli.compare import add_compare_arguments, run_compare
from emcot.cli.convert import add_convert_arguments, run_convert
from emcot.cli.demo import add_demo_arguments, run_demo
from emcot.cli.eval import add_eval_arguments, run_eval
from emcot.cli.generate import add_generate_arguments, run_generate
from emcot.cli.info import add_info_arguments, run_info
from emcot.cli.predict_frame import add_predict_frame_arguments, run_predict_frame
from emcot.cli.serve import add_serve_arguments, run_serve
from emcot.cli.train import add_train_arguments, run_train
from emcot.cli.view import add_view_arguments, run_view

# Errors a user causes (a bad file, a bad value): their message is the whole story.
_USER_ERRORS = (ValueError, OSError, yaml.YAMLError, KeyboardInterrupt)


class _Command(NamedTuple):
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], object]
    run: Callable[[argparse.Namespace], int]


_COMMANDS = (
    _Command("demo", "run the bundled tiny policy and write a full trace", add_demo_arguments, run_demo),
    _Command("generate", "generate a trace from image files", add_generate_arguments, run_generate),
    _Command(
        "predict-frame",
        "imagine the next frame from image files and a prompt",
        add_predict_frame_arguments,
        run_predict_frame,
    ),
    _Command("info", "summarise a policy folder or a preset", add_info_arguments, run_info),
    _Command(
        "annotate",
        "annotate a LeRobot dataset with EM-CoT reasoning and subgoals",
        add_annotate_arguments,
        run_annotate,
    ),
    _Command(
        "train",
        "train with a YAML recipe (a path or a shipped recipe name)",
        add_train_arguments,
        run_train,
    ),
    _Command(
        "serve",
        "serve a policy over openpi's websocket protocol (one session per connection)",
        add_serve_arguments,
        run_serve,
    ),
    _Command(
        "collect",
        "collect scripted-expert demos in a simulator as a LeRobot v3 dataset",
        add_collect_arguments,
        run_collect,
    ),
    _Command("eval", "closed-loop evaluation of a policy in a simulator", add_eval_arguments, run_eval),
    _Command(
        "compare",
        "tabulate several `emcot eval` result folders side by side",
        add_compare_arguments,
        run_compare,
    ),
    _Command(
        "view",
        "write the HTML page of a saved trace, episode, demo or evaluation (opens from disk)",
        add_view_arguments,
        run_view,
    ),
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other emcot error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``emcot`` command."""
    parser = _Parser(prog="emcot", description="Embodied multimodal chain-of-thought policies.")
    debug_help = "on a failure, print the full traceback"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # ``--debug`` also after the command; SUPPRESS keeps a sub-command from resetting the global one.
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS:
        command_parser = sub.add_parser(command.name, parents=[common], help=command.help)
        command.add_arguments(command_parser)
        command_parser.set_defaults(func=command.run)

    convert = sub.add_parser(
        "convert", parents=[common], help="convert checkpoints of other formats into emcot policies"
    )
    formats = convert.add_subparsers(dest="format", required=True)
    halo = formats.add_parser(
        "halo", parents=[common], help="an official HALO/BAGEL checkpoint folder → an emcot policy folder"
    )
    add_convert_arguments(halo)
    halo.set_defaults(func=run_convert)
    return parser


def _describe(err: BaseException) -> str:
    """``err`` as the one line a user reads: what went wrong, not where."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, OSError) and err.strerror:  # "No such file or directory: 'x'", not "[Errno 2] ..."
        return f"{err.strerror}: '{err.filename}'" if err.filename else err.strerror
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"invalid YAML: {err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(err, _USER_ERRORS):
        return str(err)  # a multi-line ValueError keeps its lines: they were written for the user
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``emcot`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (Exception, KeyboardInterrupt) as err:
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug or isinstance(err, _USER_ERRORS) else " (run with --debug for the traceback)"
        print(f"emcot {args.command}: error: {_describe(err)}{hint}", file=sys.stderr)
        return 130 if isinstance(err, KeyboardInterrupt) else 1


if __name__ == "__main__":
    sys.exit(main())
