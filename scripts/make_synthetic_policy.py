"""Train and save the bundled tiny synthetic policy (``EmCoTPolicy.synthetic()``).

It learns the package's synthetic pushing task: first the tiny VAE as an autoencoder, then the
whole policy on packed batches. Run from the repository root::

    python scripts/make_synthetic_policy.py          # writes emcot/assets/synthetic_policy
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from emcot.synthetic.world import build_synthetic_policy, synthetic_samples
from emcot.training.quick_fit import fit_latent_codec, fit_policy

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "emcot" / "assets" / "synthetic_policy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--vae-steps", type=int, default=500)
    args = parser.parse_args()

    torch.manual_seed(0)
    start = time.time()
    samples = synthetic_samples(args.samples, seed=0)
    policy = build_synthetic_policy(samples)
    images = [s.subgoal for s in samples] + [s.observation.images["head"] for s in samples]
    vae_mse = fit_latent_codec(policy.model.latent_codec, images, steps=args.vae_steps)
    losses = fit_policy(policy, samples, steps=args.steps, lr=3e-3, batch_size=8, progress=True)
    exact, maes = 0, []
    for sample in samples:
        trace = policy.generate_trace(sample.observation, sample.instruction, seed=0)
        exact += trace.reasoning == sample.reasoning
        maes.append(np.abs(trace.actions - sample.actions).mean())
    policy.save_pretrained(args.out)
    print(
        f"vae recon mse {vae_mse:.4f}; loss {losses[0]:.3f} → {losses[-1]:.3f}; reasoning exact "
        f"{exact}/{len(samples)}; action MAE {np.mean(maes):.4f}; {time.time() - start:.0f}s → {args.out}"
    )


if __name__ == "__main__":
    main()
