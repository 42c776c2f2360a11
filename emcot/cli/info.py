"""``emcot info``: config summary, parameter counts per part, dtype and normalisation statistics."""

from __future__ import annotations

import argparse

import numpy as np


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``info`` target: a folder or ``--preset``, exactly one."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "folder", nargs="?", help="policy or model folder, or a bundled policy name (default, synthetic)"
    )
    what.add_argument("--preset", default=None)


def run_info(args: argparse.Namespace) -> int:
    """Print the summary of the policy folder or preset named by ``args``."""
    import torch

    from emcot.config import EmCoTConfig
    from emcot.model.modeling import EmCoTModel
    from emcot.model.summary import format_count, parameter_breakdown

    stats = card = None
    if args.preset:
        config = EmCoTConfig.from_preset(args.preset)
        with torch.device("meta"):
            model = EmCoTModel(config)
        title = f"preset {args.preset}"
    else:
        from emcot.model.loading import load_model
        from emcot.policy.card import PolicyCard
        from emcot.policy.policy import BUNDLED_POLICIES, policy_folder
        from emcot.tokenizers.actions import RobotNormStats

        folder = policy_folder(args.folder)
        model = load_model(folder)
        config = model.config
        title = f"{args.folder} ({folder})" if args.folder in BUNDLED_POLICIES else str(folder)
        if (folder / "norm_stats.json").is_file():
            stats = RobotNormStats.load(folder / "norm_stats.json")
        card = PolicyCard.load(folder)
    und = config.experts["und"]
    print(f"emcot model: {title}")
    print(
        f"  backbone: {und.num_layers} layers, hidden {und.hidden_size}, {und.num_heads} heads "
        f"({und.num_kv_heads} KV, head dim {und.head_dim}), QK-norm {und.qk_norm}, vocab {config.vocab_size}"
    )
    print(
        "  expert MLP widths: " + ", ".join(f"{n} {c.intermediate_size}" for n, c in config.experts.items())
    )
    if config.vision is not None:
        v = config.vision
        print(
            f"  vision: {v.num_layers} layers (drop last: {v.drop_last_layer}), hidden {v.hidden_size}, patch {v.patch_size}"
        )
    if config.vae is not None:
        print(f"  vae: {config.vae.latent_channels} latent channels, subgoal {config.vae.image_size}")
    if config.keypoints is not None:
        k = config.keypoints
        print(
            f"  camera keypoints: {k.num_keypoints} points, {k.channels} channels, {k.targets} positions read out, "
            f"localiser {'trains' if k.trainable else 'frozen'}"
        )
    a = config.action
    print(f"  actions: dim {a.action_dim}, state dim {a.state_dim}, horizon {a.horizon}, norm {a.norm_mode}")
    if card is not None:
        print(
            f"  card: {card.benchmark}, {card.camera} at {card.resolution} px, tasks {', '.join(card.tasks)}"
        )
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    print(f"  dtype: {', '.join(dtypes)}")
    parts = parameter_breakdown(model)
    print("  parameters:")
    for name, count in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<14} {format_count(count):>9}  ({count:,})")
    print(f"    {'total':<14} {format_count(sum(parts.values())):>9}  ({sum(parts.values()):,})")
    if stats is not None:
        print("  normalisation statistics:")
        for robot in stats.robots:
            entry = stats.for_robot(robot)
            for key in ("state", "action"):
                s = entry[key]
                if s is not None:
                    print(f"    {robot}.{key}: dim {s.dim}, n {s.count}, mean {np.round(s.mean, 3).tolist()}")
    return 0
