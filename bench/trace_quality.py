"""Trace quality on held-out demos: is the imagined subgoal the scene at the end of the sub-task,
and is the reasoning the annotated one?

For frames of annotated episodes (collect them with evaluation seeds, disjoint from the training
demos: ``emcot collect metaworld --seed 1000 ...`` then ``emcot annotate --backend rule``) the
policy generates a full trace. The subgoal is scored by PSNR (dB, at the codec's resolution)
against the real frame that ends the current sub-task, next to three references: copying the
current frame (what "no imagination" scores), the codec's own reconstruction of the real subgoal
(the ceiling the latent space allows), and the same trace with guidance off (``cfg 1``). Reasoning
is scored by exact match with the annotation's text for that frame and, when the annotation writes
aim points (``sim-rules-v2``), by the distance in cm between the aim point the policy wrote and the
annotated one (``aim cm``; a reasoning without one counts in ``aim missing``) next to always
writing the task's mean aim point for that sub-task (``aim cm task mean``: what a policy blind to the
scene could do at best).

    python bench/trace_quality.py --policy runs/mw-stage2-small/final --data /work/data/mw-heldout \\
        [--frames-per-subtask 2] [--sheet docs/images/metaworld_trace.png]

``--sheet`` writes a picture: observation | imagined subgoal | real frame reached, one row per
task (the first sampled frame of each task's first episode).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emcot.policy import EmCoTPolicy
from emcot.tokenizers.vae import resize_rgb
from emcot.training.annotation.annotations import read_annotations
from emcot.training.annotation.sim_rules import parse_aim
from emcot.training.codec import psnr
from emcot.training.data.emcot_samples import format_reasoning
from emcot.training.data.lerobot import LeRobotDataset
from emcot.types import Observation


def frames_of(annotation, per_subtask: int) -> list[tuple[int, int]]:
    """``(frame, subtask index)`` pairs: evenly spaced frames in the first half of each sub-task."""
    picks = []
    for index, subtask in enumerate(annotation.subtasks):
        last = max(subtask.start, (subtask.start + subtask.end) // 2)
        for t in np.linspace(subtask.start, last, per_subtask).round().astype(int):
            picks.append((int(t), index))
    return list(dict.fromkeys(picks))


@torch.no_grad()
def reconstruction(policy: EmCoTPolicy, image: np.ndarray) -> np.ndarray:
    """The codec's encode → decode of ``image`` at the subgoal size (the latent-space ceiling)."""
    codec = policy.model.latent_codec
    assert codec is not None
    pixels = codec.preprocess(image)[None].to(policy.model.device, policy.model.dtype)
    return np.asarray(codec.postprocess(codec.decode(codec.encode(pixels, sample=False))[0]).convert("RGB"))


class Scorer:
    """Scores traces of one policy on the frames of annotated held-out episodes."""

    def __init__(
        self,
        policy: EmCoTPolicy,
        dataset: LeRobotDataset,
        seed: int,
        mean_aims: dict[tuple[str, int], np.ndarray],
    ) -> None:
        codec = policy.model.latent_codec
        if codec is None:
            raise SystemExit("this policy has no latent codec, so it imagines no subgoal")
        self.policy, self.dataset, self.seed, self.mean_aims = policy, dataset, seed, mean_aims
        self.size = tuple(codec.config.image_size)
        self.camera = policy.cameras[0]
        self.data_camera = self.camera if self.camera in dataset.cameras else next(iter(dataset.cameras))
        self.seconds, self.traces = 0.0, 0

    def frame(self, episode, annotation, t: int, sub: int) -> tuple[dict[str, float], tuple]:
        """The scores of one frame's trace, and its sheet row (observation, imagined, real, reasoning)."""
        frames = episode.images(self.data_camera)
        seen = episode.observation(t, [self.data_camera])
        observation = Observation(images={self.camera: seen.images[self.data_camera]}, state=seen.state)
        end = frames[annotation.subtasks[sub].subgoal_frame]
        real = resize_rgb(end, self.size)
        seed = self.seed + 1000 * episode.episode_index + t
        start = time.perf_counter()
        trace = self.policy.generate_trace(observation, episode.instruction, mode="full", seed=seed)
        self.seconds, self.traces = self.seconds + time.perf_counter() - start, self.traces + 1
        plain = self.policy.generate_trace(
            observation, episode.instruction, mode="full", seed=seed, text_guidance=1.0, image_guidance=1.0
        )
        imagined = np.asarray(trace.subgoal.convert("RGB"))
        scores = {
            "subgoal": psnr(imagined, real),
            "subgoal cfg 1": psnr(np.asarray(plain.subgoal.convert("RGB")), real),
            "copy current": psnr(resize_rgb(frames[t], self.size), real),
            "codec ceiling": psnr(reconstruction(self.policy, real), real),
            "reasoning exact": float(trace.reasoning.strip() == format_reasoning(annotation, sub, t).strip()),
        }
        target = parse_aim(annotation.subtasks[sub].reasoning)
        if target is not None:
            written = parse_aim(trace.reasoning)
            scores["aim missing"] = float(written is None)
            scores["aim cm"] = np.nan if written is None else 100 * float(np.linalg.norm(written - target))
            mean = self.mean_aims[(episode.instruction, sub)]
            scores["aim cm task mean"] = 100 * float(np.linalg.norm(mean - target))
        return scores, (frames[t], imagined, end, trace.reasoning)


