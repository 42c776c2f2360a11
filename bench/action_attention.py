"""Where the action chunk looks: attention of the action tokens per segment, and how sharp it is
inside the camera frame.

A recording wrapper around the SDPA kernel (``emcot.model.attention.BACKENDS``) keeps, for the last
denoising step of each control step, every layer's attention probabilities of the action queries
(``attention_weights``, the eager kernel's own).
Printed per layer: the share of attention on each segment role (camera, state, prompt, reasoning,
the chunk itself) and the entropy of the attention *within* the camera tokens, against log(N) for
uniform attention. Attention that is uniform over the patches reads their average, which keeps
what is in the picture but not where: an action expert that looks at the camera that way cannot
find an object's place however much weight it gives the camera.

    python bench/action_attention.py --policy default --data data/mw-held4 [--mode reason]
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict

import numpy as np
import torch

import emcot.model.attention as attention
from emcot.policy import EmCoTPolicy
from emcot.training.data.lerobot import LeRobotDataset
from emcot.types import Observation


class AttentionRecorder:
    """Wraps the SDPA kernel; keeps ``[heads, queries, keys]`` probabilities of ``query_count``-token calls."""

    def __init__(self, query_count: int) -> None:
        self.query_count = query_count
        self.calls: list[torch.Tensor] = []
        self.kernels = attention.BACKENDS[attention.AttentionBackend.SDPA]

    def attend(self, q, k, v, mask, groups):
        if q.shape[2] == self.query_count:
            self.calls.append(attention.attention_weights(q, k, mask, groups)[0])
        return self.kernels.attend(q, k, v, mask, groups)

    def __enter__(self) -> AttentionRecorder:
        kernels = self.kernels
        wrapped = attention.BackendKernels(kernels.make_mask, self.attend, kernels.per_row_masks)
        attention.BACKENDS[attention.AttentionBackend.SDPA] = wrapped
        return self

    def __exit__(self, *exc) -> None:
        attention.BACKENDS[attention.AttentionBackend.SDPA] = self.kernels


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", required=True, help="policy folder or bundled name")
    parser.add_argument("--data", required=True, help="LeRobot dataset whose frames and states to use")
    parser.add_argument("--mode", default="reactive", choices=["full", "reason", "reactive"])
    parser.add_argument("--frames", default="5,40", help="frame indices of each episode")
    parser.add_argument("--every-episode", type=int, default=4, help="use every n-th episode")
    args = parser.parse_args()
    torch.set_num_threads(2)
    policy = EmCoTPolicy.load(args.policy)
    if policy.model.config.attention_backend != "sdpa":
        raise SystemExit("the recorder wraps the sdpa kernel; load a policy whose attention_backend is sdpa")
    dataset = LeRobotDataset(args.data)
    camera = policy.cameras[0]
    data_camera = camera if camera in dataset.cameras else next(iter(dataset.cameras))
    layers = policy.model.config.experts["act"].num_layers
    shares: list[dict[str, list[float]]] = [defaultdict(list) for _ in range(layers)]
    entropy: list[list[float]] = [[] for _ in range(layers)]
    camera_tokens = 0
    with AttentionRecorder(policy.config.action.horizon) as recorder:
        for index in dataset.episode_indices[:: args.every_episode]:
            episode = dataset.episode(index)
            images = episode.images(data_camera)
            for t in (int(f) for f in args.frames.split(",")):
                if t >= len(episode):
                    continue
                recorder.calls.clear()
                observation = Observation(images={camera: images[t]}, state=episode.states[t])
                trace = policy.generate_trace(observation, episode.instruction, mode=args.mode, seed=t)
                segments = trace.layout.segments
                starts = np.cumsum([0] + [s.length for s in segments])
                for layer, probs in enumerate(recorder.calls[-layers:]):  # the last denoising step
                    mean = probs.mean((0, 1))
                    per_role: dict[str, float] = defaultdict(float)
                    for segment, lo, hi in zip(segments, starts[:-1], starts[1:], strict=True):
                        per_role[segment.role] += float(mean[lo:hi].sum())
                        if segment.role == "camera":
                            inside = probs[..., lo:hi] / probs[..., lo:hi].sum(-1, keepdim=True)
                            spread = -(inside * inside.clamp_min(1e-12).log()).sum(-1)
                            entropy[layer].append(float(spread.mean()))
                            camera_tokens = hi - lo
                    for role, value in per_role.items():
                        shares[layer][role].append(value)
    roles = list(dict.fromkeys(role for layer in shares for role in layer))
    frames = len(entropy[0])
    print(f"policy {args.policy}, {args.mode} mode, {frames} frames: action queries' attention per layer")
    uniform = math.log(camera_tokens)
    print("| layer | " + " | ".join(roles) + f" | entropy within camera (uniform {uniform:.2f}) |")
    print("|" + "---|" * (len(roles) + 2))
    for layer in range(layers):
        cells = [f"{np.mean(shares[layer][role]):.3f}" if shares[layer][role] else "—" for role in roles]
        print(f"| {layer} | " + " | ".join(cells) + f" | {np.mean(entropy[layer]):.2f} |")


if __name__ == "__main__":
    main()
