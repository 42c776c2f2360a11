"""The data-source registry: each data ``kind`` of a recipe, registered once with its builder.

A recipe's ``data.datasets`` entries are :class:`DataSpec` s; ``kind`` names a registered source
(``synthetic_trace``, ``lerobot``, ``vqa_json`` …) and :func:`build_source` looks its builder up.
A new source is one decorated function::

    @register("my_source", needs_path=True)
    def _my_source(spec: DataSpec, recipe: Recipe, horizon: int) -> Source: ...
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check_fields, dataclass_from_dict
from emcot.synthetic import world as synthetic
from emcot.training.data.demo_vqa import DemoVQAConfig, DemoVQADataset
from emcot.training.data.emcot_samples import AnnotatedDataset, SampleConfig
from emcot.training.data.future_frames import FutureFrameConfig, FutureFrameDataset
from emcot.training.data.lerobot import LeRobotDataset
from emcot.training.data.vqa import LlavaVQADataset
from emcot.training.finetune import NEW_ROBOT, FinetuneConfig
from emcot.types import EmCoTSample

if TYPE_CHECKING:  # recipes.py imports this module for DataSpec
    from emcot.training.recipes import Recipe


class Source(Protocol):
    """What a builder returns: a list or a map-style dataset of samples."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> EmCoTSample: ...

    def __iter__(self) -> Iterator[EmCoTSample]: ...


# A builder: (the source's spec, the recipe, the model's chunk horizon) → its samples.
Builder = Callable[["DataSpec", "Recipe", int], Source]


@dataclass(frozen=True)
class SourceKind:
    """A registered data kind: its builder, whether it reads a dataset at ``DataSpec.path``, whether
    that dataset is a LeRobot dataset (a fresh policy takes its cameras, texts and statistics from
    one) and whether its samples can carry action chunks (statistics are computed only from those)."""

    name: str
    build: Builder
    needs_path: bool = False
    lerobot: bool = False
    actions: bool = True


_SOURCES: dict[str, SourceKind] = {}


def register(
    name: str, *, needs_path: bool = False, lerobot: bool = False, actions: bool = True
) -> Callable[[Builder], Builder]:
    """Decorator registering a builder as data kind ``name`` (flags: see :class:`SourceKind`); once per name."""

    def add(build: Builder) -> Builder:
        if name in _SOURCES:
            raise ValueError(f"data kind '{name}' is registered twice")
        _SOURCES[name] = SourceKind(name, build, needs_path, lerobot=lerobot, actions=actions)
        return build

    return add


def data_kinds() -> list[str]:
    """Names of the registered data kinds."""
    return list(_SOURCES)


def source_kind(name: str) -> SourceKind:
    """The registered data kind ``name``; a typo names the closest one."""
    if name in _SOURCES:
        return _SOURCES[name]
    close = difflib.get_close_matches(name, _SOURCES, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"unknown data kind {name!r}{hint}; choose one of {data_kinds()}")


@dataclass(frozen=True)
class DataSpec:
    """One data source: its ``kind`` (see :func:`data_kinds`), mixture ``weight`` and kind-specific options."""

    kind: str
    weight: float = 1.0
    path: str | None = None
    num_samples: int = 64
    seed: int = 0
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "dataset", weight=POSITIVE, num_samples=AT_LEAST_ONE, seed=NON_NEGATIVE)
        if source_kind(self.kind).needs_path and not self.path:
            raise ValueError(f"data kind '{self.kind}' needs a path to the dataset")


def build_source(spec: DataSpec, recipe: Recipe, horizon: int) -> Source:
    """The samples of one data source."""
    return source_kind(spec.kind).build(spec, recipe, horizon)


@register("synthetic_trace")
def _synthetic_trace(spec: DataSpec, recipe: Recipe, horizon: int) -> Source:
    return synthetic.synthetic_samples(spec.num_samples, seed=spec.seed)


@register("synthetic_action")
def _synthetic_action(spec: DataSpec, recipe: Recipe, horizon: int) -> Source:
    return synthetic.synthetic_action_samples(spec.num_samples, seed=spec.seed)


@register("synthetic_vqa", actions=False)
def _synthetic_vqa(spec: DataSpec, recipe: Recipe, horizon: int) -> Source:
    return synthetic.synthetic_vqa_samples(spec.num_samples, seed=spec.seed)


@register("synthetic_generation", actions=False)
def _synthetic_generation(spec: DataSpec, recipe: Recipe, horizon: int) -> Source:
    return synthetic.synthetic_generation_samples(spec.num_samples, seed=spec.seed)


@register("synthetic_robot")
def _synthetic_robot(spec: DataSpec, recipe: Recipe, horizon: int) -> Source:
    """Pushing samples for another robot; sizes default to the recipe's fine-tuning target."""
    ft, opts = recipe.finetune or FinetuneConfig(), spec.options
    return synthetic.synthetic_robot_samples(
        spec.num_samples,
        action_dim=opts.get("action_dim", ft.action_dim or 4),
        state_dim=opts.get("state_dim", ft.state_dim if ft.state_dim is not None else 4),
        horizon=opts.get("horizon", horizon),
        seed=spec.seed,
        # A fine-tune on the policy's own robot (robot None) still names the samples' robot.
        robot=opts.get("robot", ft.robot or NEW_ROBOT),
    )


