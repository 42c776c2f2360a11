"""The policy folders of a run: the initial policy it starts from and the plain policies it exports."""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from emcot.io_utils import read_json
from emcot.policy.policy import EmCoTPolicy
from emcot.tokenizers.actions import NormStats, RobotNormStats
from emcot.training.data.lerobot import LeRobotDataset
from emcot.training.data.sources import DataSpec, build_source, source_kind
from emcot.training.finetune import adapt_policy, merged_state_dict
from emcot.training.recipes import Recipe
from emcot.types import EmCoTSample

if TYPE_CHECKING:
    from emcot.tokenizers.vae import LatentCodec, VAEConfig


class InitSource(str, Enum):
    """The named starting points of ``model.init``; any other value is the path of a saved policy."""

    SYNTHETIC = "synthetic"  # a fresh tiny policy with a tokenizer for the synthetic task
    SYNTHETIC_CUE = "synthetic_cue"  # the same for the memory-dependent cue task (emcot.synthetic.cue)
    DEFAULT = "default"  # the bundled Meta-World policy
    COMPONENTS = "components"  # HALO's initialisation from the Qwen / SigLIP / VAE folders of the recipe
    FRESH = "fresh"  # random weights of model.preset, sized and tokenised for the recipe's LeRobot dataset


def build_initial_policy(recipe: Recipe, init: str | None = None) -> EmCoTPolicy:
    """The policy a run starts from (before any fine-tuning adaptation): ``init`` or ``model.init``."""
    source = init or recipe.model.init
    names = [s.value for s in InitSource]
    if source in names:
        policy = _INITIAL_POLICIES[InitSource(source)](recipe)
    else:
        policy = with_config_overrides(_saved_policy(source, names), recipe.model.overrides)
    if recipe.model.keypoints is not None:
        policy = with_keypoints(policy, recipe.model.keypoints)
    if recipe.model.generation:
        try:
            policy.generation = policy.generation.replace(**recipe.model.generation)
        except (TypeError, ValueError) as err:
            raise ValueError(f"model.generation: {err}") from err
    return policy


def with_config_overrides(policy: EmCoTPolicy, overrides: dict) -> EmCoTPolicy:
    """A trained policy under config ``overrides`` that keep its weights, e.g. ``memory: {top_k: 8}``
    to fine-tune a full-history policy with Top-K retrieval (a dict merges into a sub-config).
    Overrides that would add, drop or reshape weights raise."""
    if not overrides:
        return policy
    values = policy.model.config.to_dict()
    for key, value in overrides.items():
        if key not in values:
            raise ValueError(f"model.overrides: '{key}' is not a model config field")
        merge = isinstance(value, dict) and isinstance(values[key], dict)
        values[key] = {**values[key], **value} if merge else value
    model = _empty_model(values)
    state = policy.model.state_dict()
    mine = model.state_dict()
    changed = sorted(set(state) ^ set(mine)) + sorted(
        k for k in state if k in mine and state[k].shape != mine[k].shape
    )
    if changed:
        raise ValueError(
            f"model.overrides {overrides} change the weights of the starting policy ({len(changed)} tensors, "
            f"e.g. {changed[:3]}); a trained policy takes only overrides that keep them, e.g. memory.top_k"
        )
    return _with_model(policy, model, state)


def with_keypoints(policy: EmCoTPolicy, folder: str | Path) -> EmCoTPolicy:
    """``policy`` with the camera keypoints fitted in ``folder`` (:func:`emcot.training.keypoints.fit_keypoints`)
    attached: its own weights are kept, and the keypoints' zero-initialised embedding leaves its
    outputs unchanged until the policy trains."""
    from emcot.training.keypoints import load_keypoints

    if policy.model.keypoints is not None:
        raise ValueError("the starting policy already has camera keypoints; drop model.keypoints")
    module = load_keypoints(folder, policy.model.config.hidden_size)
    values = policy.model.config.to_dict()
    values["keypoints"] = module.config.to_dict()
    state = policy.model.state_dict() | {f"keypoints.{k}": v for k, v in module.state_dict().items()}
    return _with_model(policy, _empty_model(values), state)


def _empty_model(values: dict):
    """A model of config ``values`` without initialised weights (they come from a trained policy)."""
    from accelerate import init_empty_weights

    from emcot.config import EmCoTConfig
    from emcot.model.modeling import EmCoTModel

    with init_empty_weights(include_buffers=False):
        return EmCoTModel(EmCoTConfig.from_dict(values))


