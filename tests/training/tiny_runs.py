"""The smallest training recipe worth running: stage1-tiny with one small pack per step (seconds per run)."""

from __future__ import annotations

import yaml

from emcot.training.recipes import RECIPE_DIR, Recipe


def tiny_recipe(lr: float = 3e-3, clip: float | None = 1.0, **train_settings) -> Recipe:
    """stage1-tiny without validation or EMA, 6 steps with a checkpoint after each; ``train_settings`` override."""
    data = yaml.safe_load((RECIPE_DIR / "stage1-tiny.yaml").read_text())
    data["data"]["packing"] = {"expected_tokens": 600, "max_tokens": 900, "packs_per_step": 1}
    data["data"].pop("validation")
    data["optim"].update(lr=lr, clip_grad_norm=clip, warmup_steps=0)
    data["train"].update(total_steps=6, save_every=1, keep_last=10, eval_every=0, progress=False)
    data["train"].update(ema_decay=None, **train_settings)
    return Recipe.from_dict(data)
