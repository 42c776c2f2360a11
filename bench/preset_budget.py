"""Sizing the ``small`` preset: parameters and training tokens/s of candidate sizes on this CPU.

Each candidate is the ``small`` architecture (:func:`emcot.presets.small_sized`) at another width,
depth or image geometry, trained on the same Meta-World-like mixture the ``mw-*`` recipes use:
EM-CoT traces (128 px frame, 4-d state, reasoning as the rule annotator writes it, 64 px subgoal,
8-step chunk), action-only samples, VQA turns and future-frame samples (3 context frames). A step
is the trainer's: pack to a token budget, collate, ``compute_loss``, backward, AdamW. Candidates
alternate step by step, so a machine shared with another job slows all of them alike; the 1-minute
load average is printed so a noisy run can be recognised (and repeated).

    python bench/preset_budget.py [--steps 6] [--budget 1536] [--hours 2]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from emcot.config import EmCoTConfig
from emcot.model.modeling import EmCoTModel
from emcot.policy.processor import EmCoTProcessor, ProcessorConfig
from emcot.presets import SmallSize, small_sized
from emcot.tokenizers.actions import NormStats, RobotNormStats
from emcot.tokenizers.text import SentencePieceTextTokenizer
from emcot.training.collate import SampleCollator
from emcot.training.packing import PackingConfig, TokenPacker
from emcot.types import EmCoTSample, Observation, SampleKind

# What the rule annotator writes for a pick-place frame (format_reasoning: plan, subtask, movement).
REASONING = (
    "<|plan|>The puck is on the table in front of me and the goal is to its right. I will reach the puck, "
    "grasp it, move it to the goal and place it at the goal.\n<|subtask|>Grasp the puck. I close my "
    "gripper on the puck so that it is held firmly before I lift it.\n<|movement|>move down; close the gripper"
)
TASK = "Pick and place a puck to a goal."
CANDIDATES = {
    "h128-l4": SmallSize(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=384),
    "h192-l6": SmallSize(),
    "h256-l6": SmallSize(hidden_size=256, num_layers=6, num_heads=8, intermediate_size=768),
}
GEOMETRY = {"128px/16": {}, "64px/8": {"image_px": 64, "vision_patch": 8}}


def frames(n: int, px: int, seed: int) -> np.ndarray:
    """Smooth moving gradients (uint8 (n, px, px, 3)): decodable like rendered frames, never constant."""
    y, x = np.mgrid[0:px, 0:px]
    return np.asarray(
        [
            np.stack([(x * 2 + t * 5 + seed) % 256, (y * 3) % 256, np.full_like(x, t * 7 % 256)], -1)
            for t in range(n)
        ],
        dtype=np.uint8,
    )


def mixture(n: int, horizon: int = 8) -> list[EmCoTSample]:
    """Traces, action-only, VQA and generation samples in the proportions of mw-stage2-small."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image = frames(4, 128, i)
        obs = Observation({"corner2": image[3]}, state=rng.normal(size=4).astype(np.float32))
        actions = rng.normal(size=(horizon, 4)).astype(np.float32)
        out.append(EmCoTSample(obs, TASK, reasoning=REASONING, subgoal=image[0], actions=actions))
        out.append(EmCoTSample(obs, TASK, actions=actions))
        turns = [
            ("Where is the gripper?", "The gripper is high, left and near the robot."),
            ("What is the task?", TASK),
        ]
        vqa = Observation({"image0": image[3]})
        out.append(
            EmCoTSample(
                vqa, turns[0][0], reasoning=turns[0][1], kind=SampleKind.VQA, metadata={"turns": turns}
            )
        )
        context = Observation({f"frame_{j}": image[j] for j in range(3)})
        prompt = f"Imagine the next scene: {TASK}"
        out.append(EmCoTSample(context, prompt, subgoal=image[3], kind=SampleKind.GENERATION))
    return out


@dataclass
class Candidate:
    """One size under measurement: its collator, model and optimizer, and the measured totals."""

    collate: SampleCollator
    model: EmCoTModel
    opt: torch.optim.Optimizer
    tokens: int = 0
    seconds: float = 0.0


def build(size: SmallSize, tokenizer: SentencePieceTextTokenizer) -> Candidate:
    """A fresh model of ``size`` with the tokenizer and unit statistics."""
    torch.manual_seed(0)
    config = EmCoTConfig(**small_sized(replace(size, vocab_size=len(tokenizer))))
    model = EmCoTModel(config).train()
    unit = NormStats.compute(np.random.default_rng(0).normal(size=(256, 4)))
    stats = RobotNormStats({"default": {"action": unit, "state": unit}})
    processor = EmCoTProcessor(config, tokenizer, stats, ProcessorConfig(cameras=["corner2"]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    return Candidate(SampleCollator(processor), model, opt)


def measure(candidates: dict[str, Candidate], samples: list[EmCoTSample], budget: int, steps: int) -> None:
    """Train each candidate ``steps`` steps (after one warm-up) on packs of the mixture, alternating."""
    gen = torch.Generator().manual_seed(0)
    packers = {
        name: TokenPacker(
            [samples], [1.0], c.collate.num_tokens, PackingConfig(budget, int(budget * 1.5)), seed=0
        )
        for name, c in candidates.items()
    }
    for step in range(steps + 1):
        for name, c in candidates.items():
            pack = packers[name].next_pack()
            start = time.perf_counter()
            batch = c.collate(pack)
            loss = c.model.compute_loss(batch, gen).loss
            c.opt.zero_grad()
            loss.backward()
            c.opt.step()
            if step:
                c.tokens += batch.num_tokens
                c.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--budget", type=int, default=1536, help="expected tokens per packed sequence")
    parser.add_argument("--hours", type=float, default=2.0, help="training time the budget column assumes")
    parser.add_argument(
        "--geometry", action="store_true", help="compare 128px/16 with 64px/8 at the default size"
    )
    args = parser.parse_args()
    samples = mixture(6)
    tokenizer = SentencePieceTextTokenizer.train(
        [REASONING, TASK, "Where is the gripper?"] * 4, vocab_size=512
    )
    sizes = (
        {f"h192-l6 {g}": replace(SmallSize(), **o) for g, o in GEOMETRY.items()}
        if args.geometry
        else CANDIDATES
    )
    candidates = {name: build(size, tokenizer) for name, size in sizes.items()}
    first = next(iter(candidates.values())).collate
    lengths: dict[str, int] = {}
    for s in samples:
        kind = "action-only" if s.kind == SampleKind.TRACE and s.reasoning is None else s.kind.value
        lengths[kind] = max(lengths.get(kind, 0), first.num_tokens(s))
    print(
        f"{torch.get_num_threads()} threads, fp32, load {os.getloadavg()[0]:.2f}; pack budget {args.budget}"
    )
    print("sample tokens: " + ", ".join(f"{k} {n}" for k, n in lengths.items()))
    measure(candidates, samples, args.budget, args.steps)
    for name, c in candidates.items():
        params = sum(p.numel() for p in c.model.parameters()) / 1e6
        rate = c.tokens / c.seconds
        print(
            f"{name:>18}: {params:6.2f} M params, {rate:7.0f} tokens/s, "
            f"{c.seconds / args.steps:5.2f} s/step, {rate * 3600 * args.hours / 1e6:5.1f} M tokens in {args.hours:g} h"
        )
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