def _with_model(policy: EmCoTPolicy, model, state: dict) -> EmCoTPolicy:
    """``policy``'s processor and generation defaults around ``model`` holding the weights ``state``."""
    model.load_state_dict(state, strict=True, assign=True)
    if model.config.tie_word_embeddings:
        model.understanding.lm_head.weight = model.understanding.embed_tokens.weight
    policy.processor.config = model.config  # the processor reads the same config as its model
    return EmCoTPolicy(model, policy.processor, policy.generation)


def _synthetic_policy(recipe: Recipe) -> EmCoTPolicy:
    from emcot.synthetic.world import build_synthetic_policy, synthetic_samples

    seed = recipe.train.seed
    return build_synthetic_policy(synthetic_samples(16, seed=seed), seed=seed, **recipe.model.overrides)


def _cue_policy(recipe: Recipe) -> EmCoTPolicy:
    from emcot.synthetic.cue import build_cue_policy, cue_action_samples, cue_demos

    seed = recipe.train.seed
    samples = cue_action_samples(cue_demos(32, seed=seed))  # normalisation statistics only
    return build_cue_policy(samples, seed=seed, **recipe.model.overrides)


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


def _fresh_dataset(recipe: Recipe) -> tuple[LeRobotDataset, list[DataSpec]]:
    """The dataset a fresh policy is built for (``model.dataset`` or the first LeRobot source), and the
    recipe's specs that read it (their annotation sidecars feed the tokenizer)."""
    lerobot = [s for s in recipe.data.datasets if source_kind(s.kind).lerobot and s.path]
    path = recipe.model.dataset or (lerobot[0].path if lerobot else None)
    if path is None:
        raise ValueError(
            "model.init 'fresh' needs a LeRobot dataset: list a lerobot* data source or set model.dataset"
        )
    mapped = [s for s in lerobot if Path(str(s.path)).resolve() == Path(path).resolve()]
    cameras = next((s.options["cameras"] for s in mapped if s.options.get("cameras")), None)
    return LeRobotDataset(path, cameras=cameras), mapped


def fresh_corpus(dataset: LeRobotDataset, specs: list[DataSpec]) -> list[str]:
    """Texts a fresh tokenizer is trained on: the dataset's tasks, the annotations' reasoning and
    video-QA pairs, demo VQA."""
    from emcot.training.annotation.annotations import read_annotations
    from emcot.training.data.demo_vqa import vqa_corpus
    from emcot.training.data.emcot_samples import format_reasoning
    from emcot.training.data.future_frames import FutureFrameConfig

    texts = list(dataset.tasks.values()) + vqa_corpus()
    prompt = FutureFrameConfig().prompt
    texts += [prompt.format(instruction=task.rstrip(".")) for task in dataset.tasks.values()]
    sidecars = dict.fromkeys(str(s.options["annotations"]) for s in specs if s.options.get("annotations"))
    for sidecar in sidecars:
        for annotation in read_annotations(sidecar).values():
            if annotation.status != "ok":
                continue
            for i, subtask in enumerate(annotation.subtasks):
                texts += [subtask.text, format_reasoning(annotation, i, subtask.start)]
            texts += [text for qa in annotation.video_qa for text in (qa.question, qa.answer)]
    return texts


def dataset_norm_stats(dataset: LeRobotDataset) -> RobotNormStats:
    """Action (and state) statistics from ``meta/stats.json``, under the dataset's name (the samples' robot).

    LeRobot's files hold mean/std/min/max (q01/q99 only in some versions); min/max stand in for
    missing quantiles, which only the ``quantile`` normalisation reads.
    """
    stats = dataset.stats

    def entry(key: str | None) -> NormStats | None:
        if key is None or key not in stats:
            return None
        s = stats[key]
        missing = [f for f in ("mean", "std", "min", "max") if f not in s]
        if missing:
            raise ValueError(
                f"{dataset.root}/meta/stats.json lacks {missing} for {key!r}; recompute the stats"
            )
        count = int(np.asarray(s.get("count", [0])).reshape(-1)[0])
        return NormStats(
            s["mean"], s["std"], s.get("q01", s["min"]), s.get("q99", s["max"]), s["min"], s["max"], count
        )

    action = entry(dataset.action_key)
    if action is None:
        raise ValueError(
            f"{dataset.root} has no statistics for {dataset.action_key!r}; a fresh policy needs meta/stats.json"
        )
    return RobotNormStats({dataset.name: {"action": action, "state": entry(dataset.state_key)}})


