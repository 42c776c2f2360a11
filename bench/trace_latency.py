"""Per-stage latency of trace generation with the bundled tiny policy, with and without action
guidance, and of next-frame prediction (prints numbers, asserts nothing).

python bench/trace_latency.py [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from emcot.policy.policy import EmCoTPolicy
from emcot.sequence.layouts import TraceMode
from emcot.synthetic.world import synthetic_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = EmCoTPolicy.synthetic()
    sample = synthetic_samples(1, seed=0)[0]
    guided = {"action_text_guidance": 2.0, "action_image_guidance": 1.5}
    for mode, options in [(m, {}) for m in TraceMode] + [
        (m, guided) for m in (TraceMode.FULL, TraceMode.REACTIVE)
    ]:
        policy.generate_trace(sample.observation, sample.instruction, mode=mode, seed=0, **options)  # warm-up
        runs = [
            policy.generate_trace(
                sample.observation, sample.instruction, mode=mode, seed=i, **options
            ).timings
            for i in range(args.repeats)
        ]
        stages = runs[0].keys()
        summary = ", ".join(f"{k} {1000 * statistics.median(r[k] for r in runs):.1f} ms" for k in stages)
        label = f"{mode.value}{' +act-cfg' if options else ''}"
        print(f"{label:<17} (median of {args.repeats}, {args.threads} threads): {summary}")
    frame = sample.observation.images["head"]
    prompt = "Imagine the next scene: " + sample.instruction
    for name, options in (("unguided", {}), ("cfg 3/2", {"text_guidance": 3.0, "image_guidance": 2.0})):
        policy.predict_frame(frame, prompt, seed=0, **options)  # warm-up
        times = []
        for i in range(args.repeats):
            start = time.perf_counter()
            policy.predict_frame(frame, prompt, seed=i, **options)
            times.append(time.perf_counter() - start)
        print(f"predict_frame {name:<8}: median {1000 * statistics.median(times):.1f} ms")


if __name__ == "__main__":
    main()
