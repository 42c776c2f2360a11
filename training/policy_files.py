"""The policy folders of a run: the initial policy it starts from and the plain policies it exports."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import torch

from emcot.policy.policy import EmCoTPolicy
from emcot.training.data.sources import build_source
from emcot.training.finetune import adapt_policy, merged_state_dict
from emcot.training.recipes import Recipe
from emcot.types import EmCoTSample


class InitSource(str, Enum):
    """The named starting points of ``model.init``; any other value is the path of a saved policy."""

    SYNTHETIC = "synthetic"  # a fresh tiny policy with a tokenizer for the synthetic task
    DEFAULT = "default"  # the bundled tiny policy
    COMPONENTS = "components"  # HALO's initialisation from the Qwen / SigLIP / VAE folders of the recipe


def build_initial_policy(recipe: Recipe, init: str | None = None) -> EmCoTPolicy:
    """The policy a run starts from (before any fine-tuning adaptation): ``init`` or ``model.init``."""
    source = init or recipe.model.init
    names = [s.value for s in InitSource]
    if source in names:
        return _INITIAL_POLICIES[InitSource(source)](recipe)
    return _saved_policy(source, names)


def _synthetic_policy(recipe: Recipe) -> EmCoTPolicy:
    from emcot.synthetic.world import build_synthetic_policy, synthetic_samples

    seed = recipe.train.seed
    return build_synthetic_policy(synthetic_samples(16, seed=seed), seed=seed, **recipe.model.overrides)


def _policy_from_components(recipe: Recipe) -> EmCoTPolicy:
    """HALO's initialisation: a Qwen LLM into all experts, a SigLIP encoder, a VAE; statistics come later."""
    from emcot.model.modeling import EmCoTModel
    from emcot.policy.processor import EmCoTProcessor, ProcessorConfig
    from emcot.tokenizers.actions import RobotNormStats
    from emcot.tokenizers.text import HFTextTokenizer

    parts = dict(recipe.model.components)
    llm = parts.pop("llm", None)
    if not llm or not Path(llm).is_dir():
        raise ValueError(
            f"model.components.llm '{llm}' is not a folder; download Qwen2.5-1.5B-Instruct and set its path in the recipe"
        )
    for key in ("vision", "vae"):
        if parts.get(key) and not Path(parts[key]).is_dir():
            raise ValueError(
                f"model.components.{key} '{parts[key]}' is not a folder; fix the path in the recipe"
            )
    model = EmCoTModel.from_components(llm=llm, **parts, **recipe.model.overrides)
    tokenizer = HFTextTokenizer.from_pretrained(llm)
    settings = ProcessorConfig(cameras=list(recipe.model.cameras))
    return EmCoTPolicy(model, EmCoTProcessor(model.config, tokenizer, RobotNormStats(), settings))


_INITIAL_POLICIES: dict[InitSource, Callable[[Recipe], EmCoTPolicy]] = {
    InitSource.SYNTHETIC: _synthetic_policy,
    InitSource.DEFAULT: lambda recipe: EmCoTPolicy.default(),
    InitSource.COMPONENTS: _policy_from_components,
}


def _saved_policy(source: str, names: list[str]) -> EmCoTPolicy:
    """A saved policy folder, or a training output whose ``final`` folder holds one."""
    path = Path(source)
    if (path / "final").is_dir() and not (path / "config.json").is_file():
        path = path / "final"
    if not (path / "config.json").is_file():
        close = difflib.get_close_matches(source, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(
            f"model.init '{source}' is not one of {names} or a saved policy folder{hint}; "
            "pass --init PATH (e.g. the output folder of the previous stage)"
        )
    return EmCoTPolicy.from_pretrained(path)


def ensure_norm_stats(policy: EmCoTPolicy, sources) -> None:
    """Compute statistics for robots in the data that the policy has none for."""
    from emcot.training.finetune import robot_norm_stats

    stats = policy.processor.norm_stats
    missing: dict[str, list[EmCoTSample]] = {}
    for source in sources:
        for sample in source:
            if sample.actions is not None and sample.robot not in stats:
                missing.setdefault(sample.robot, []).append(sample)
    for robot, samples in missing.items():
        entry = robot_norm_stats(samples, robot).for_robot(robot)
        action = entry["action"]
        assert action is not None  # robot_norm_stats always has action statistics
        stats.add(robot, action=action, state=entry["state"])
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