def _fresh_policy(recipe: Recipe) -> EmCoTPolicy:
    """Random weights of ``model.preset`` with the dataset's cameras, dimensions, statistics and texts."""
    from emcot.config import EmCoTConfig
    from emcot.model.modeling import EmCoTModel
    from emcot.policy.processor import EmCoTProcessor, ProcessorConfig
    from emcot.presets import PRESETS
    from emcot.tokenizers.text import SentencePieceTextTokenizer

    spec = recipe.model
    dataset, specs = _fresh_dataset(recipe)
    stats = dataset_norm_stats(dataset)
    entry = stats.for_robot(dataset.name)
    action, state = entry["action"], entry["state"]
    assert action is not None  # dataset_norm_stats always sets the action statistics
    tokenizer = SentencePieceTextTokenizer.train(fresh_corpus(dataset, specs), vocab_size=spec.vocab_size)
    base = PRESETS[spec.preset]()
    shapes = dict(action_dim=action.dim, state_dim=0 if state is None else state.dim)
    parts: dict = {"action": dataclasses.replace(base["action"], **shapes)}
    codec = _pretrained_codec(spec.codec, base.get("vae")) if spec.codec else None
    if codec is not None:
        parts["vae"] = codec.config
    torch.manual_seed(recipe.train.seed)
    config = EmCoTConfig.from_preset(spec.preset, vocab_size=len(tokenizer), **{**parts, **spec.overrides})
    model = EmCoTModel(config)
    if codec is not None:
        assert model.latent_codec is not None  # the config has a VAE: the codec's
        model.latent_codec.load_state_dict(codec.state_dict())
    settings = ProcessorConfig(cameras=list(dataset.cameras), robot=dataset.name)
    return EmCoTPolicy(model, EmCoTProcessor(config, tokenizer, stats, settings))


def _pretrained_codec(folder: str, preset: VAEConfig | None) -> LatentCodec:
    """A trained latent codec: a diffusers AutoencoderKL folder, its geometry and calibration in
    ``vae_config.json`` (without one, at the preset's subgoal size and latent patch)."""
    from emcot.tokenizers.vae import LatentCodec, VAEConfig

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model.codec '{folder}' is not a codec folder (no config.json); train one with the codec trainer "
            "or leave model.codec unset for a random codec"
        )
    saved = path / "vae_config.json"
    if not saved.is_file():
        if preset is None:
            return LatentCodec.from_pretrained(path)
        return LatentCodec.from_pretrained(path, image_size=preset.image_size, patch_size=preset.patch_size)
    config = VAEConfig.from_dict(read_json(saved, "codec settings"))
    codec = LatentCodec.from_pretrained(
        path,
        image_size=config.image_size,
        patch_size=config.patch_size,
        sample_posterior=config.sample_posterior,
    )
    arch = (
        "latent_channels",
        "block_out_channels",
        "layers_per_block",
        "norm_num_groups",
        "mid_block_attention",
    )
    differ = [k for k in arch if getattr(codec.config, k) != getattr(config, k)]
    if differ:
        raise ValueError(
            f"{saved} disagrees with the AutoencoderKL's config.json on {differ}; re-save the codec"
        )
    # vae_config.json is authoritative: it holds the calibrated scale/shift beside the geometry.
    codec.config = config
    return codec


_INITIAL_POLICIES: dict[InitSource, Callable[[Recipe], EmCoTPolicy]] = {
    InitSource.SYNTHETIC: _synthetic_policy,
    InitSource.SYNTHETIC_CUE: _cue_policy,
    InitSource.DEFAULT: lambda recipe: with_config_overrides(EmCoTPolicy.default(), recipe.model.overrides),
    InitSource.COMPONENTS: _policy_from_components,
    InitSource.FRESH: _fresh_policy,
}


def _saved_policy(source: str, names: list[str]) -> EmCoTPolicy:
    """A saved policy folder, or a training output: its ``final-ema`` policy (the averaged weights,
    what the run is evaluated with) when it kept an EMA, else its ``final`` one."""
    path = Path(source)
    if not (path / "config.json").is_file():
        path = next(
            (path / name for name in ("final-ema", "final") if (path / name / "config.json").is_file()), path
        )
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
        # A dataset view that names its robot needs no pass over its samples (videos) when it has stats.
        if getattr(source, "robot", None) in stats:
            continue
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
    # Kinds without action chunks (VQA, future frames) would be read in full for nothing.
    kinds = [source_kind(spec.kind) for spec in recipe.data.datasets]
    ensure_norm_stats(policy, [source for source, kind in zip(sources, kinds) if kind.actions])
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
