"""Scripted Meta-World demonstrations → a LeRobot v3 dataset (``emcot collect metaworld``).

API:
- ``CollectConfig(tasks, out, episodes=50, seed=0, resolution=128, cameras=("corner2",),
  storage=Storage.VIDEO, keep_failed=False, max_steps=500, max_attempts=None, action_noise=0.0,
  wander_steps=0)`` — ``tasks`` may
  name splits (``easy``, ``mt10`` …) and short names (``push``); they are expanded.
- ``collect_metaworld(config, *, make_env=None, make_expert=None, progress=True) -> CollectSummary``;
  ``make_env(task, MetaWorldConfig)`` / ``make_expert(task)`` default to ``MetaWorldEnv`` /
  ``ScriptedExpert`` (tests hand in fakes).

Episode *i* of a task is seeded with ``seed + i``; evaluation seeds ``1000 + i`` (i < 500), so a
seed range that reaches into [1000, 1500) is refused. By default only successful episodes are kept:
attempts go on (up to ``max_attempts``, default twice ``episodes``) until ``episodes`` demos of the
task succeeded; with ``keep_failed`` every attempt is an episode. Episodes stop at the first success.

Each frame holds the camera images and ``observation.state`` (``obs[:4]``) seen *before* the expert's
action, the action, and the simulator columns of ``training.annotation.sim_rules`` (``sim.*``: the
gripper opening, ``grasp_success``, ``near_object``, ``obj_to_target``, ``success``, the object
position and the goal position, ``obs[36:39]``) as they are *after* that action. With ``action_noise`` the executed action is perturbed
and the recorded one is the expert's (DART: the labels show recoveries); with ``wander_steps`` the hand
first wanders to random waypoints for that many steps, the expert's actions still recorded
(:mod:`emcot.eval.recording`).

Resumable: every finished attempt is saved (atomically) under ``OUT/collect-work/<task>/`` and a
rerun reuses it, so a killed run continues where it stopped and asking for more episodes collects
only the new ones. The dataset is written at the end into ``collect-work/staging`` and then moved
into ``OUT`` (``meta/`` last: a reader never sees a half-written dataset).
"""

from __future__ import annotations

import enum
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, overload

import numpy as np
from tqdm import tqdm

from emcot.eval.envs.base import Env
from emcot.eval.envs.metaworld import MetaWorldConfig
from emcot.eval.envs.metaworld_tasks import expand_tasks
from emcot.eval.recording import Attempt, Expert, record_episode
from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, check_fields, parse_choice
from emcot.training.data.lerobot_writer import EpisodeData, WriterConfig, write_lerobot_dataset

# Meta-World's control period is 5 physics steps of 2.5 ms (env.dt = 0.0125 s).
FPS = 80
# The evaluation protocol seeds episode i of every task with 1000 + i, for up to 500 episodes.
EVAL_SEEDS = range(1000, 1500)
WORK_DIR = "collect-work"
_MANIFEST_KEYS = ("resolution", "cameras", "max_steps", "action_noise", "wander_steps")


class Storage(str, enum.Enum):
    """How camera frames are stored: mp4 videos (small, lossy) or PNG images in the parquet rows."""

    VIDEO = "video"
    IMAGE = "image"


@dataclass(frozen=True)
class CollectConfig:
    """What to collect and where (see the module docstring)."""

    tasks: tuple[str, ...]
    out: str
    episodes: int = 50
    seed: int = 0
    resolution: int = 128
    cameras: tuple[str, ...] = ("corner2",)
    storage: Storage = Storage.VIDEO
    keep_failed: bool = False
    max_steps: int = 500
    max_attempts: int | None = None
    action_noise: float = 0.0
    wander_steps: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "storage", parse_choice(Storage, self.storage, "camera storage"))
        check_fields(
            self, "CollectConfig", episodes=AT_LEAST_ONE, max_steps=AT_LEAST_ONE, action_noise=NON_NEGATIVE,
            wander_steps=NON_NEGATIVE,
        )  # fmt: skip
        if not self.tasks or not self.cameras:
            raise ValueError("CollectConfig needs at least one task and one camera.")
        # Split names ("easy", "mt10") and short names ("push") become the task names they stand for.
        object.__setattr__(self, "tasks", tuple(expand_tasks(",".join(self.tasks))))
        self.env_config()  # resolution and camera names fail here, before any work
        if self.max_attempts is not None and self.max_attempts < self.episodes:
            raise ValueError(f"max_attempts ({self.max_attempts}) must be ≥ episodes ({self.episodes}).")
        seeds = self.seeds
        if seeds.start < 0:
            raise ValueError(f"seed must be ≥ 0, got {self.seed}.")
        if seeds.start < EVAL_SEEDS.stop and EVAL_SEEDS.start < seeds.stop:
            raise ValueError(
                f"collection seeds {seeds.start}..{seeds.stop - 1} overlap the evaluation seeds "
                f"{EVAL_SEEDS.start}..{EVAL_SEEDS.stop - 1}; demos would leak into the benchmark. Choose "
                f"--seed ≥ {EVAL_SEEDS.stop}, or fewer episodes (seed + attempts ≤ {EVAL_SEEDS.start})."
            )

    @property
    def attempts(self) -> int:
        """Episodes tried per task at most."""
        if self.keep_failed:
            return self.episodes
        return self.max_attempts if self.max_attempts is not None else 2 * self.episodes

    @property
    def seeds(self) -> range:
        """Every seed a task may use."""
        return range(self.seed, self.seed + self.attempts)

    def env_config(self) -> MetaWorldConfig:
        """The environment settings."""
        return MetaWorldConfig(resolution=self.resolution, cameras=self.cameras, max_steps=self.max_steps)


