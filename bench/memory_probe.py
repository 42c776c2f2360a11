"""Does a cue-task policy use its memory, or a shortcut? For the push step of 40 held-out demos
(seeds 5000+), predict the chunk with the remembered first frame showing the cue on the left and
on the right, and print how far the predicted block target moves and how often it points to the
cue; then, with the true cue kept, repaint the block (history, current frame and instruction) in a
colour of the left group and of the right group (``SIDE_COLORS``, the shortcut of the
``cue-shortcut-*`` recipes) and print how far the colour moves it. ``--vqa`` also asks "Which side
did the light show?" at the push step and counts how often the model finds the true answer more
likely than the other side (teacher-forced ``vqa`` loss; 50 % = it does not read the cue).

    python bench/memory_probe.py runs/cue-history-tiny/final-ema
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from emcot.memory import select_history
from emcot.policy.policy import EmCoTPolicy
from emcot.synthetic.cue import SIDE_COLORS, CueConfig, CueDemo, cue_demos, instruction_for, render_cue
from emcot.types import HistoryStep, Observation


def push_target(policy: EmCoTPolicy, demo: CueDemo, cue_side: str, color: str) -> float:
    """The block target x the policy predicts at the push step for this cue and block colour."""
    config, first, push = CueConfig(), demo.steps[0], demo.steps[1]
    frame = render_cue(config, color, first.state[2:], first.state[:2], cue_side)
    current = render_cue(config, color, push.state[2:], push.state[:2], None)
    history = select_history([HistoryStep(frame, first.state, first.executed)], policy.config.memory)
    trace = policy.generate_trace(
        Observation({"head": current}, push.state),
        instruction_for(color),
        mode="reactive",
        seed=0,
        history=history,
    )
    return float(trace.actions[-1, 2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="a cue-task policy folder")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--vqa", action="store_true", help="also score the video-QA answer about the cue")
    args = parser.parse_args()
    policy = EmCoTPolicy.from_pretrained(args.policy)
    cue_shifts, color_shifts, toward = [], [], 0
    demos = cue_demos(args.episodes, seed=5000)
    for demo in demos:
        by_cue = {side: push_target(policy, demo, side, demo.color) for side in ("left", "right")}
        cue_shifts.append(by_cue["right"] - by_cue["left"])
        toward += int((by_cue[demo.side] - 0.5) * (1 if demo.side == "right" else -1) > 0)
        k = len(cue_shifts) % 2  # alternate the colours of each group
        by_color = {
            side: push_target(policy, demo, demo.side, SIDE_COLORS[side][k]) for side in ("left", "right")
        }
        color_shifts.append(by_color["right"] - by_color["left"])
    print(
        f"block target x, right cue − left cue: {np.mean(cue_shifts):.3f}; "
        f"pushes toward the cued side: {toward}/{len(cue_shifts)}"
    )
    print(
        f"block target x, right-group colour − left-group colour (true cue kept): {np.mean(color_shifts):.3f}"
    )
    if args.vqa:
        right = sum(answer_loss(policy, d, d.side) < answer_loss(policy, d, other(d.side)) for d in demos)
        print(f"video-QA 'Which side did the light show?': true side more likely in {right}/{len(demos)}")


def other(side: str) -> str:
    """The side that is not ``side``."""
    return "right" if side == "left" else "left"


def answer_loss(policy: EmCoTPolicy, demo: CueDemo, side: str) -> float:
    """Teacher-forced loss of answering ``side`` to the cue question at the demo's push step."""
    import torch

    from emcot.synthetic.cue import cue_vqa_samples
    from emcot.training.collate import SampleCollator

    sample = cue_vqa_samples([demo])[0]  # asked at step 1, with step 0 (the cue frame) as history
    sample = dataclasses.replace(sample, reasoning=f"The light showed the {side}.", metadata={})
    batch = SampleCollator(policy.processor)([sample], rng=np.random.default_rng(0))
    with torch.no_grad():
        return float(policy.model.compute_loss(batch, torch.Generator().manual_seed(0)).terms["vqa"])


if __name__ == "__main__":
    main()
