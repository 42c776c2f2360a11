"""Annotate a LeRobot dataset with EM-CoT traces: primitives → annotator → sidecar JSONL.

Resumable: episodes already in the output file with ``status: "ok"`` are skipped, failed ones
are retried unless ``retry_failed`` is off, and every finished episode is appended and fsynced
at once, so an interrupted run loses nothing already written. ``emcot annotate`` wraps
``annotate_dataset``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from emcot.training.annotation.annotations import AnnotationWriter, EpisodeAnnotation, read_annotations
from emcot.training.annotation.annotators import EpisodeContext, RuleAnnotator, VLMAnnotator
from emcot.training.annotation.primitives import ArmSpec, PrimitiveConfig, extract_primitives
from emcot.training.annotation.sim_rules import SIM_PREFIX
from emcot.training.annotation.vlm_backends import BackendError
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
    """Extract primitives and keyframes of one episode for an annotator, with its ``sim.*`` columns."""
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
        signals=episode.columns(SIM_PREFIX),
        states=episode.states,
        actions=episode.actions,
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
    *,
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
