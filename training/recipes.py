"""Training recipes: typed configs read from YAML (a path or a shipped name).

Data sources are registered in :mod:`emcot.training.data.sources`, the initial policies in
:mod:`emcot.training.policy_files`.

Shipped recipes live in ``emcot/training/recipes/*.yaml``: ``stage1-tiny``, ``stage2-tiny``,
``finetune-tiny`` (CPU, minutes, synthetic data by default) and ``stage1-halo-4.5b``,
``stage2-halo-4.5b``, ``finetune-halo-4.5b`` (the HALO release's settings), ``mw-stage1-small``,
``mw-stage2-small``, ``mw-reactive-small`` (the ``small`` preset on Meta-World demos),
``mw-recovery-small`` (more stage 2 for a finished one, on clean plus DART recovery demos).

A recipe file may use ``${NAME}`` / ``${NAME:-default}``: environment variables (e.g. the dataset
path ``EMCOT_MW_DATA``) point a shipped recipe elsewhere without copying it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emcot.config import LossConfig
from emcot.io_utils import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    Range,
    check_fields,
    check_value,
    dataclass_from_dict,
)
from emcot.training.collate import ConditionDropout, SubgoalBlur
from emcot.training.data.sources import DataSpec
from emcot.training.divergence import OnDivergence
from emcot.training.finetune import FinetuneConfig
from emcot.training.packing import PackingConfig

RECIPE_DIR = Path(__file__).parent / "recipes"


def _build(cls, data: Any, where: str):
    """A dataclass from a mapping, with unknown keys named in the error and every error placed at ``where``."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"recipe section '{where}' must be a mapping, got {type(data).__name__}")
    try:
        return dataclass_from_dict(cls, data, label="unknown keys", where=f" in recipe section '{where}'")
    except ValueError as err:
        if where in str(err):
            raise
        raise ValueError(f"{err} (in recipe section '{where}')") from None


@dataclass(frozen=True)
class ModelSpec:
    """Where the initial weights come from.

    ``init``: a named source (:class:`~emcot.training.policy_files.InitSource`): ``synthetic`` (a
    fresh tiny policy with a tokenizer for the synthetic task), ``default`` (the bundled Meta-World
    policy), ``components`` (HALO's initialisation from a Qwen LLM, SigLIP and VAE folders given in
    ``components``), ``fresh`` (random weights of ``preset`` built for a LeRobot dataset: its
    cameras, action/state sizes and ``meta/stats.json``, a SentencePiece tokenizer of ``vocab_size``
    trained on its task texts and annotations; ``dataset`` names it, default the first ``lerobot*``
    data source; ``codec`` optionally a trained latent codec folder — a diffusers AutoencoderKL
    with its ``vae_config.json``); else the path of a saved policy / training output.
    ``generation``: defaults of :class:`~emcot.inference.options.GenerationOptions` the trained policy
    saves in place of its starting point's, e.g. ``max_reasoning_tokens`` for longer reasoning.
    ``keypoints``: a folder of camera keypoints fitted to the policy
    (``scripts/train_camera_keypoints.py``) to attach to the starting policy.
    """

    init: str = "synthetic"
    components: dict = field(default_factory=dict)
    cameras: tuple[str, ...] = ("head",)
    overrides: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)
    gradient_checkpointing: bool = False
    preset: str = "tiny"
    dataset: str | None = None
    codec: str | None = None
    keypoints: str | None = None
    vocab_size: int = 1024

    def __post_init__(self) -> None:
        from emcot.presets import PRESETS
        from emcot.tokenizers.text_sentencepiece import MIN_VOCAB_SIZE

        check_fields(self, "model", vocab_size=Range(ge=MIN_VOCAB_SIZE))
        if self.preset not in PRESETS:
            close = difflib.get_close_matches(self.preset, PRESETS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"model.preset '{self.preset}' is not one of {sorted(PRESETS)}{hint}")
        for key in ("dataset", "codec", "keypoints"):
            # An empty path (e.g. an unset ``${VAR:-}``) means "none".
            if getattr(self, key) == "":
                object.__setattr__(self, key, None)


