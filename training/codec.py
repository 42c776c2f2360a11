"""Training the subgoal latent codec on robot frames and calibrating its latent scale and shift.

``calibrated`` sets ``shift_factor``/``scaling_factor`` so that ``(z - shift) * scale`` (FLUX's
convention) has mean 0 and std 1 on the data, as the subgoal flow's unit noise expects (the FLUX
constants fit only the FLUX VAE). ``fit_codec`` checkpoints atomically like
:mod:`emcot.training.checkpoints` (``model.safetensors``, ``optimizer.pt`` read with ``weights_only``,
``state.json``). Its randomness is a function of (seed, step) only, so a resumed run draws exactly
what an uninterrupted one draws. PSNR is in dB on 8-bit frames, per image then averaged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim import AdamW

from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, check_fields
from emcot.tokenizers.vae import LatentCodec, VAEConfig, resize_rgb
from emcot.training.fit_run import FitRun, FitSchedule
from emcot.training.trainer import Schedule

VAE_CONFIG_FILE = "vae_config.json"
# Identical images have infinite PSNR; a finite cap keeps metrics JSON-serialisable and averages finite.
PSNR_CAP_DB = 100.0
Frames = np.ndarray | Sequence[np.ndarray]  # uint8 (N, H, W, 3), or a list of (H, W, 3) frames of any size


@dataclass(frozen=True)
class LatentStatistics:
    """Moments of codec latents over a set of frames (float64 sums): overall and per channel."""

    mean: float
    std: float
    channel_mean: tuple[float, ...]
    channel_std: tuple[float, ...]
    images: int


def as_frames(images: Frames, size_hw: tuple[int, int]) -> np.ndarray:
    """uint8 frames (N, H, W, 3) at ``size_hw`` (bicubic, as :meth:`LatentCodec.preprocess` resizes)."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:] == (*size_hw, 3):
        return images
    if len(images) == 0:
        raise ValueError("no frames given")
    return np.stack([resize_rgb(np.asarray(im), size_hw) for im in images])


def _batches(codec: LatentCodec, frames: np.ndarray, batch_size: int) -> Iterator[Tensor]:
    """float [B, 3, H, W] in [-1, 1] on the codec's device, ``batch_size`` frames at a time."""
    device = next(codec.vae.parameters()).device
    for start in range(0, len(frames), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_size])).to(device)
        yield chunk.permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def latent_statistics(
    codec: LatentCodec, images: Frames, batch_size: int = 64, normalised: bool = False
) -> LatentStatistics:
    """Mean and std of the posterior-mean latents of uint8 ``images`` at the codec's image size.

    ``normalised=False`` measures the raw ``z`` (what :func:`calibrated` needs); ``True`` measures
    ``codec.encode``, what the generation expert sees under the current scale/shift.
    """
    frames = as_frames(images, codec.config.image_size)
    was_training = codec.training
    codec.eval()
    sums = torch.zeros(3, codec.config.latent_channels, dtype=torch.float64)  # count, Σz, Σz²
    for x in _batches(codec, frames, batch_size):
        z = codec.encode(x, sample=False) if normalised else codec.vae.encode(x).latent_dist.mean
        z = z.double().cpu().transpose(0, 1).flatten(1)  # [C, B*h*w]
        sums += torch.stack([torch.full_like(z[:, 0], z.shape[1]), z.sum(1), z.pow(2).sum(1)])
    codec.train(was_training)
    count, total, squares = sums
    mean, means = float(total.sum() / count.sum()), total / count
    std = math.sqrt(max(float(squares.sum() / count.sum()) - mean**2, 0.0))
    stds = (squares / count - means**2).clamp_min(0).sqrt()
    return LatentStatistics(mean, std, tuple(means.tolist()), tuple(stds.tolist()), len(frames))


def calibrated(config: VAEConfig, stats: LatentStatistics) -> VAEConfig:
    """``config`` with ``shift_factor = mean`` and ``scaling_factor = 1 / std`` of the *raw* latents.

    One scalar pair for all channels, as FLUX has, so it stays a diffusers ``AutoencoderKL`` config.
    """
    if not stats.std > 0:
        raise ValueError(f"latent std is {stats.std}; constant latents cannot be calibrated")
    return config.replace(shift_factor=stats.mean, scaling_factor=1.0 / stats.std)