@dataclass
class TaskReport:
    """One task's outcome: episodes kept, failed attempts, attempts reused from the work folder."""

    kept: int = 0
    failed: int = 0
    reused: int = 0


@dataclass
class CollectSummary:
    """What a run did."""

    out: Path
    episodes: int = 0
    frames: int = 0
    collected: int = 0  # attempts simulated by this run (the others came from the work folder)
    seconds_collecting: float = 0.0
    tasks: dict[str, TaskReport] = field(default_factory=dict)

    @property
    def seconds_per_demo(self) -> float:
        """Wall time per attempt simulated in this run."""
        return self.seconds_collecting / self.collected if self.collected else 0.0

    def shortfalls(self, wanted: int) -> dict[str, int]:
        """Tasks that kept fewer than ``wanted`` episodes, with their count."""
        return {task: r.kept for task, r in self.tasks.items() if r.kept < wanted}

    def format(self, wanted: int) -> str:
        """Human-readable summary."""
        lines = [
            f"wrote {self.episodes} episodes ({self.frames} frames) of {len(self.tasks)} task(s) -> {self.out}",
            f"  simulated {self.collected} attempt(s) this run, {self.seconds_per_demo:.2f} s each",
        ]
        for task, r in self.tasks.items():
            lines.append(f"  {task}: {r.kept} kept, {r.failed} failed, {r.reused} reused from {WORK_DIR}/")
        lines += [
            f"  warning: {task} has only {kept} of {wanted} successful episodes (raise --max-attempts)"
            for task, kept in self.shortfalls(wanted).items()
        ]
        return "\n".join(lines)


