"""The ``emcot`` command line: demo, generate, predict-frame, info, train, annotate, convert.

Every failure ends as one line ``emcot <command>: error: <message>`` on stderr: exit 2 for a usage
error (caught by the argument types before any work), 1 for a failure in the work, 130 for Ctrl-C.
``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import yaml

# Errors a user causes (a bad file, a bad value): their message is the whole story.
_USER_ERRORS = (ValueError, OSError, yaml.YAMLError, KeyboardInterrupt)


# ---------------------------------------------------------------------------------------------
# Argument types: argparse turns their ArgumentTypeError into a usage error before any work.


def finite_float(text: str) -> float:
    """A number that is neither NaN nor infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def positive_int(text: str) -> int:
    """A whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got '{text}'")
    return value


def state_vector(text: str) -> np.ndarray:
    """Comma-separated finite numbers, e.g. ``0.1,0.2,0,1``."""
    try:
        values = [finite_float(v) for v in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, got '{text}'") from None
    return np.array(values, np.float32)


def camera_path(text: str) -> tuple[str, str]:
    """``CAMERA=PATH`` → ``(camera, path)``."""
    name, sep, path = text.partition("=")
    if not (sep and name and path):
        raise argparse.ArgumentTypeError(f"expected CAMERA=PATH, got '{text}'")
    return name, path


def _refuse_file_ancestor(path: Path) -> None:
    # mkdir would fail below a file only after the work is done.
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"'{parent}' is a file, so '{path}' cannot be created")
            return


def output_folder(text: str) -> Path:
    """A folder to write into: existing, or creatable."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"'{path}' is a file; give a folder")
    _refuse_file_ancestor(path)
    return path


def output_file(text: str) -> Path:
    """A file to write: not a folder, and creatable."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{path}' is a folder; give a file path")
    _refuse_file_ancestor(path)
    return path


def image_output(text: str) -> Path:
    """An image file to write, its format named by an extension Pillow can write (.png, .jpg, ...)."""
    path = output_file(text)
    if _image_format(path) is None:
        raise argparse.ArgumentTypeError(f"'{path}' needs an image extension Pillow can write, e.g. .png")
    return path


def _image_format(path: Path) -> str | None:
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    return fmt if fmt in Image.SAVE else None


# ---------------------------------------------------------------------------------------------
# Image files.


def read_image(path: str | Path) -> np.ndarray:
    """The RGB pixels of an image file; a missing, non-image or truncated file raises ValueError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"'{path}' is a folder, not an image file")
    if not path.is_file():
        raise ValueError(f"no image file at '{path}'")
    try:
        with Image.open(path) as image:
            image.load()  # open() reads only the header; a truncated file fails while decoding
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        reason = "unknown image format" if isinstance(err, UnidentifiedImageError) else str(err)
        raise ValueError(f"'{path}' is not a readable image ({reason})") from err


