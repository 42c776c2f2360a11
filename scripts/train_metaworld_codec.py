"""Train the subgoal latent codec on Meta-World frames, calibrate it and save it as a diffusers folder.

Frames come from one camera of a LeRobot dataset (``emcot collect metaworld``), or, without
``--dataset``, from scripted-expert episodes this script simulates itself. Episodes are split into
train / validation per task, so validation frames come from unseen episodes. Run from the
repository root::

    python scripts/train_metaworld_codec.py --dataset /work/data/mw-small --out /work/data/codec-64
    python scripts/train_metaworld_codec.py --tasks reach,push,pick-place --episodes 20 --out /tmp/codec

``OUT`` receives ``config.json`` + ``diffusion_pytorch_model.safetensors`` (load with
``LatentCodec.from_pretrained(OUT, image_size=(64, 64))``: the calibrated scale/shift are in
config.json), ``vae_config.json`` (the full ``VAEConfig``), ``report.json`` (every number printed),
``reconstructions.png`` (validation frames over their reconstructions) and ``run/`` (checkpoints
and ``metrics.jsonl``; rerunning the same command resumes there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from emcot.tokenizers.vae import LatentCodec, VAEConfig, resize_rgb
from emcot.training.codec import (
    CodecTrainConfig,
    fit_codec,
    latent_statistics,
    psnr_per_image,
    reconstruct,
    reconstruction_psnr,
    save_codec,
)

PRESETS = {"small": VAEConfig.small, "tiny": VAEConfig.tiny}
# Per-episode frames, keyed by task: {task: [uint8 (T, H, W, 3), ...]}.
Episodes = dict[str, list[np.ndarray]]


def dataset_episodes(root: Path, camera: str, size: int, stride: int) -> Episodes:
    """Every ``stride``-th frame of ``camera`` in each episode of a LeRobot dataset, resized to ``size``."""
    from emcot.training.data.lerobot import LeRobotDataset

    dataset = LeRobotDataset(root)
    episodes: Episodes = defaultdict(list)
    for index in tqdm(dataset.episode_indices, desc="decode"):
        episode = dataset.episode(index)
        frames = episode.images(camera)[::stride]
        episodes[episode.instruction].append(np.stack([resize_rgb(f, (size, size)) for f in frames]))
    return dict(episodes)


def simulated_episodes(tasks: str, episodes: int, camera: str, size: int, stride: int) -> Episodes:
    """Scripted-expert episodes rendered at ``size`` px; seeds 0… (evaluation uses 1000…)."""
    from emcot.eval.envs.metaworld import MetaWorldConfig, MetaWorldEnv
    from emcot.eval.envs.metaworld_tasks import expand_tasks
    from emcot.eval.policies import ScriptedExpert

    out: Episodes = {}
    for task in expand_tasks(tasks):
        expert, frames_of_task = ScriptedExpert(task), []
        with MetaWorldEnv(task, MetaWorldConfig(resolution=size, cameras=(camera,), max_steps=300)) as env:
            for seed in tqdm(range(episodes), desc=task):
                obs, frames, done = env.reset(seed), [], False
                while not done:
                    frames.append(obs.images[camera])
                    step = env.step(expert.action(obs.raw))
                    obs, done = step.observation, step.success or step.truncated
                frames_of_task.append(np.stack(frames[::stride]))
        out[task] = frames_of_task
    return out


def split_by_episode(episodes: Episodes, every: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(train, val, held-out episodes): every ``every``-th episode of a task (at least its last) is validation."""
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for runs in episodes.values():
        held = set(range(every - 1, len(runs), every)) or ({len(runs) - 1} if len(runs) > 1 else set())
        for i, frames in enumerate(runs):
            (val if i in held else train).append(frames)
    if not train or not val:
        raise SystemExit("need at least two episodes of some task to hold one out; collect more episodes")
    return np.concatenate(train), np.concatenate(val), len(val)


def timings(codec: LatentCodec, size: int, repeats: int = 30) -> dict[str, float]:
    """Median ms of one encode and one decode of a single frame (batch 1, eval mode)."""
    x = torch.zeros(1, 3, size, size)
    out: dict[str, list[float]] = {"encode_ms": [], "decode_ms": []}
    with torch.no_grad():
        z = codec.encode(x)
        for _ in range(repeats):
            started = time.perf_counter()
            codec.encode(x)
            middle = time.perf_counter()
            codec.decode(z)
            out["encode_ms"].append((middle - started) * 1e3)
            out["decode_ms"].append((time.perf_counter() - middle) * 1e3)
    return {k: statistics.median(v) for k, v in out.items()}


