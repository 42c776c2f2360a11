"""The ``emcot`` command line: demo, generate, predict-frame, info, train, annotate, convert."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


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
    from emcot.policy import EmCoTPolicy
    from emcot.training.synthetic import synthetic_samples

    policy = EmCoTPolicy.default()
    sample = synthetic_samples(1, seed=args.seed)[0]
    trace = policy.generate_trace(sample.observation, sample.instruction, mode=args.mode, seed=args.seed)
    _print_trace(trace, Path(args.out))
    sample_path = Path(args.out) / "observation.png"
    from PIL import Image

    Image.fromarray(sample.observation.images[policy.cameras[0]]).save(sample_path)
    return 0


def _read_image(path: str) -> np.ndarray:
    from PIL import Image

    if not Path(path).is_file():
        raise ValueError(f"no image file at '{path}'")
    return np.asarray(Image.open(path).convert("RGB"))


def _parse_images(items: list[str]) -> dict[str, np.ndarray]:
    images = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--image takes CAMERA=PATH, got '{item}'")
        name, path = item.split("=", 1)
        images[name] = _read_image(path)
    return images


def _load_policy(name: str):
    from emcot.policy import EmCoTPolicy

    return EmCoTPolicy.default() if name == "default" else EmCoTPolicy.from_pretrained(name)


def cmd_generate(args) -> int:
    """Generate one trace from image files, a state and an instruction."""
    from emcot.types import Observation

    policy = _load_policy(args.policy)
    state = np.array([float(v) for v in args.state.split(",")], np.float32) if args.state else None
    obs = Observation(_parse_images(args.image), state)
    trace = policy.generate_trace(obs, args.instruction, mode=args.mode, seed=args.seed)
    _print_trace(trace, Path(args.out) if args.out else None)
    return 0


def cmd_predict_frame(args) -> int:
    """Imagine the next frame from context image files and a prompt, without a trace."""
    policy = _load_policy(args.policy)
    frames = [_read_image(path) for path in args.image]
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(
        f"frame       : {'x'.join(map(str, image.size))} from {len(frames)} context frame(s), {elapsed:.3f} s"
    )
    print(f"saved to    : {out}")
    return 0


def cmd_info(args) -> int:
    """Print a config summary, parameter counts per part, dtype and normalisation statistics."""
    import torch

    from emcot.config import EmCoTConfig
    from emcot.modeling import EmCoTModel
    from emcot.summary import format_count, parameter_breakdown

    stats = None
    if args.preset:
        config = EmCoTConfig.from_preset(args.preset)
        with torch.device("meta"):
            model = EmCoTModel(config)
        title = f"preset {args.preset}"
    else:
        from emcot.checkpoint import load_model
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``emcot`` command."""
    parser = argparse.ArgumentParser(
        prog="emcot", description="Embodied multimodal chain-of-thought policies."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the bundled tiny policy and write a full trace")
    demo.add_argument("--out", default="emcot-demo", help="folder for reasoning.txt, subgoal.png, trace.json")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--mode", default="full", choices=["full", "reason", "reactive"])
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="generate a trace from image files")
    gen.add_argument("--policy", default="default", help="policy folder, or 'default'")
    gen.add_argument("--image", action="append", required=True, help="CAMERA=PATH (repeat per camera)")
    gen.add_argument("--state", default=None, help="comma-separated state vector in robot units")
    gen.add_argument("--instruction", required=True)
    gen.add_argument("--mode", default=None, choices=["full", "reason", "reactive"])
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default=None)
    gen.set_defaults(func=cmd_generate)

    frame = sub.add_parser("predict-frame", help="imagine the next frame from image files and a prompt")
    frame.add_argument("--policy", default="default", help="policy folder, or 'default'")
    frame.add_argument(
        "--image", action="append", required=True, help="context frame PATH (repeat, oldest first)"
    )
    frame.add_argument("--prompt", required=True, help="e.g. 'Imagine the next scene: push the block left.'")
    frame.add_argument("--out", required=True, help="where to write the predicted frame (.png)")
    frame.add_argument("--seed", type=int, default=0)
    frame.add_argument("--steps", type=int, default=None, help="denoising steps (default: the policy's)")
    frame.add_argument("--text-guidance", type=float, default=None)
    frame.add_argument("--image-guidance", type=float, default=None)
    frame.add_argument(
        "--no-vae-context", action="store_true", help="leave out the frames' clean VAE latent copies"
    )
    frame.set_defaults(func=cmd_predict_frame)

    info = sub.add_parser("info", help="summarise a policy folder or a preset")
    info.add_argument("folder", nargs="?")
    info.add_argument("--preset", default=None)
    info.set_defaults(func=cmd_info)

    from emcot.training.annotate_pipeline import add_annotate_arguments, run_annotate

    annotate = sub.add_parser(
        "annotate", help="annotate a LeRobot dataset with EM-CoT reasoning and subgoals"
    )
    add_annotate_arguments(annotate)
    annotate.set_defaults(func=run_annotate)

    from emcot.training.cli_train import add_train_arguments, run_train

    train = sub.add_parser("train", help="train with a YAML recipe (a path or a shipped recipe name)")
    add_train_arguments(train)
    train.set_defaults(func=run_train)

    from emcot.convert_halo import add_convert_arguments, run_convert

    convert = sub.add_parser("convert", help="convert checkpoints of other formats into emcot policies")
    formats = convert.add_subparsers(dest="format", required=True)
    halo = formats.add_parser(
        "halo", help="an official HALO/BAGEL checkpoint folder → an emcot policy folder"
    )
    add_convert_arguments(halo)
    halo.set_defaults(func=run_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``emcot`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info" and not (args.folder or args.preset):
        parser.error("info needs a FOLDER or --preset NAME")
    try:
        return int(args.func(args) or 0)
    except ValueError as err:
        print(f"emcot {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