class WorkFolder:
    """The attempts finished so far: one ``.npz`` per (task, seed), written atomically."""

    def __init__(self, out: Path, config: CollectConfig):
        self.root = out / WORK_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self.root / "manifest.json"
        # Through JSON once, so that tuples compare equal to the lists read back.
        wanted = json.loads(json.dumps({key: getattr(config, key) for key in _MANIFEST_KEYS}))
        if manifest.is_file():
            found = json.loads(manifest.read_text())
            # A key a manifest predates meant the field's default (e.g. no action noise).
            defaults = {f.name: f.default for f in fields(CollectConfig)}
            if {key: found.get(key, defaults[key]) for key in _MANIFEST_KEYS} != wanted:
                raise ValueError(
                    f"{self.root} holds episodes collected with {found}, not {wanted}; use the same "
                    f"--resolution/--cameras/--max-steps/--action-noise/--wander-steps or another --out folder."
                )
        else:
            manifest.write_text(json.dumps(wanted, indent=2))

    def path(self, task: str, seed: int) -> Path:
        """Where the attempt of ``task`` from ``seed`` lives."""
        return self.root / task / f"seed-{seed:06d}.npz"

    def load(self, task: str, seed: int, need_frames: bool) -> Attempt | None:
        """The saved attempt, or None (also for one saved without frames when ``need_frames``)."""
        path = self.path(task, seed)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            success, has_frames = bool(data["success"]), bool(data["has_frames"])
            if not has_frames:
                return None if need_frames else Attempt(success, None)
            named = {prefix: {k.removeprefix(prefix): data[k] for k in data.files if k.startswith(prefix)}
                     for prefix in ("image/", "signal/")}  # fmt: skip
            episode = EpisodeData(
                str(data["instruction"]), data["states"], data["actions"], named["image/"], named["signal/"]
            )
            return Attempt(success, episode)

    def save(self, task: str, seed: int, attempt: Attempt, with_frames: bool) -> None:
        """Write the attempt (its frames only ``with_frames``) through a temporary file."""
        path = self.path(task, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {"success": np.array(attempt.success), "has_frames": np.array(with_frames)}
        ep = attempt.episode
        if with_frames and ep is not None:
            arrays |= {"instruction": np.array(ep.instruction), "states": ep.states, "actions": ep.actions}
            arrays |= {f"image/{k}": v for k, v in ep.images.items()}
            arrays |= {f"signal/{k}": v for k, v in ep.extras.items()}
        partial = path.with_name(path.stem + ".partial.npz")
        np.savez_compressed(partial, **arrays)
        partial.replace(path)


class _SavedEpisodes(Sequence[EpisodeData]):
    """The kept attempts as a sequence that reads each one from the work folder when asked."""

    def __init__(self, work: WorkFolder, keys: list[tuple[str, int]]):
        self.work, self.keys = work, keys

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> EpisodeData: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[EpisodeData]: ...
    def __getitem__(self, index: int | slice) -> EpisodeData | Sequence[EpisodeData]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        attempt = self.work.load(*self.keys[index], need_frames=True)
        if attempt is None or attempt.episode is None:
            raise ValueError(f"{self.work.path(*self.keys[index])} vanished while the dataset was written.")
        return attempt.episode


def _publish(staging: Path, out: Path) -> None:
    """Replace the dataset in ``out`` by the one in ``staging``: the old ``meta/`` goes first and the
    new one comes last, so ``meta/info.json`` exists only while a complete dataset does."""
    parts = ("meta", "data", "videos")
    for name in parts:
        if (out / name).exists():
            shutil.rmtree(out / name)
    for name in parts[1:] + parts[:1]:
        if (staging / name).exists():
            (staging / name).replace(out / name)
    shutil.rmtree(staging)


def _check_out(out: Path) -> None:
    if (out / "meta" / "info.json").exists() and not (out / WORK_DIR / "manifest.json").exists():
        raise ValueError(
            f"{out} already holds a dataset that emcot collect did not write; choose another --out."
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder.")


def _default_env(task: str, config: MetaWorldConfig) -> Env:
    from emcot.eval.envs.metaworld import MetaWorldEnv

    return MetaWorldEnv(task, config)


def _default_expert(task: str) -> Expert:
    from emcot.eval.policies import ScriptedExpert

    return ScriptedExpert(task)


@dataclass
class _Run:
    """The state one collection run threads through its tasks."""

    config: CollectConfig
    work: WorkFolder
    make_env: Callable[[str, MetaWorldConfig], Env]
    make_expert: Callable[[str], Expert]
    bar: Any
    summary: CollectSummary
    kept: list[tuple[str, int]] = field(default_factory=list)

    def task(self, task: str) -> None:
        """Collect (or reuse) the attempts of one task until it has its episodes."""
        config, report = self.config, self.summary.tasks.setdefault(task, TaskReport())
        simulator: tuple[Env, Expert] | None = None
        try:
            for seed in config.seeds:
                if report.kept >= config.episodes:
                    break
                attempt = self.work.load(task, seed, need_frames=config.keep_failed)
                if attempt is not None:
                    report.reused += 1
                else:
                    if simulator is None:  # a task whose attempts are all saved never starts it
                        simulator = (self.make_env(task, config.env_config()), self.make_expert(task))
                    started = time.perf_counter()
                    attempt = record_episode(
                        *simulator, seed, config.action_noise, wander_steps=config.wander_steps
                    )
                    self.summary.seconds_collecting += time.perf_counter() - started
                    self.summary.collected += 1
                    self.work.save(task, seed, attempt, with_frames=attempt.success or config.keep_failed)
                if attempt.success or config.keep_failed:
                    report.kept += 1
                    self.kept.append((task, seed))
                    self.bar.update(1)
                if not attempt.success:
                    report.failed += 1
                self.bar.set_postfix(task=task, failed=report.failed)
        finally:
            if simulator is not None:
                simulator[0].close()


def collect_metaworld(
    config: CollectConfig,
    *,
    make_env: Callable[[str, MetaWorldConfig], Env] | None = None,
    make_expert: Callable[[str], Expert] | None = None,
    progress: bool = True,
) -> CollectSummary:
    """Collect the demos of every task (reusing the work folder), then write the dataset to ``config.out``."""
    out = Path(config.out)
    _check_out(out)
    work = WorkFolder(out, config)
    summary = CollectSummary(out)
    with tqdm(
        total=len(config.tasks) * config.episodes, desc="collect", unit="ep", disable=not progress
    ) as bar:
        run = _Run(config, work, make_env or _default_env, make_expert or _default_expert, bar, summary)
        for task in config.tasks:
            run.task(task)
    if not run.kept:
        raise ValueError("no successful episode to write; check the task names or raise --max-steps.")
    staging = work.root / "staging"
    if staging.exists():
        shutil.rmtree(staging)  # left by a run killed while writing
    episodes = _SavedEpisodes(work, run.kept)
    # 25 episodes per data file bounds what the writer holds at once (~120 MB per 128 px camera).
    writer = WriterConfig(camera_storage=config.storage.value, episodes_per_file=25, robot_type="sawyer")
    write_lerobot_dataset(staging, episodes, FPS, writer)
    _publish(staging, out)
    summary.episodes = len(run.kept)
    summary.frames = int(json.loads((out / "meta" / "info.json").read_text())["total_frames"])
    return summary
