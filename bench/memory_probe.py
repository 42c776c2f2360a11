"""Does a cue-task policy use its memory? For the push step of 40 held-out demos (seeds 5000+),
predict the chunk twice with the remembered first frame showing the cue on the left and on the
right, and print how far the predicted block target moves and how often it points to the cue.

    python bench/memory_probe.py runs/cue-history-tiny/final-ema
"""

from __future__ import annotations

import argparse

import numpy as np

from emcot.memory import select_history
from emcot.policy.policy import EmCoTPolicy
from emcot.synthetic.cue import CueConfig, cue_demos, instruction_for, render_cue
from emcot.types import HistoryStep, Observation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="a cue-task policy folder")
    parser.add_argument("--episodes", type=int, default=40)
    args = parser.parse_args()
    policy = EmCoTPolicy.from_pretrained(args.policy)
    config = CueConfig()
    shifts, toward = [], 0
    for demo in cue_demos(args.episodes, seed=5000):
        first, push = demo.steps[0], demo.steps[1]
        targets = {}
        for side in ("left", "right"):
            frame = render_cue(config, demo.color, first.state[2:], first.state[:2], side)
            history = select_history([HistoryStep(frame, first.state, first.executed)], policy.config.memory)
            trace = policy.generate_trace(
                Observation({"head": push.frame}, push.state),
                instruction_for(demo.color),
                mode="reactive",
                seed=0,
                history=history,
            )
            targets[side] = float(trace.actions[-1, 2])
        shifts.append(targets["right"] - targets["left"])
        toward += int((targets[demo.side] - 0.5) * (1 if demo.side == "right" else -1) > 0)
    print(
        f"block target x, right cue − left cue: {np.mean(shifts):.3f}; "
        f"pushes toward the cued side: {toward}/{len(shifts)}"
    )


if __name__ == "__main__":
    main()