def apply_calibration(codec: LatentCodec, config: VAEConfig) -> None:
    """Give ``codec`` the scale/shift of ``config``, in its VAEConfig and its diffusers config alike."""
    factors = {"shift_factor": config.shift_factor, "scaling_factor": config.scaling_factor}
    codec.config = codec.config.replace(**factors)
    codec.vae.register_to_config(**factors)


def psnr_per_image(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """PSNR (dB) of each pair along the first axis of two equal-shaped batches, capped at 100 dB."""
    x, y = (np.asarray(v, np.float64) for v in (a, b))
    if x.shape != y.shape or x.ndim < 2:
        raise ValueError(f"psnr needs two (N, ...) batches of one shape, got {x.shape}, {y.shape}")
    mse = ((x - y) ** 2).reshape(len(x), -1).mean(1)
    return np.minimum(10 * np.log10(peak**2 / np.maximum(mse, 1e-30)), PSNR_CAP_DB)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR (dB) of one image pair of any equal shape; identical images give the 100 dB cap."""
    return float(psnr_per_image(np.asarray(a)[None], np.asarray(b)[None], peak)[0])


@torch.no_grad()
def reconstruct(codec: LatentCodec, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 frames (N, H, W, 3) → encode (posterior mean) → decode → uint8 frames, as a PNG would hold."""
    was_training = codec.training
    codec.eval()
    out = [codec.decode(codec.encode(x)).clamp(-1, 1) for x in _batches(codec, frames, batch_size)]
    codec.train(was_training)
    return ((torch.cat(out).cpu() + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def reconstruction_psnr(codec: LatentCodec, images: Frames, batch_size: int = 64) -> float:
    """Mean per-image PSNR (dB on [0, 255]) of the codec's 8-bit reconstructions at its image size."""
    frames = as_frames(images, codec.config.image_size)
    return float(psnr_per_image(reconstruct(codec, frames, batch_size), frames).mean())


@dataclass(frozen=True)
class CodecTrainConfig:
    """How :func:`fit_codec` trains: schedule, loss weights, batch, checkpoint and eval cadence.

    The resolution is the codec's ``VAEConfig.image_size``, where the policy encodes subgoals.
    ``val_images``/``calibration_images`` cap the frames for validation PSNR (evenly spaced) and
    for the final scale/shift statistics (a seeded subset).
    """

    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    kl_weight: float = 1e-6
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    eval_every: int = 200
    keep_last: int = 2
    val_images: int = 512
    calibration_images: int = 4096

    def __post_init__(self) -> None:
        counts = ("steps", "batch_size", "checkpoint_every", "eval_every", "keep_last", "val_images")
        bounds = {"lr": POSITIVE, "grad_clip": POSITIVE, "min_lr_ratio": UNIT_INTERVAL}
        bounds |= dict.fromkeys((*counts, "calibration_images"), AT_LEAST_ONE)
        bounds |= dict.fromkeys(("warmup_steps", "weight_decay", "kl_weight"), NON_NEGATIVE)
        check_fields(self, "CodecTrainConfig", **bounds)


@dataclass
class CodecFitResult:
    """What :func:`fit_codec` did; ``before``/``after`` are normalised-latent statistics around calibration."""

    config: VAEConfig
    step: int
    finished: bool
    val_psnr: float | None = None
    before: LatentStatistics | None = None
    after: LatentStatistics | None = None
    resumed_from: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def epoch_batch_indices(count: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Frames of ``step``'s batch: consecutive slices of one seeded permutation per epoch."""
    first, last = step * batch_size // count, ((step + 1) * batch_size - 1) // count
    perms = [np.random.default_rng([seed, 1, e]).permutation(count) for e in range(first, last + 1)]
    return np.concatenate(perms)[step * batch_size - first * count :][:batch_size]


class _CodecRun(FitRun):
    """One codec run: the shared bookkeeping plus its training step and validation."""

    def __init__(self, codec: LatentCodec, config: CodecTrainConfig, out: Path, train: np.ndarray) -> None:
        self.codec, self.config, self.train = codec, config, train
        # What a checkpoint must agree with to be resumed: the config is part of the schedule.
        identity = {"train": asdict(config), "vae": codec.config.to_dict(), "train_frames": len(train)}
        self.params = list(codec.vae.requires_grad_(True).parameters())
        opt = AdamW(self.params, lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay)
        super().__init__(
            codec.vae,
            opt,
            out,
            identity,
            what="codec",
            lr_hint="CodecTrainConfig.lr",
            keep_last=config.keep_last,
        )
        self.schedule = Schedule(config.warmup_steps, config.steps, "cosine", config.min_lr_ratio)

    def train_step(self) -> float:
        """One AdamW step on the batch that (seed, step) selects; returns its loss."""
        cfg = self.config
        self.set_lr(cfg.lr * self.schedule(self.step))
        picks = epoch_batch_indices(len(self.train), cfg.batch_size, cfg.seed, self.step)
        x = next(_batches(self.codec, self.train[picks], cfg.batch_size))
        posterior = self.codec.vae.encode(x).latent_dist
        # Noise from a CPU generator, so that a run draws the same on every device.
        seed = int(np.random.default_rng([cfg.seed, 2, self.step]).integers(2**62))
        noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)
        recon = self.codec.vae.decode(posterior.mean + posterior.std * noise).sample
        loss = (recon - x).pow(2).mean() + cfg.kl_weight * posterior.kl().mean()
        return self.update(loss, self.params, cfg.grad_clip)

    def evaluate(self, val: np.ndarray) -> dict[str, Any]:
        """Validation PSNR and the mean training loss since the last record, appended to metrics.jsonl."""
        return self.record({"val_psnr": reconstruction_psnr(self.codec, val)})


def fit_codec(
    codec: LatentCodec,
    train_images: Frames,
    val_images: Frames,
    config: CodecTrainConfig,
    *,
    out_dir: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
) -> CodecFitResult:
    """Train ``codec`` to reconstruct uint8 frames, continuing from the newest good checkpoint in ``out_dir``.

    Frames are resized once to ``codec.config.image_size``. ``stop_after`` ends this call after that
    step (checkpointed), as a time box or a kill would; a later call continues exactly. At
    ``config.steps`` the codec is calibrated on the training frames and left frozen in eval mode.
    """
    (out := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    train = as_frames(train_images, codec.config.image_size)
    val = as_frames(val_images, codec.config.image_size)
    val = val[np.linspace(0, len(val) - 1, min(config.val_images, len(val))).round().astype(int)]
    run = _CodecRun(codec, config, out, train)
    result = CodecFitResult(codec.config, 0, False, resumed_from=run.resume())
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    schedule = FitSchedule(config.steps, end, config.eval_every, config.checkpoint_every)
    codec.train()
    result.history += run.train_until(
        schedule, run.train_step, lambda: run.evaluate(val), desc="codec", progress=progress
    )
    codec.eval().vae.requires_grad_(False)
    result.step, result.finished = run.step, run.step >= config.steps
    if result.finished:
        result.val_psnr = reconstruction_psnr(codec, val)
        order = np.random.default_rng([config.seed, 3]).permutation(len(train))
        frames = train[np.sort(order[: config.calibration_images])]
        result.before = latent_statistics(codec, frames, normalised=True)
        apply_calibration(codec, calibrated(codec.config, latent_statistics(codec, frames)))
        result.after = latent_statistics(codec, frames, normalised=True)
    result.config = codec.config
    return result


def save_codec(codec: LatentCodec, folder: str | Path) -> Path:
    """``codec`` as a diffusers ``AutoencoderKL`` folder plus ``vae_config.json``; read it back with
    ``LatentCodec.from_pretrained(folder, image_size=...)`` (scale and shift are in its config.json)."""
    folder = Path(folder)
    apply_calibration(codec, codec.config)  # the diffusers config.json carries the same scale/shift
    codec.vae.save_pretrained(folder, safe_serialization=True)
    (folder / VAE_CONFIG_FILE).write_text(json.dumps(codec.config.to_dict(), indent=2))
    return folder