def _cue_demos(spec: DataSpec, horizon: int):
    from emcot.synthetic.cue import CueConfig, cue_demos

    unknown = set(spec.options) - {"noise", "color_agreement"}
    if unknown:
        raise ValueError(
            f"unknown options {sorted(unknown)} of data kind '{spec.kind}'; it takes noise, color_agreement"
        )
    noise = spec.options.get("noise", 0.05)
    config = CueConfig(color_agreement=spec.options.get("color_agreement"))
    return cue_demos(spec.num_samples, seed=spec.seed, config=config, horizon=horizon, noise=float(noise))


@register("synthetic_cue")
def _synthetic_cue(spec: DataSpec, recipe: Recipe, horizon: int) -> Source:
    """Action-only samples of ``num_samples`` cue-task demos (:mod:`emcot.synthetic.cue`), each
    with its episode's earlier steps as history; options ``noise`` (gripper noise of the demos) and
    ``color_agreement`` (a colour–side shortcut in the demos, :class:`~emcot.synthetic.cue.CueConfig`)."""
    from emcot.synthetic.cue import cue_action_samples

    return cue_action_samples(_cue_demos(spec, horizon))


@register("synthetic_cue_vqa", actions=False)
def _synthetic_cue_vqa(spec: DataSpec, recipe: Recipe, horizon: int) -> Source:
    """Video-QA about the history of ``num_samples`` cue-task demos (which side the light showed,
    where the gripper started): the rule questions of the cue task, weighed by ``loss.vqa_weight``."""
    from emcot.synthetic.cue import cue_vqa_samples

    return cue_vqa_samples(_cue_demos(spec, horizon))


@register("vqa_json", needs_path=True, actions=False)
def _vqa_json(spec: DataSpec, recipe: Recipe, horizon: int) -> Source:
    opts = spec.options
    return LlavaVQADataset(str(spec.path), opts.get("image_root"), opts.get("max_samples"))


class ReasonOnly:
    """A trace source's samples without their subgoal: reasoning then actions (the ``reason`` trace mode)."""

    def __init__(self, source: AnnotatedDataset) -> None:
        self.source = source
        self.robot = source.robot

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> EmCoTSample:
        return dataclasses.replace(self.source[index], subgoal=None)

    def __iter__(self) -> Iterator[EmCoTSample]:
        return (dataclasses.replace(sample, subgoal=None) for sample in self.source)


@register("lerobot", needs_path=True, lerobot=True)
def _lerobot(spec: DataSpec, recipe: Recipe, horizon: int) -> Source:
    """Annotated (``mode: emcot``) or action-only (``mode: action``) samples of a LeRobot dataset.

    ``subgoal: false`` (emcot mode) leaves the subgoal image out, so the traces teach the
    ``reason`` mode (reasoning → actions) beside the full one.
    """
    opts = dict(spec.options)
    cameras, annotations = opts.pop("cameras", None), opts.pop("annotations", None)
    subgoal = opts.pop("subgoal", True)
    if not isinstance(subgoal, bool):
        raise ValueError(f"option 'subgoal'{_where(spec)} must be true or false, got {subgoal!r}")
    config = dataclass_from_dict(SampleConfig, {"horizon": horizon, **opts}, "unknown options", _where(spec))
    source = AnnotatedDataset(LeRobotDataset(str(spec.path), cameras=cameras), annotations, config)
    return source if subgoal else ReasonOnly(source)


@register("lerobot_future", needs_path=True, lerobot=True, actions=False)
def _lerobot_future(spec: DataSpec, recipe: Recipe, horizon: int) -> Source:
    """Future-frame generation samples of a LeRobot dataset's videos."""
    opts = dict(spec.options)
    cameras = opts.pop("cameras", None)
    config = dataclass_from_dict(FutureFrameConfig, opts, "unknown options", _where(spec))
    return FutureFrameDataset(LeRobotDataset(str(spec.path), cameras=cameras), config)


def _where(spec: DataSpec) -> str:
    return f" of data kind '{spec.kind}' ({spec.path})"


@register("lerobot_vqa", needs_path=True, lerobot=True, actions=False)
def _lerobot_vqa(spec: DataSpec, recipe: Recipe, horizon: int) -> Source:
    """VQA samples about the frames of a LeRobot dataset's demos (state, ``sim.*`` signals, annotations)."""
    opts = dict(spec.options)
    cameras, annotations = opts.pop("cameras", None), opts.pop("annotations", None)
    config = dataclass_from_dict(DemoVQAConfig, {"seed": spec.seed, **opts}, "unknown options", _where(spec))
    return DemoVQADataset(LeRobotDataset(str(spec.path), cameras=cameras), annotations, config)