def save_preview(codec: LatentCodec, val: np.ndarray, path: Path, count: int = 8) -> None:
    """Validation frames (top row) over their reconstructions (bottom row)."""
    picks = val[np.linspace(0, len(val) - 1, count).round().astype(int)]
    grid = np.concatenate(
        [np.concatenate(list(picks), 1), np.concatenate(list(reconstruct(codec, picks)), 1)]
    )
    Image.fromarray(grid).save(path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", type=Path, help="LeRobot dataset folder; without it frames are simulated"
    )
    parser.add_argument("--camera", default="corner2")
    parser.add_argument("--tasks", default="reach,push,pick-place,drawer-open,door-open,bin-picking")
    parser.add_argument("--episodes", type=int, default=10, help="simulated episodes per task")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--stride", type=int, default=1, help="keep every n-th frame of an episode")
    parser.add_argument("--val-every", type=int, default=10, help="hold out every n-th episode per task")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    # On a shared 2-core machine one thread is steadier: two threads stall at every OpenMP barrier
    # while another process holds a core (measured 0.4 s vs up to 7 s per step).
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    size = args.image_size
    if args.dataset is not None:
        episodes = dataset_episodes(args.dataset, args.camera, size, args.stride)
    else:
        episodes = simulated_episodes(args.tasks, args.episodes, args.camera, size, args.stride)
    train, val, held_out = split_by_episode(episodes, args.val_every)
    print(f"{len(episodes)} tasks; {len(train)} train / {len(val)} val frames ({held_out} held-out episodes)")

    torch.manual_seed(args.seed)
    codec = LatentCodec.from_config(PRESETS[args.preset](image_size=(size, size)))
    params = sum(p.numel() for p in codec.parameters())
    speed = timings(codec.eval(), size)
    mean_frame = train.astype(np.float64).mean(0).round()
    baseline = float(psnr_per_image(np.broadcast_to(mean_frame, val.shape), val).mean())
    print(
        f"{args.preset} codec: {params / 1e6:.3f} M parameters, latent {codec.config.latent_channels}x"
        f"{size // codec.config.downsample}x{size // codec.config.downsample}, {codec.num_tokens} tokens; "
        f"encode {speed['encode_ms']:.1f} ms, decode {speed['decode_ms']:.1f} ms (1 frame)"
    )
    config = CodecTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        kl_weight=args.kl_weight,
        warmup_steps=args.warmup,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        seed=args.seed,
    )
    train_started = time.perf_counter()
    result = fit_codec(codec, train, val, config, out_dir=args.out / "run")
    train_s = time.perf_counter() - train_started
    assert result.before is not None and result.after is not None
    raw = latent_statistics(codec, train[:: max(1, len(train) // config.calibration_images)])
    report = {
        "preset": args.preset,
        "image_size": size,
        "camera": args.camera,
        "dataset": str(args.dataset) if args.dataset else f"simulated {args.tasks} x {args.episodes}",
        "train_frames": len(train),
        "val_frames": len(val),
        "held_out_episodes": held_out,
        "parameters": params,
        **speed,
        "steps": result.step,
        "train_wall_s": train_s,
        "val_psnr": result.val_psnr,
        "val_psnr_all": reconstruction_psnr(codec, val),
        "mean_frame_psnr": baseline,
        "latents_before": asdict(result.before),
        "latents_after": asdict(result.after),
        "raw_latents": asdict(raw),
        "vae_config": result.config.to_dict(),
        "train_config": asdict(config),
        "history": result.history,
    }
    save_codec(codec, args.out)
    save_preview(codec, val, args.out / "reconstructions.png")
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(
        f"val PSNR {report['val_psnr_all']:.2f} dB on {len(val)} held-out frames "
        f"(mean-frame baseline {baseline:.2f} dB); {result.step} steps in {train_s / 60:.1f} min\n"
        f"latents before calibration (FLUX constants): mean {result.before.mean:+.3f} std {result.before.std:.3f}; "
        f"after: mean {result.after.mean:+.3f} std {result.after.std:.3f} "
        f"(shift {result.config.shift_factor:.4f}, scale {result.config.scaling_factor:.4f})\n"
        f"saved to {args.out} in {(time.perf_counter() - started) / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
