"""Training throughput of the tiny config: packed sequences vs padded batches, in useful tokens per second.

Both modes train on the same stage-1/2 mixture of synthetic samples (EM-CoT traces, action-only,
VQA and generation) with the same optimizer step. ``packed`` fills each sequence up to a token
budget; ``padded`` takes the same samples in fixed-size groups and pads every sample to the longest
one of its group, as a padded batch does. Only non-padding tokens count as throughput.

    python bench/train_throughput.py [--steps 20] [--budget 1024] [--batch 4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from emcot.synthetic.world import (
    build_synthetic_policy,
    synthetic_action_samples,
    synthetic_generation_samples,
    synthetic_samples,
    synthetic_vqa_samples,
)
from emcot.training.collate import SampleCollator
from emcot.training.packing import PackingConfig, TokenPacker


def mixture(n: int):
    """A shuffled mix of every sample kind."""
    samples = (
        synthetic_samples(n, seed=1)
        + synthetic_action_samples(n, seed=2)
        + synthetic_vqa_samples(n, seed=3)
        + synthetic_generation_samples(n, seed=4)
    )
    order = np.random.default_rng(0).permutation(len(samples))
    return [samples[i] for i in order]


def run(policy, modes: dict[str, list], steps: int) -> dict[str, tuple[float, float]]:
    """Per mode (useful tokens/s, all tokens/s) over ``steps`` optimizer steps after a warm-up.

    Steps of the modes alternate, so a busy machine slows every mode alike.
    """
    model = policy.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    stats = {name: [0, 0, 0.0] for name in modes}
    for step in range(steps + 1):
        for name, batches in modes.items():
            batch, n_useful = batches[step % len(batches)]
            start = time.perf_counter()
            out = model.compute_loss(batch, gen)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            if step:
                stats[name][0] += n_useful
                stats[name][1] += batch.num_tokens
                stats[name][2] += time.perf_counter() - start
    return {name: (useful / t, total / t) for name, (useful, total, t) in stats.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--budget", type=int, default=1024, help="expected tokens per packed sequence")
    parser.add_argument("--batch", type=int, default=4, help="samples per padded batch")
    args = parser.parse_args()
    torch.manual_seed(0)
    samples = mixture(24)
    policy = build_synthetic_policy(synthetic_samples(8, seed=1))
    collate = SampleCollator(policy.processor)
    lengths = [collate.num_tokens(s) for s in samples]

    packer = TokenPacker(
        [samples], [1.0], collate.num_tokens, PackingConfig(args.budget, int(args.budget * 1.5)), seed=0
    )
    packed = []
    for _ in range(args.steps + 1):
        pack = packer.next_pack()
        packed.append((collate(pack), sum(collate.num_tokens(s) for s in pack)))
    padded = []
    for k in range(0, len(samples) - args.batch + 1, args.batch):
        group = samples[k : k + args.batch]
        longest = max(lengths[k : k + args.batch])
        padded.append((collate(group, pad_to=longest), sum(lengths[k : k + args.batch])))

    print(f"tiny config, {torch.get_num_threads()} CPU threads, fp32, SDPA")
    print(f"sample lengths: min {min(lengths)}, mean {np.mean(lengths):.0f}, max {max(lengths)} tokens")
    modes = {"packed": packed, "padded": padded}
    for name, (useful, total) in run(policy, modes, args.steps).items():
        batches = modes[name]
        tokens = np.mean([b.num_tokens for b, _ in batches])
        share = np.mean([n / b.num_tokens for b, n in batches])
        print(
            f"{name:>6}: {useful:8.0f} useful tokens/s  ({total:8.0f} tokens/s incl. padding; "
            f"{tokens:.0f} tokens per sequence, {100 * share:.0f}% useful)"
        )


if __name__ == "__main__":
    main()