def mean_aims(per_task: dict[str, list[int]], annotations: dict) -> dict[tuple[str, int], np.ndarray]:
    """(task, sub-task index) → the mean annotated aim point over the task's episodes."""
    aims: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    for task, indices in per_task.items():
        for index in indices:
            for sub, subtask in enumerate(annotations[index].subtasks):
                aim = parse_aim(subtask.reasoning)
                if aim is not None:
                    aims[(task, sub)].append(aim)
    return {key: np.mean(values, axis=0) for key, values in aims.items()}


def write_sheet(rows: list[tuple], path: Path, side: int = 128) -> None:
    """observation | imagined subgoal | real frame reached, one row each."""
    sheet = Image.new("RGB", (3 * side, len(rows) * side), "white")
    for i, row in enumerate(rows):
        for j, image in enumerate(row[1:4]):
            picture = Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC)
            sheet.paste(picture, (j * side, i * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    print(f"wrote {path} (columns: observation | imagined subgoal | real frame reached)")


def report(scores: dict[str, dict[str, list[float]]], scorer: Scorer, label: str) -> dict[str, float]:
    """Print the per-task table; returns the task-mean of each column."""
    columns = list(next(iter(scores.values())))
    means = {c: float(np.mean([np.nanmean(row[c]) for row in scores.values()])) for c in columns}
    per_trace = 1000 * scorer.seconds / max(scorer.traces, 1)
    print(f"\npolicy {label}; {scorer.traces} traces, {per_trace:.0f} ms per full trace")
    print("| task | " + " | ".join(columns) + " |")
    print("|" + "---|" * (len(columns) + 1))
    for task, row in scores.items():
        print(f"| {task} | " + " | ".join(f"{np.nanmean(row[c]):.2f}" for c in columns) + " |")
    print("| **mean** | " + " | ".join(f"{means[c]:.2f}" for c in columns) + " |")
    print(
        "(PSNR in dB at the codec's resolution vs the real end-of-sub-task frame; reasoning: exact-match "
        "rate; aim: cm from the annotated aim point, missing = rate of reasoning without one)"
    )
    return means


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", required=True, help="policy folder or bundled name")
    parser.add_argument("--data", required=True, help="LeRobot dataset of held-out demos")
    parser.add_argument("--annotations", help="default: DATA/annotations.jsonl")
    parser.add_argument("--episodes-per-task", type=int, default=3)
    parser.add_argument("--frames-per-subtask", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", type=Path, help="write observation | subgoal | real picture here")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()

    dataset = LeRobotDataset(args.data)
    annotations = read_annotations(args.annotations or Path(args.data) / "annotations.jsonl")
    per_task: dict[str, list[int]] = defaultdict(list)
    for index in dataset.episode_indices:
        if index in annotations and annotations[index].status == "ok":
            per_task[dataset.episode(index).instruction].append(index)
    scorer = Scorer(EmCoTPolicy.load(args.policy), dataset, args.seed, mean_aims(per_task, annotations))
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    sheet_rows = []
    for task, indices in per_task.items():
        for n, episode_index in enumerate(indices[: args.episodes_per_task]):
            episode, annotation = dataset.episode(episode_index), annotations[episode_index]
            for k, (t, sub) in enumerate(frames_of(annotation, args.frames_per_subtask)):
                frame_scores, row = scorer.frame(episode, annotation, t, sub)
                for key, value in frame_scores.items():
                    scores[task][key].append(value)
                if n == 0 and k == 0:
                    sheet_rows.append((task, *row))
        print(
            f"{task}: " + ", ".join(f"{k} {np.nanmean(v):.2f}" for k, v in scores[task].items()), flush=True
        )
    means = report(scores, scorer, args.policy)
    for task, *_, reasoning in sheet_rows:
        print(f"  {task}: {reasoning!r}")
    if args.json:
        tasks = {t: {c: float(np.nanmean(v)) for c, v in row.items()} for t, row in scores.items()}
        payload = {"policy": args.policy, "data": args.data, "means": means, "tasks": tasks}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    if args.sheet and sheet_rows:
        write_sheet(sheet_rows, args.sheet)


if __name__ == "__main__":
    main()