def save_image(image, path: Path) -> Path:
    """Write ``image`` through a temporary file, so an interrupted save never leaves a torn image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format=_image_format(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _print_trace(trace, out: Path | None) -> None:
    print(f"instruction : {trace.instruction}")
    print(f"mode        : {trace.mode}")
    print(f"reasoning   : {trace.reasoning}")
    print(f"subgoal     : {'image ' + 'x'.join(map(str, trace.subgoal.size)) if trace.subgoal else 'none'}")
    print(f"actions     : shape {trace.actions.shape}, first step {np.round(trace.actions[0], 3).tolist()}")
    print("timings (s) : " + ", ".join(f"{k} {v:.3f}" for k, v in trace.timings.items()))
    if out is not None:
        print(f"saved to    : {trace.save(out)}")


def cmd_demo(args) -> int:
    """Run the bundled tiny policy on a scene of its synthetic pushing task."""
    from emcot.policy.policy import EmCoTPolicy
    from emcot.synthetic.world import synthetic_samples

    policy = EmCoTPolicy.default()
    sample = synthetic_samples(1, seed=args.seed)[0]
    trace = policy.generate_trace(sample.observation, sample.instruction, mode=args.mode, seed=args.seed)
    _print_trace(trace, args.out)
    from PIL import Image

    save_image(Image.fromarray(sample.observation.images[policy.cameras[0]]), args.out / "observation.png")
    return 0


def _read_camera_images(items: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    images = {}
    for name, path in items:
        if name in images:
            raise ValueError(f"camera '{name}' is given twice with --image")
        images[name] = read_image(path)
    return images


def _load_policy(name: str):
    from emcot.policy.policy import EmCoTPolicy

    return EmCoTPolicy.default() if name == "default" else EmCoTPolicy.from_pretrained(name)


def cmd_generate(args) -> int:
    """Generate one trace from image files, a state and an instruction."""
    from emcot.types import Observation

    obs = Observation(_read_camera_images(args.image), args.state)  # file errors before the model loads
    policy = _load_policy(args.policy)
    trace = policy.generate_trace(obs, args.instruction, mode=args.mode, seed=args.seed)
    _print_trace(trace, args.out)
    return 0


def cmd_predict_frame(args) -> int:
    """Imagine the next frame from context image files and a prompt, without a trace."""
    frames = [read_image(path) for path in args.image]  # file errors before the model loads
    policy = _load_policy(args.policy)
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


def cmd_info(args) -> int:
    """Print a config summary, parameter counts per part, dtype and normalisation statistics."""
    import torch

    from emcot.config import EmCoTConfig
    from emcot.model.modeling import EmCoTModel
    from emcot.model.summary import format_count, parameter_breakdown

    stats = None
    if args.preset:
        config = EmCoTConfig.from_preset(args.preset)
        with torch.device("meta"):
            model = EmCoTModel(config)
        title = f"preset {args.preset}"
    else:
        from emcot.model.loading import load_model
        from emcot.tokenizers.actions import RobotNormStats

        folder = Path(args.folder)
        model = load_model(folder)
        config = model.config
        title = str(folder)
        if (folder / "norm_stats.json").is_file():
            stats = RobotNormStats.load(folder / "norm_stats.json")
    und = config.experts["und"]
    print(f"emcot model: {title}")
    print(
        f"  backbone: {und.num_layers} layers, hidden {und.hidden_size}, {und.num_heads} heads "
        f"({und.num_kv_heads} KV, head dim {und.head_dim}), QK-norm {und.qk_norm}, vocab {config.vocab_size}"
    )
    print(
        "  expert MLP widths: " + ", ".join(f"{n} {c.intermediate_size}" for n, c in config.experts.items())
    )
    if config.vision is not None:
        v = config.vision
        print(
            f"  vision: {v.num_layers} layers (drop last: {v.drop_last_layer}), hidden {v.hidden_size}, patch {v.patch_size}"
        )
    if config.vae is not None:
        print(f"  vae: {config.vae.latent_channels} latent channels, subgoal {config.vae.image_size}")
    a = config.action
    print(f"  actions: dim {a.action_dim}, state dim {a.state_dim}, horizon {a.horizon}, norm {a.norm_mode}")
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    print(f"  dtype: {', '.join(dtypes)}")
    parts = parameter_breakdown(model)
    print("  parameters:")
    for name, count in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<14} {format_count(count):>9}  ({count:,})")
    print(f"    {'total':<14} {format_count(sum(parts.values())):>9}  ({sum(parts.values()):,})")
    if stats is not None:
        print("  normalisation statistics:")
        for robot in stats.robots:
            entry = stats.for_robot(robot)
            for key in ("state", "action"):
                s = entry[key]
                if s is not None:
                    print(f"    {robot}.{key}: dim {s.dim}, n {s.count}, mean {np.round(s.mean, 3).tolist()}")
    return 0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other emcot error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _harden(parser: argparse.ArgumentParser, **types) -> None:
    """Give a sub-command module's flags our checks: ``types`` by dest, finite numbers for floats."""
    for action in parser._actions:  # argparse has no public way to reach added arguments
        if action.dest in types:
            action.type = types[action.dest]
        elif action.type is float:
            action.type = finite_float


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``emcot`` command."""
    parser = _Parser(prog="emcot", description="Embodied multimodal chain-of-thought policies.")
    debug_help = "on a failure, print the full traceback"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # ``--debug`` also after the command; SUPPRESS keeps a sub-command from resetting the global one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_command(name: str, func, **kwargs) -> argparse.ArgumentParser:
        command = sub.add_parser(name, parents=[common], **kwargs)
        command.set_defaults(func=func)
        return command

    demo = add_command("demo", cmd_demo, help="run the bundled tiny policy and write a full trace")
    demo.add_argument(
        "--out",
        type=output_folder,
        default="emcot-demo",
        help="folder for reasoning.txt, subgoal.png, trace.json",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--mode", default="full", choices=["full", "reason", "reactive"])

    gen = add_command("generate", cmd_generate, help="generate a trace from image files")
    gen.add_argument("--policy", default="default", help="policy folder, or 'default'")
    gen.add_argument(
        "--image", type=camera_path, action="append", required=True, help="CAMERA=PATH (repeat per camera)"
    )
    gen.add_argument(
        "--state", type=state_vector, default=None, help="comma-separated state vector in robot units"
    )
    gen.add_argument("--instruction", required=True)
    gen.add_argument("--mode", default=None, choices=["full", "reason", "reactive"])
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", type=output_folder, default=None, help="folder to save the trace in")

    frame = add_command(
        "predict-frame", cmd_predict_frame, help="imagine the next frame from image files and a prompt"
    )
    frame.add_argument("--policy", default="default", help="policy folder, or 'default'")
    frame.add_argument(
        "--image", action="append", required=True, help="context frame PATH (repeat, oldest first)"
    )
    frame.add_argument("--prompt", required=True, help="e.g. 'Imagine the next scene: push the block left.'")
    frame.add_argument(
        "--out", type=image_output, required=True, help="where to write the predicted frame (.png)"
    )
    frame.add_argument("--seed", type=int, default=0)
    frame.add_argument(
        "--steps", type=positive_int, default=None, help="denoising steps (default: the policy's)"
    )
    frame.add_argument("--text-guidance", type=finite_float, default=None)
    frame.add_argument("--image-guidance", type=finite_float, default=None)
    frame.add_argument(
        "--no-vae-context", action="store_true", help="leave out the frames' clean VAE latent copies"
    )

    info = add_command("info", cmd_info, help="summarise a policy folder or a preset")
    what = info.add_mutually_exclusive_group(required=True)
    what.add_argument("folder", nargs="?", help="policy or model folder")
    what.add_argument("--preset", default=None)

    from emcot.training.annotation.pipeline import add_annotate_arguments, run_annotate

    annotate = add_command(
        "annotate", run_annotate, help="annotate a LeRobot dataset with EM-CoT reasoning and subgoals"
    )
    add_annotate_arguments(annotate)
    _harden(annotate, out=output_file)

    from emcot.cli.train import add_train_arguments, run_train

    train = add_command("train", run_train, help="train with a YAML recipe (a path or a shipped recipe name)")
    add_train_arguments(train)
    _harden(train, output_dir=output_folder, max_steps=positive_int)

    from emcot.interop.halo import add_convert_arguments, run_convert

    convert = sub.add_parser(
        "convert", parents=[common], help="convert checkpoints of other formats into emcot policies"
    )
    formats = convert.add_subparsers(dest="format", required=True)
    halo = formats.add_parser(
        "halo", parents=[common], help="an official HALO/BAGEL checkpoint folder → an emcot policy folder"
    )
    add_convert_arguments(halo)
    _harden(halo, dst=output_folder, horizon=positive_int, subgoal_size=positive_int)
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
