"""Training throughput: packed sequences vs a real ``[B, L]`` padded batch, in useful tokens per second.

Both modes train on the same samples in the same order with the same optimizer step. ``packed``
fills one sequence per pack up to the recipe's token budget (what emcot trains with); ``padded``
takes the same samples in groups of ``--batch`` and runs each group as a ``[B, L]`` batch padded to
its longest sample (``EmCoTModel.compute_padded_loss``: a row per sample, its own mask, positions
and experts). Only non-padding tokens count as useful.

    python bench/train_throughput.py                       # tiny config, synthetic mixture
    EMCOT_MW_DATA=/work/data/mw-small python bench/train_throughput.py \\
        --recipe mw-stage2-small --policy runs/mw-stage1-small/initial --batch 8
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


def synthetic_mixture(n: int):
    """A shuffled mix of every synthetic sample kind."""
    samples = (
        synthetic_samples(n, seed=1)
        + synthetic_action_samples(n, seed=2)
        + synthetic_vqa_samples(n, seed=3)
        + synthetic_generation_samples(n, seed=4)
    )
    order = np.random.default_rng(0).permutation(len(samples))
    return [samples[i] for i in order]


def packs_of(args, policy, collate):
    """``steps + 1`` packs: from the recipe's data mixture, or of the synthetic mixture."""
    if args.recipe is None:
        packing = PackingConfig(args.budget, int(args.budget * 1.5))
        sources, weights = [synthetic_mixture(24)], [1.0]
    else:
        from emcot.training.data.sources import build_source
        from emcot.training.recipes import load_recipe

        recipe = load_recipe(args.recipe)
        horizon = policy.model.config.action.horizon
        sources = [build_source(spec, recipe, horizon) for spec in recipe.data.datasets]
        weights, packing = [spec.weight for spec in recipe.data.datasets], recipe.data.packing
    packer = TokenPacker(sources, weights, collate.num_tokens, packing, seed=0)
    return [packer.next_pack() for _ in range(args.steps + 1)]


def timed_steps(model, batches, step_fn) -> tuple[float, float]:
    """(useful tokens/s, all tokens/s) of ``step_fn`` over ``batches`` after one warm-up batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    useful = total = 0
    seconds = 0.0
    for i, (batch, n_useful, n_total) in enumerate(batches):
        start = time.perf_counter()
        out = step_fn(batch, gen)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if i:
            useful, total, seconds = useful + n_useful, total + n_total, seconds + time.perf_counter() - start
    return useful / seconds, total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="timed optimizer steps per mode (after one warm-up)"
    )
    parser.add_argument(
        "--budget", type=int, default=1024, help="synthetic mixture: expected tokens per pack"
    )
    parser.add_argument("--batch", type=int, default=4, help="samples per padded batch")
    parser.add_argument("--recipe", help="draw samples from this recipe's data mixture")
    parser.add_argument("--policy", help="policy folder for --recipe (e.g. a run's initial/ folder)")
    args = parser.parse_args()
    if (args.recipe is None) != (args.policy is None):
        parser.error("--recipe and --policy go together")
    torch.manual_seed(0)
    if args.policy is None:
        policy = build_synthetic_policy(synthetic_samples(8, seed=1))
        label = "tiny config, synthetic mixture"
    else:
        from emcot.policy import EmCoTPolicy

        policy = EmCoTPolicy.from_pretrained(args.policy)
        label = f"{args.policy}, {args.recipe} mixture"
    model = policy.model.train()
    collate = SampleCollator(policy.processor)
    packs = packs_of(args, policy, collate)
    samples = [sample for pack in packs for sample in pack]
    lengths = [collate.num_tokens(s) for s in samples]

    packed = []
    for pack in packs:
        batch = collate(pack)
        packed.append((batch, sum(map(collate.num_tokens, pack)), batch.num_tokens))
    padded = []
    for k in range(0, len(samples) - args.batch + 1, args.batch):
        group, group_lengths = samples[k : k + args.batch], lengths[k : k + args.batch]
        rows = [collate([sample]) for sample in group]
        padded.append((rows, sum(group_lengths), len(group) * max(group_lengths)))

    print(f"{label}; {torch.get_num_threads()} CPU threads, fp32, {model.attention_backend.value}")
    print(
        f"{len(samples)} samples: length min {min(lengths)}, mean {np.mean(lengths):.0f}, max {max(lengths)} "
        f"tokens; {np.mean([p[1] for p in packed]):.0f} tokens per pack"
    )
    results = {
        "packed": (timed_steps(model, packed, model.compute_loss), packed),
        f"padded B={args.batch}": (timed_steps(model, padded, model.compute_padded_loss), padded),
    }
    for name, ((useful, total), batches) in results.items():
        share = sum(b[1] for b in batches) / sum(b[2] for b in batches)
        print(
            f"{name:>12}: {useful:8.0f} useful tokens/s  ({total:8.0f} tokens/s incl. padding; "
            f"{100 * share:.0f}% of the computed tokens are useful)"
        )


if __name__ == "__main__":
    main()
