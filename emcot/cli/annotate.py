"""``emcot annotate``: a LeRobot dataset → EM-CoT reasoning and subgoals in a sidecar JSONL file."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from emcot.cli.args import finite_float, output_file
from emcot.training.annotation.annotators import (
    RuleAnnotator,
    RuleAnnotatorConfig,
    VLMAnnotator,
    VLMAnnotatorConfig,
)
from emcot.training.annotation.pipeline import ContextConfig, annotate_dataset, parse_episode_list
from emcot.training.annotation.primitives import ArmSpec, PrimitiveConfig
from emcot.training.annotation.sim_rules import SimRuleConfig
from emcot.training.annotation.vlm_backends import (
    OpenAIChatBackend,
    OpenAIConfig,
    RetryPolicy,
    TransformersBackend,
)
from emcot.training.data.lerobot import LeRobotDataset


def _vlm_config(args: argparse.Namespace) -> VLMAnnotatorConfig:
    config = VLMAnnotatorConfig(
        prompt_version=args.prompt_version,
        max_reply_attempts=args.reply_attempts,
        max_reasoning_words=args.max_reasoning_words,
        video_qa_pairs=args.video_qa,
    )
    if not args.model:
        raise ValueError(f"--backend {args.backend} needs --model (served model name or local model folder).")
    return config


def _openai_annotator(args: argparse.Namespace) -> VLMAnnotator:
    config = _vlm_config(args)
    if not args.endpoint:
        raise ValueError("--backend openai needs --endpoint, e.g. http://127.0.0.1:8000/v1.")
    api_key = args.api_key or os.environ.get("EMCOT_API_KEY") or os.environ.get("OPENAI_API_KEY")
    backend = OpenAIChatBackend(
        OpenAIConfig(
            endpoint=args.endpoint,
            model=args.model,
            api_key=api_key,
            timeout_s=args.timeout,
            requests_per_second=args.rps,
            max_concurrency=args.workers,
            retry=RetryPolicy(max_attempts=args.retries, backoff_s=args.backoff),
        )
    )
    return VLMAnnotator(backend, config)


def _transformers_annotator(args: argparse.Namespace) -> VLMAnnotator:
    config = _vlm_config(args)
    return VLMAnnotator(TransformersBackend(args.model, device=args.device, dtype=args.dtype), config)


# ``--backend`` name → the annotator it builds from the parsed arguments.
_ANNOTATORS: dict[str, Callable[[argparse.Namespace], VLMAnnotator | RuleAnnotator]] = {
    "rule": lambda args: RuleAnnotator(RuleAnnotatorConfig(sim=SimRuleConfig(aim_point=args.aim_points))),
    "openai": _openai_annotator,
    "transformers": _transformers_annotator,
}


def add_annotate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``annotate`` arguments to ``parser``."""
    parser.add_argument("dataset", help="LeRobot dataset folder (v2.1 or v3)")
    parser.add_argument("--backend", choices=list(_ANNOTATORS), default="rule")
    parser.add_argument(
        "--out", type=output_file, required=True, help="sidecar JSONL file (appended to; re-runs resume)"
    )
    parser.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="served model name (openai) or local model folder (transformers)")
    parser.add_argument("--api-key", help="bearer token; default from $EMCOT_API_KEY or $OPENAI_API_KEY")
    parser.add_argument("--episodes", help="subset such as 0,3,5-9 (default: all)")
    parser.add_argument("--camera", help="observation camera whose frames the VLM sees (default: first)")
    parser.add_argument("--cameras", help="camera mapping name=feature_key,... (default: all cameras)")
    parser.add_argument(
        "--arm", action="append", default=[], help="NAME:POSITIONS[:GRIPPER[:KIND]], repeatable"
    )
    parser.add_argument("--primitive-source", choices=["state", "action"], default="state")
    parser.add_argument("--idle-speed", type=finite_float, default=0.01)
    parser.add_argument("--gripper-change", type=finite_float, default=0.01)
    parser.add_argument("--min-idle-frames", type=int, default=3)
    parser.add_argument("--direction-share", type=finite_float, default=0.2)
    parser.add_argument("--max-images", type=int, default=8)
    parser.add_argument("--max-image-side", type=int, default=448)
    parser.add_argument("--workers", type=int, default=4, help="episodes annotated concurrently")
    parser.add_argument("--rps", type=finite_float, help="maximum requests per second to the endpoint")
    parser.add_argument("--timeout", type=finite_float, default=120.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3, help="attempts per request on transport errors")
    parser.add_argument("--backoff", type=finite_float, default=2.0, help="first retry delay in seconds")
    parser.add_argument("--reply-attempts", type=int, default=3, help="attempts per stage on invalid replies")
    parser.add_argument("--max-reasoning-words", type=int, default=50)
    parser.add_argument(
        "--video-qa",
        type=int,
        default=0,
        help="also ask the VLM for up to N video-QA pairs per episode about its past (0: none)",
    )
    parser.add_argument("--prompt-version", default="v1")
    parser.add_argument("--device", default="cpu", help="device of the transformers backend")
    parser.add_argument("--dtype", default="auto", help="dtype of the transformers backend")
    parser.add_argument(
        "--aim-points",
        action="store_true",
        help="rule backend on simulator data: end each sub-task's reasoning with its aim point "
        "('I aim at x -4 y 68 z 2.', the hand's place at its end in cm)",
    )
    parser.add_argument("--no-retry-failed", action="store_true", help="skip episodes recorded as failed")
    parser.add_argument("--no-progress", action="store_true")


def run_annotate(args: argparse.Namespace) -> int:
    """Annotate the dataset; returns 0 when every episode is annotated, 1 on failures (bad input raises)."""
    cameras = None
    if args.cameras:
        cameras = dict(item.split("=", 1) for item in args.cameras.split(","))
    dataset = LeRobotDataset(args.dataset, cameras=cameras)
    context = ContextConfig(
        arms=tuple(ArmSpec.parse(spec) for spec in args.arm),
        primitives=PrimitiveConfig(
            idle_speed=args.idle_speed,
            gripper_change=args.gripper_change,
            min_idle_frames=args.min_idle_frames,
            direction_share=args.direction_share,
        ),
        source=args.primitive_source,
        camera=args.camera,
        max_images=args.max_images,
        max_image_side=args.max_image_side,
    )
    if args.camera and args.camera not in dataset.cameras:
        raise ValueError(f"--camera {args.camera} is not one of {sorted(dataset.cameras)}.")
    if args.video_qa and args.backend == "rule":
        raise ValueError(
            "--video-qa asks a VLM; with the rule backend the questions about the past come from the "
            "simulator signals at training time (a lerobot_vqa source with history: true)."
        )
    annotator = _ANNOTATORS[args.backend](args)
    episodes = parse_episode_list(args.episodes) if args.episodes else None
    summary = annotate_dataset(
        dataset,
        annotator,
        args.out,
        context=context,
        episodes=episodes,
        workers=args.workers,
        retry_failed=not args.no_retry_failed,
        progress=not args.no_progress,
    )
    print(summary.format())
    return 1 if summary.failed else 0
