"""The policy folders of a run: the initial policy it starts from and the plain policies it exports."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from emcot.policy.policy import EmCoTPolicy
from emcot.training.finetune import adapt_policy, merged_state_dict
from emcot.training.recipes import Recipe, build_initial_policy, build_source


def ensure_norm_stats(policy: EmCoTPolicy, sources) -> None:
    """Compute statistics for robots in the data that the policy has none for."""
    from emcot.training.finetune import robot_norm_stats

    stats = policy.processor.norm_stats
    missing = {}
    for source in sources:
        for sample in source:
            if sample.actions is not None and sample.robot not in stats:
                missing.setdefault(sample.robot, []).append(sample)
    for robot, samples in missing.items():
        entry = robot_norm_stats(samples, robot).for_robot(robot)
        stats.add(robot, action=entry["action"], state=entry["state"])
        if not policy.processor.settings.robot or policy.processor.settings.robot not in stats:
            policy.processor.settings.robot = robot


def prepare_initial_policy(recipe: Recipe, folder: Path, init: str | None) -> None:
    """Build the run's starting policy (init, new-robot adaptation, statistics) and save it to ``folder``."""
    policy = build_initial_policy(recipe, init)
    ft = recipe.finetune
    horizon = (ft.horizon if ft and ft.horizon else None) or policy.config.action.horizon
    sources = [build_source(spec, recipe, horizon) for spec in recipe.data.datasets]
    if ft is not None:
        trace_samples = [s for source in sources for s in source if s.actions is not None]
        adapt_policy(policy, ft, trace_samples, seed=recipe.train.seed)
    ensure_norm_stats(policy, sources)
    policy.model.config.loss = copy.deepcopy(recipe.loss)
    policy.save_pretrained(folder)


def export_policy(policy: EmCoTPolicy, state: dict[str, torch.Tensor], folder: Path) -> Path:
    """Save a plain policy (LoRA merged) with the weights ``state`` of the training model."""
    from accelerate import init_empty_weights

    from emcot.model.modeling import EmCoTModel

    merged = merged_state_dict(policy.model, state)
    with init_empty_weights(include_buffers=False):
        model = EmCoTModel(copy.deepcopy(policy.model.config))
    model.load_state_dict(merged, strict=True, assign=True)
    if model.config.tie_word_embeddings:
        model.understanding.lm_head.weight = model.understanding.embed_tokens.weight
    return EmCoTPolicy(model, policy.processor, policy.generation).save_pretrained(folder)
