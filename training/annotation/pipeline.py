"""Annotate a LeRobot dataset with EM-CoT traces: primitives → annotator → sidecar JSONL.

Resumable: episodes already in the output file with ``status: "ok"`` are skipped, failed ones
are retried unless ``retry_failed`` is off, and every finished episode is appended and fsynced
at once, so an interrupted run loses nothing already written. ``emcot annotate`` wraps
``annotate_dataset`` through ``add_annotate_arguments`` / ``run_annotate``.
"""

from __future__ import annotations

import argparse
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from emcot.training.annotation.annotations import AnnotationWriter, EpisodeAnnotation, read_annotations
from emcot.training.annotation.annotators import (
    EpisodeContext,
    RuleAnnotator,
    VLMAnnotator,
    VLMAnnotatorConfig,
)
from emcot.training.annotation.primitives import ArmSpec, PrimitiveConfig, extract_primitives
from emcot.training.annotation.vlm_backends import (
    BackendError,
    OpenAIChatBackend,
    OpenAIConfig,
    RetryPolicy,
    TransformersBackend,
)
from emcot.training.data.lerobot import LeRobotDataset, LeRobotEpisode


@dataclass(frozen=True)
class ContextConfig:
    """How an episode is summarised for the annotator.

    ``arms`` empty means one arm whose end-effector x, y, z are the first three entries of the
    vector and whose gripper is the last. ``source`` picks the vector: ``state`` or ``action``.
    """

    arms: tuple[ArmSpec, ...] = ()
    primitives: PrimitiveConfig = PrimitiveConfig()
    source: str = "state"
    camera: str | None = None
    max_images: int = 8
    max_image_side: int = 448

    def __post_init__(self):
        if self.source not in ("state", "action"):
            raise ValueError(f"source must be 'state' or 'action', got {self.source!r}.")
        if self.max_images < 0 or self.max_image_side < 16:
            raise ValueError("max_images must be >= 0 and max_image_side >= 16.")


