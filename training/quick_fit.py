"""Small single-process fitting loops: the tiny VAE as an autoencoder, and a policy on a few samples.

These are for tests, the bundled default policy and quick experiments; real training goes
through :mod:`emcot.training.trainer`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from emcot.training.collate import SampleCollator
from emcot.types import EmCoTSample


def fit_latent_codec(
    codec,
    images: Sequence[np.ndarray],
    *,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
) -> float:
    """Train a (small) VAE to reconstruct ``images``; returns the final reconstruction MSE in [-1, 1] units.

    A random VAE is not an autoencoder, so tiny models need this before their subgoals can look
    like anything; the FLUX VAE of real models comes pretrained.
    """
    gen = torch.Generator().manual_seed(seed)
    data = torch.stack([codec.preprocess(np.asarray(im)) for im in images])
    params = list(codec.vae.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    codec.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x = data[torch.randint(0, len(data), (min(batch_size, len(data)),), generator=gen)]
        posterior = codec.vae.encode(x).latent_dist
        recon = codec.vae.decode(posterior.sample(generator=gen)).sample
        # A tiny KL weight keeps the latent scale sane without blurring the reconstructions.
        loss = (recon - x).pow(2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    codec.eval()
    return float(loss.detach())


def fit_policy(
    policy,
    samples: Sequence[EmCoTSample],
    *,
    steps: int = 600,
    lr: float = 3e-3,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """AdamW with cosine decay on packed batches of ``samples``; returns the loss per step."""
    model = policy.model
    collate = SampleCollator(policy.processor)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
    )
    # Collating (tokenising, resizing, patchifying) costs more than a tiny model's step, so the
    # batches are built once and cycled through.
    order = torch.randperm(len(samples), generator=gen).tolist()
    batches = [
        collate([samples[i] for i in order[k : k + batch_size]]) for k in range(0, len(order), batch_size)
    ]
    model.train()
    losses = []
    for step in tqdm(range(steps), disable=not progress, desc="fit"):
        batch = batches[step % len(batches)]
        out = model.compute_loss(batch, gen)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        losses.append(float(out.loss.detach()))
    model.eval()
    return losses
