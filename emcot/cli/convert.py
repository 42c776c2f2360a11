"""``emcot convert halo SRC DST``: an official HALO/BAGEL checkpoint folder → an emcot policy folder."""

from __future__ import annotations

import argparse

import torch

from emcot.cli.args import output_folder, positive_int
from emcot.interop.halo import ROBOTWIN_HORIZON, convert_halo_checkpoint


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``convert halo`` arguments to ``parser``."""
    parser.add_argument(
        "src", help="HALO folder: ema.safetensors, llm_config.json, ae.safetensors, tokenizer"
    )
    parser.add_argument("dst", type=output_folder, help="output policy folder")
    parser.add_argument(
        "--base", default=None, help="pretrained HALO folder the fine-tune in SRC is applied over"
    )
    parser.add_argument(
        "--robot", default="robotwin", help="robot name for the (identity) normalisation stats"
    )
    parser.add_argument(
        "--camera", action="append", default=None, help="camera name, repeat per camera (default: head)"
    )
    parser.add_argument("--subgoal-size", type=positive_int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--horizon", type=positive_int, default=ROBOTWIN_HORIZON, help="action chunk length")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])


def run_convert(args: argparse.Namespace) -> int:
    """Convert the checkpoint named by the parsed :func:`add_convert_arguments` arguments."""
    out = convert_halo_checkpoint(
        args.src,
        args.dst,
        robot=args.robot,
        cameras=tuple(args.camera or ("head",)),
        base=args.base,
        subgoal_size=tuple(args.subgoal_size),
        action_horizon=args.horizon,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
    )
    print(f"converted HALO checkpoint {args.src} → emcot policy {out}")
    return 0
