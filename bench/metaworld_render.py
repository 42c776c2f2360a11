"""Meta-World render + physics speed (prints numbers, asserts nothing).

Frames per second of one env step plus one ``corner2`` render, at 64 / 128 / 224 px, with
MuJoCo's default visual settings and with the fast settings (shadows, anti-aliasing and
reflections off; ``emcot.eval.envs.metaworld.fast_render_settings``), and physics alone for reference.

python bench/metaworld_render.py [--task drawer-open-v3] [--steps 60] [--sizes 64,128,224]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from emcot.eval.envs.metaworld import MetaWorldConfig, MetaWorldEnv


def steps_per_second(env: MetaWorldEnv, steps: int, seed: int = 1000) -> float:
    """Env steps per second (each step renders the env's cameras), after one warm-up step."""
    rng = np.random.default_rng(0)
    env.reset(seed)
    env.step(rng.uniform(-1, 1, 4))
    started = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(-1, 1, 4))
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="drawer-open-v3")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--sizes", default="64,128,224")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    with MetaWorldEnv(args.task, MetaWorldConfig(cameras=())) as env:
        physics = steps_per_second(env, 400)
    print(f"task {args.task}, MUJOCO_GL={os.environ.get('MUJOCO_GL')}, {os.cpu_count()} CPUs")
    print(f"physics only: {physics:8.0f} steps/s")
    print(f"{'px':>5} | {'default fps':>11} | {'fast fps':>8} | speed-up")
    for size in sizes:
        rates = []
        for fast in (False, True):
            with MetaWorldEnv(args.task, MetaWorldConfig(resolution=size, fast_render=fast)) as env:
                rates.append(steps_per_second(env, args.steps))
        print(f"{size:>5} | {rates[0]:>11.1f} | {rates[1]:>8.1f} | {rates[1] / rates[0]:.1f}x")


if __name__ == "__main__":
    main()