@dataclass(frozen=True)
class DataConfig:
    """The training mixture, its packing budget, condition dropout, subgoal blur (see
    :class:`~emcot.training.collate.SubgoalBlur`) and an optional validation mixture.

    ``frame_cache_gb``: the per-process budget of decoded video frames kept in memory
    (``training.data.frame_cache``); random packing re-reads episodes, so a budget that holds the
    whole dataset's frames makes each episode decode once. 0 disables it.
    """

    datasets: tuple[DataSpec, ...] = ()
    packing: PackingConfig = PackingConfig()
    dropout: ConditionDropout = ConditionDropout()
    subgoal_blur: SubgoalBlur = SubgoalBlur()
    validation: tuple[DataSpec, ...] = ()
    validation_packs: int = 2
    frame_cache_gb: float = 2.0

    def __post_init__(self) -> None:
        check_fields(self, "data", validation_packs=AT_LEAST_ONE, frame_cache_gb=NON_NEGATIVE)
        for name in ("datasets", "validation"):
            specs = tuple(_build(DataSpec, d, f"data.{name}[{i}]") for i, d in enumerate(getattr(self, name)))
            object.__setattr__(self, name, specs)
        object.__setattr__(self, "packing", _build(PackingConfig, self.packing, "data.packing"))
        object.__setattr__(self, "dropout", _build(ConditionDropout, self.dropout, "data.dropout"))
        object.__setattr__(self, "subgoal_blur", _build(SubgoalBlur, self.subgoal_blur, "data.subgoal_blur"))
        if not self.datasets:
            raise ValueError("the recipe's data.datasets is empty; list at least one data source")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then a cosine (or constant) schedule, and gradient clipping.

    ``lr_scale`` multiplies the learning rate of the parameters under a top-level module of the
    model, e.g. ``{keypoints: 20}``: a zero-initialised module attached to a trained policy then
    learns at its own pace while the rest continues gently.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    clip_grad_norm: float | None = 1.0
    lr_scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.lr_scale, dict):
            raise ValueError(f"optim.lr_scale must map module names to factors, got {self.lr_scale!r}")
        scales = {}
        for module, scale in self.lr_scale.items():
            number = float(scale) if isinstance(scale, int) and not isinstance(scale, bool) else scale
            scales[str(module)] = check_value(f"optim.lr_scale.{module}", number, float, POSITIVE)
        object.__setattr__(self, "lr_scale", scales)
        # clip_grad_norm ≤ 0 would scale every gradient by a negative or infinite factor.
        check_fields(
            self,
            "optim",
            lr=POSITIVE,
            eps=POSITIVE,
            weight_decay=NON_NEGATIVE,
            warmup_steps=NON_NEGATIVE,
            min_lr_ratio=UNIT_INTERVAL,
            clip_grad_norm=POSITIVE,
        )
        for i, beta in enumerate(self.betas):
            check_value(f"optim.betas[{i}]", beta, float, Range(ge=0, lt=1))
        if self.schedule not in ("cosine", "constant", "linear"):
            raise ValueError(
                f"optim.schedule must be 'cosine', 'linear' or 'constant', got '{self.schedule}'"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Run length, seed, EMA, precision, sharding and the logging / validation / checkpoint periods.

    ``fsdp`` shards weights, gradients and optimizer state over the processes of a distributed
    launch (also implied by an accelerate config with ``distributed_type: FSDP``).
    ``on_divergence`` says what a step with a non-finite loss or gradient norm does: ``stop`` the
    run with an error, or ``skip`` the update (counted as ``skipped_steps`` in the metrics) until
    ``max_skipped_steps`` such steps come in a row.
    """

    total_steps: int = 100
    seed: int = 0
    ema_decay: float | None = None
    mixed_precision: str = "auto"
    fsdp: bool = False
    save_every: int = 50
    keep_last: int = 2
    eval_every: int = 0
    log_every: int = 1
    log_with: tuple[str, ...] = ()
    progress: bool = True
    on_divergence: OnDivergence = OnDivergence.STOP
    max_skipped_steps: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.on_divergence, OnDivergence):
            choices = [c.value for c in OnDivergence]
            if self.on_divergence not in choices:
                raise ValueError(f"train.on_divergence must be one of {choices}, got {self.on_divergence!r}")
            object.__setattr__(self, "on_divergence", OnDivergence(self.on_divergence))
        check_fields(
            self,
            "train",
            total_steps=AT_LEAST_ONE,
            seed=NON_NEGATIVE,
            ema_decay=Range(ge=0, lt=1),
            save_every=AT_LEAST_ONE,
            keep_last=AT_LEAST_ONE,
            eval_every=NON_NEGATIVE,
            log_every=AT_LEAST_ONE,
            max_skipped_steps=AT_LEAST_ONE,
        )
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(
                f"train.mixed_precision must be auto, no, bf16 or fp16, got '{self.mixed_precision}'"
            )


@dataclass(frozen=True)
class Recipe:
    """A whole training recipe (one stage)."""

    name: str
    data: DataConfig
    stage: str = "stage1"
    model: ModelSpec = ModelSpec()
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    finetune: FinetuneConfig | None = None

    def __post_init__(self) -> None:
        check_fields(self, "recipe")
        for key, section in _SECTIONS.items():
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, _build(section, value, key))

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        """Build and validate from a plain mapping (a parsed YAML file)."""
        data = {k: v for k, v in data.items() if v is not None}
        if "data" not in data or "name" not in data:
            raise ValueError("a recipe needs at least 'name' and 'data' sections")
        return dataclass_from_dict(cls, data, label="unknown keys", where=" in recipe section 'recipe'")

    def to_dict(self) -> dict:
        """Plain mapping (for trackers and the run folder)."""
        return dataclasses.asdict(self)

    def replace_steps(self, total_steps: int) -> Recipe:
        """A copy with another run length."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, total_steps=total_steps))


_SECTIONS = {
    "data": DataConfig,
    "model": ModelSpec,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "finetune": FinetuneConfig,
}


# ``${NAME}`` or ``${NAME:-default}`` in a recipe: paths a user points elsewhere without copying the file.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_variables(text: str, where: Path | str = "recipe") -> str:
    """``text`` with every ``${NAME:-default}`` replaced by the environment variable or its default."""

    def value(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ValueError(
                f"{where} uses ${{{name}}} but it is not set; export {name}=... or add a default"
            )
        return default

    return _VARIABLE.sub(value, text)


def shipped_recipes() -> list[str]:
    """Names of the recipes that come with the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe from a YAML path or a shipped recipe name.

    A recipe with ``base: <name or path>`` starts from that recipe's mapping: each of its own
    sections replaces the base's keys it names and keeps the rest (so a continuation recipe states
    only what it changes).
    """
    path, data = _recipe_mapping(name_or_path)
    try:
        return Recipe.from_dict(data)
    except ValueError as err:
        raise ValueError(f"recipe {path}: {err}") from None


def _recipe_mapping(name_or_path: str | Path, chain: tuple[Path, ...] = ()) -> tuple[Path, dict]:
    """The recipe's path and its YAML mapping with its ``base`` (if any) merged in."""
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ValueError(
                f"recipe '{name_or_path}' is neither a YAML file nor a shipped recipe; "
                f"shipped recipes: {shipped_recipes()}"
            )
    try:
        data = yaml.safe_load(expand_variables(path.read_text(encoding="utf-8"), path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"recipe {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a YAML mapping")
    if "base" not in data:
        return path, data
    if path.resolve() in chain:
        raise ValueError(f"recipe {path}: its base chain loops back to itself")
    base = str(data.pop("base"))
    beside = path.parent / base  # a base path is read relative to the recipe that names it
    _, merged = _recipe_mapping(beside if beside.is_file() else base, (*chain, path.resolve()))
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return path, merged
