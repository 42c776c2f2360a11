"""The benchmarks ``emcot eval`` runs, each registered once with everything the driver needs:
its task names and buckets, its environment, the interface a policy must fit (cameras, state and
action sizes), its scripted expert and what identifies its version in a protocol.

Simulators are imported only when an environment or expert is built, inside the worker.

API: ``EnvSettings(resolution, cameras, max_steps, fast_render)``; ``Benchmark``;
``BENCHMARKS`` (``metaworld``, ``synthetic-cue``); ``benchmark(name)`` (a typo names the closest).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emcot.eval.envs.base import Env
from emcot.io_utils import AT_LEAST_ONE, Range, check_fields


@dataclass(frozen=True)
class EnvSettings:
    """How an evaluation's environments render and how long their episodes may run."""

    resolution: int
    cameras: tuple[str, ...]
    max_steps: int
    fast_render: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "EnvSettings", resolution=Range(ge=16, le=480), max_steps=AT_LEAST_ONE)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: tasks (``expand_tasks`` of a spec such as ``easy`` or ``a,b``; ``bucket_of``
    a task's bucket, in ``bucket_order``), ``make_env(task, settings)``, the policy interface
    (``cameras`` an env can render, ``state_dim``, ``action_dim``), ``make_expert(task)`` (a
    session reading the raw observation), ``require()`` (raises ImportError naming the extra),
    ``protocol()`` (what identifies the simulator), defaults, and the camera recorded for policies
    that need no pixels (``render_camera``)."""

    name: str
    cameras: tuple[str, ...]
    state_dim: int
    action_dim: int
    expand_tasks: Callable[[str], list[str]]
    bucket_of: Callable[[str], str]
    bucket_order: tuple[str, ...]
    make_env: Callable[[str, EnvSettings], Env]
    make_expert: Callable[[str], Any]
    require: Callable[[], None]
    protocol: Callable[[], dict[str, Any]]
    default_tasks: str
    default_resolution: int
    default_max_steps: int
    render_camera: str


# --- Meta-World v3 -------------------------------------------------------------------------------


def _metaworld_tasks(spec: str) -> list[str]:
    from emcot.eval.envs.metaworld_tasks import expand_tasks

    return expand_tasks(spec)


def _metaworld_bucket(task: str) -> str:
    from emcot.eval.envs.metaworld_tasks import difficulty_of

    return difficulty_of(task)


def _metaworld_env(task: str, settings: EnvSettings) -> Env:
    from emcot.eval.envs.metaworld import MetaWorldConfig, MetaWorldEnv

    config = MetaWorldConfig(
        resolution=settings.resolution,
        cameras=settings.cameras,
        max_steps=settings.max_steps,
        fast_render=settings.fast_render,
    )
    return MetaWorldEnv(task, config)


def _metaworld_expert(task: str) -> Any:
    from emcot.eval.policies import ExpertSession

    return ExpertSession(task)


def _metaworld_require() -> None:
    from emcot.eval.envs.metaworld import require_metaworld

    require_metaworld()


def _metaworld_protocol() -> dict[str, Any]:
    from emcot.eval.envs.metaworld_tasks import CAMERAS

    try:
        version = importlib.metadata.version("metaworld")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"metaworld": version, "camera": dataclasses.asdict(CAMERAS["corner2"])}


def _metaworld() -> Benchmark:
    from emcot.eval.envs.metaworld import ACTION_DIM, STATE_DIM
    from emcot.eval.envs.metaworld_tasks import CAMERAS, DIFFICULTY

    return Benchmark(
        name="metaworld",
        cameras=tuple(CAMERAS),
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        expand_tasks=_metaworld_tasks,
        bucket_of=_metaworld_bucket,
        bucket_order=DIFFICULTY,
        make_env=_metaworld_env,
        make_expert=_metaworld_expert,
        require=_metaworld_require,
        protocol=_metaworld_protocol,
        default_tasks="easy",
        default_resolution=128,
        default_max_steps=500,
        render_camera="corner2",
    )


# --- the synthetic cue task (memory) -------------------------------------------------------------


def _cue_tasks(spec: str) -> list[str]:
    from emcot.synthetic.cue import CUE_TASK

    names = [part.strip() for part in spec.split(",") if part.strip()]
    wrong = [name for name in names if name != CUE_TASK]
    if not names or wrong:
        raise ValueError(f"the synthetic-cue benchmark has one task, '{CUE_TASK}'; got {spec!r}")
    return names


def _cue_env(task: str, settings: EnvSettings) -> Env:
    from emcot.eval.envs.synthetic_cue import SyntheticCueEnv
    from emcot.synthetic.cue import CueConfig
    from emcot.synthetic.world import SyntheticConfig

    _cue_tasks(task)
    return SyntheticCueEnv(
        CueConfig(world=SyntheticConfig(image_size=settings.resolution), max_steps=settings.max_steps)
    )


def _cue_expert(task: str) -> Any:
    from emcot.eval.envs.synthetic_cue import CueExpertSession

    _cue_tasks(task)
    return CueExpertSession()


def _cue_protocol() -> dict[str, Any]:
    from emcot.synthetic.cue import CueConfig

    cue = dataclasses.asdict(CueConfig())
    cue.pop("max_steps")  # the protocol's own max_steps says it
    cue["world"].pop("image_size")  # and its resolution
    return {"cue": cue}


def _synthetic_cue() -> Benchmark:
    from emcot.eval.envs.synthetic_cue import ACTION_DIM, STATE_DIM
    from emcot.synthetic.cue import CUE_TASK, CueConfig

    return Benchmark(
        name="synthetic-cue",
        cameras=("head",),
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        expand_tasks=_cue_tasks,
        bucket_of=lambda task: "memory",
        bucket_order=("memory",),
        make_env=_cue_env,
        make_expert=_cue_expert,
        require=lambda: None,
        protocol=_cue_protocol,
        default_tasks=CUE_TASK,
        default_resolution=32,
        default_max_steps=CueConfig().max_steps,
        render_camera="head",
    )


BENCHMARKS: dict[str, Callable[[], Benchmark]] = {"metaworld": _metaworld, "synthetic-cue": _synthetic_cue}


def benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; a typo names the closest one."""
    if name not in BENCHMARKS:
        close = difflib.get_close_matches(name, BENCHMARKS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown benchmark {name!r}{hint}; choose one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]()