def keyframe_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly from the first to the last frame."""
    if count <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, min(count, num_frames))})


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def build_context(
    episode: LeRobotEpisode, config: ContextConfig, dataset_name: str = "", with_images: bool = True
) -> EpisodeContext:
    """Extract primitives and keyframes of one episode for an annotator."""
    # NaN/inf would pass through the primitive thresholds unnoticed and yield an "ok" annotation.
    episode.check_finite()
    vectors = episode.states if config.source == "state" else episode.actions
    if vectors is None:
        raise ValueError(
            f"Episode {episode.episode_index} has no {config.source} vectors; choose --primitive-source."
        )
    arms = config.arms
    if not arms:
        if vectors.shape[1] < 4:
            raise ValueError(
                f"The default arm needs >= 4 {config.source} dims (x, y, z, gripper); pass --arm specs."
            )
        arms = (ArmSpec("", (0, 1, 2), vectors.shape[1] - 1),)
    primitives = extract_primitives(vectors, arms, config.primitives)
    keyframes, images = [], []
    if with_images and config.max_images > 0 and episode.cameras:
        camera = config.camera or next(iter(episode.cameras))
        frames = episode.images(camera)
        keyframes = keyframe_indices(len(episode), config.max_images)
        images = [_shrink(frames[t], config.max_image_side) for t in keyframes]
    return EpisodeContext(
        episode_index=episode.episode_index,
        instruction=episode.instruction,
        num_frames=len(episode),
        fps=episode.fps,
        primitives=primitives,
        keyframes=keyframes,
        images=images,
        dataset=dataset_name,
    )


@dataclass
class AnnotateSummary:
    """What a run did: counts and the reason of every failure."""

    out_path: Path
    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    failures: dict[int, str] = field(default_factory=dict)

    def format(self) -> str:
        """Human-readable summary."""
        lines = [
            f"annotated {self.ok} ok, {self.failed} failed, {self.skipped} already done, of {self.total} episodes "
            f"-> {self.out_path}"
        ]
        lines += [f"  episode {index}: {reason}" for index, reason in sorted(self.failures.items())]
        return "\n".join(lines)


def annotate_dataset(
    dataset: LeRobotDataset,
    annotator: VLMAnnotator | RuleAnnotator,
    out_path: str | Path,
    context: ContextConfig | None = None,
    episodes: list[int] | None = None,
    workers: int = 1,
    retry_failed: bool = True,
    progress: bool = True,
) -> AnnotateSummary:
    """Annotate ``episodes`` (default: all) of ``dataset`` into the sidecar file ``out_path``."""
    context = context or ContextConfig()
    if workers < 1:
        raise ValueError("workers must be >= 1.")
    wanted = dataset.episode_indices if episodes is None else episodes
    for index in wanted:
        dataset.record(index)
    done = read_annotations(out_path)
    summary = AnnotateSummary(Path(out_path), total=len(wanted))
    todo = []
    for index in wanted:
        previous = done.get(index)
        if previous is not None and (previous.status == "ok" or not retry_failed):
            summary.skipped += 1
        else:
            todo.append(index)
    with_images = isinstance(annotator, VLMAnnotator)
    read_lock = threading.Lock()

    def work(index: int) -> EpisodeAnnotation:
        # Decoding shares the dataset's file cache, so reads are serialised; annotation is not.
        with read_lock:
            try:
                episode = dataset.episode(index)
                ctx = build_context(episode, context, dataset.name, with_images)
            except ValueError as exc:
                record = dataset.record(index)
                instruction = record.tasks[0] if record.tasks else ""
                blank = EpisodeContext(
                    index, instruction, record.length, dataset.fps, [], dataset=dataset.name
                )
                return blank.failed(f"reading: {exc}", annotator.info, annotator.prompt_versions)
        try:
            return annotator.annotate(ctx)
        except (BackendError, ValueError) as exc:
            return ctx.failed(f"{type(exc).__name__}: {exc}", annotator.info, annotator.prompt_versions)

    bar = tqdm(total=len(todo), desc="annotate", unit="ep", disable=not progress)
    with AnnotationWriter(out_path) as writer, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(work, index): index for index in todo}
        try:
            for future in as_completed(futures):
                annotation = future.result()
                writer.write(annotation)
                if annotation.status == "ok":
                    summary.ok += 1
                else:
                    summary.failed += 1
                    summary.failures[annotation.episode_index] = annotation.error or "unknown"
                bar.update(1)
                bar.set_postfix(ok=summary.ok, failed=summary.failed)
        except BaseException:
            # Ctrl-C or a bug: drop queued episodes; the lines already written stay valid.
            for pending in futures:
                pending.cancel()
            raise
        finally:
            bar.close()
    return summary


def parse_episode_list(text: str) -> list[int]:
    """Parse "0,3,5-9" into [0, 3, 5, 6, 7, 8, 9]."""
    out: list[int] = []
    try:
        for item in text.split(","):
            lo, _, hi = item.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError as exc:
        raise ValueError(f"--episodes {text!r} must look like 0,3,5-9.") from exc
    return out


def add_annotate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``emcot annotate`` arguments to ``parser``."""
    parser.add_argument("dataset", help="LeRobot dataset folder (v2.1 or v3)")
    parser.add_argument("--backend", choices=["rule", "openai", "transformers"], default="rule")
    parser.add_argument("--out", required=True, help="sidecar JSONL file (appended to; re-runs resume)")
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
    parser.add_argument("--idle-speed", type=float, default=0.01)
    parser.add_argument("--gripper-change", type=float, default=0.01)
    parser.add_argument("--min-idle-frames", type=int, default=3)
    parser.add_argument("--direction-share", type=float, default=0.2)
    parser.add_argument("--max-images", type=int, default=8)
    parser.add_argument("--max-image-side", type=int, default=448)
    parser.add_argument("--workers", type=int, default=4, help="episodes annotated concurrently")
    parser.add_argument("--rps", type=float, help="maximum requests per second to the endpoint")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3, help="attempts per request on transport errors")
    parser.add_argument("--backoff", type=float, default=2.0, help="first retry delay in seconds")
    parser.add_argument("--reply-attempts", type=int, default=3, help="attempts per stage on invalid replies")
    parser.add_argument("--max-reasoning-words", type=int, default=50)
    parser.add_argument("--prompt-version", default="v1")
    parser.add_argument("--device", default="cpu", help="device of the transformers backend")
    parser.add_argument("--dtype", default="auto", help="dtype of the transformers backend")
    parser.add_argument("--no-retry-failed", action="store_true", help="skip episodes recorded as failed")
    parser.add_argument("--no-progress", action="store_true")


def _annotator_from_args(args: argparse.Namespace) -> VLMAnnotator | RuleAnnotator:
    if args.backend == "rule":
        return RuleAnnotator()
    config = VLMAnnotatorConfig(
        prompt_version=args.prompt_version,
        max_reply_attempts=args.reply_attempts,
        max_reasoning_words=args.max_reasoning_words,
    )
    if not args.model:
        raise ValueError(f"--backend {args.backend} needs --model (served model name or local model folder).")
    if args.backend == "openai":
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
    return VLMAnnotator(TransformersBackend(args.model, device=args.device, dtype=args.dtype), config)


def run_annotate(args: argparse.Namespace) -> int:
    """Run ``emcot annotate``; returns 0 when every episode is annotated, 1 on failures (bad input raises)."""
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
    annotator = _annotator_from_args(args)
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
