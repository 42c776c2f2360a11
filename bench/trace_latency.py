"""Per-stage latency of trace generation with the bundled tiny policy (prints numbers, asserts nothing).

python bench/trace_latency.py [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from emcot.policy import EmCoTPolicy
from emcot.training.synthetic import synthetic_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = EmCoTPolicy.default()
    sample = synthetic_samples(1, seed=0)[0]
    for mode in ("full", "reason", "reactive"):
        policy.generate_trace(sample.observation, sample.instruction, mode=mode, seed=0)  # warm-up
        runs = [
            policy.generate_trace(sample.observation, sample.instruction, mode=mode, seed=i).timings
            for i in range(args.repeats)
        ]
        stages = runs[0].keys()
        summary = ", ".join(f"{k} {1000 * statistics.median(r[k] for r in runs):.1f} ms" for k in stages)
        print(f"{mode:<9} (median of {args.repeats}, {args.threads} threads): {summary}")


if __name__ == "__main__":
    main()
