"""The evaluation driver: tasks × modes × episodes, in parallel, resumable, summarised.

Every finished episode is saved atomically to ``out/episodes/<mode>/<task>/<episode>/`` and
skipped when the evaluation runs again, so a killed run resumes where it stopped; a rerun into a
folder made under another protocol is refused. Episode ``i`` uses seed ``seed + i`` for both the
scene and the policy's sampling, and every episode gets a fresh session, so results do not depend
on how episodes were spread over workers or on interruptions. Workers are spawned processes that
load the policy once each.

API:
- ``EvalConfig(tasks, agent=AgentSpec(), episodes=10, seed=1000, resolution=128, max_steps=500,
  workers=1, frame_every=20, render=False, fast_render=True, benchmark="metaworld")`` — ``render``
  makes the benchmark's ``render_camera`` (``corner2``) render for policies that need no pixels
  (expert, random), for recorded frames; ``benchmark`` names one of
  :data:`emcot.eval.envs.benchmarks.BENCHMARKS`.
- ``evaluate(config, out, *, progress=True, max_new_episodes=None) -> EvalOutcome`` — writes
  ``results.json`` and ``results.md`` once every episode exists; ``max_new_episodes`` stops after
  that many new episodes (a planned interruption), leaving the results unwritten.
- ``EvalOutcome(metrics, protocol, ran, skipped, complete)``; ``episode_folder(out, task, mode, episode)``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from emcot.eval.agents import AgentFactory, AgentSpec, PolicyKind
from emcot.eval.envs.base import Env
from emcot.eval.envs.benchmarks import Benchmark, EnvSettings, benchmark
from emcot.eval.envs.mujoco_gl import configure_gl
from emcot.eval.metrics import EvalMetrics, compute_metrics
from emcot.eval.records import EPISODE_FILE, EpisodeSummary
from emcot.eval.rollout import RolloutConfig, run_episode
from emcot.eval.tables import results_markdown
from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, Range, check_fields, read_json

PROTOCOL_FILE = "protocol.json"
RESULTS_FILE = "results.json"
RESULTS_MARKDOWN = "results.md"


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: which benchmark and tasks, which policy, how many episodes from which seed,
    how rendered."""

    tasks: tuple[str, ...]
    agent: AgentSpec = field(default_factory=AgentSpec)
    episodes: int = 10
    seed: int = 1000
    resolution: int = 128
    max_steps: int = 500
    workers: int = 1
    frame_every: int = 20
    render: bool = False
    fast_render: bool = True
    benchmark: str = "metaworld"

    def __post_init__(self) -> None:
        check_fields(
            self,
            "EvalConfig",
            episodes=AT_LEAST_ONE,
            max_steps=AT_LEAST_ONE,
            workers=AT_LEAST_ONE,
            frame_every=NON_NEGATIVE,
            resolution=Range(ge=16, le=480),
        )
        if not self.tasks:
            raise ValueError("EvalConfig.tasks is empty; name tasks or a split (easy, mt10, …)")
        self.bench.expand_tasks(",".join(self.tasks))  # an unknown task fails here

    @property
    def bench(self) -> Benchmark:
        """The benchmark's registered record."""
        return benchmark(self.benchmark)

    def env_config(self, cameras: tuple[str, ...]) -> EnvSettings:
        """The environment settings for a policy that reads ``cameras``."""
        if not cameras and self.render:
            cameras = (self.bench.render_camera,)
        return EnvSettings(
            resolution=self.resolution,
            cameras=cameras,
            max_steps=self.max_steps,
            fast_render=self.fast_render,
        )

    def rollout_config(self) -> RolloutConfig:
        """How each episode runs."""
        return RolloutConfig(max_steps=self.max_steps, frame_every=self.frame_every)


@dataclass(frozen=True)
class Job:
    """One episode to run."""

    task: str
    mode: str
    episode: int
    seed: int


@dataclass
class EvalOutcome:
    """What :func:`evaluate` did: metrics (None when interrupted), the protocol, episodes run now
    and found already done, and whether every episode exists."""

    metrics: EvalMetrics | None
    protocol: dict[str, Any]
    ran: int
    skipped: int
    complete: bool


def episode_folder(out: Path, task: str, mode: str, episode: int) -> Path:
    """Where one episode is saved."""
    return Path(out) / "episodes" / mode / task / f"{episode:03d}"


def protocol_of(config: EvalConfig) -> dict[str, Any]:
    """What makes episodes comparable (a resumed run must match it); tasks and episode counts may grow."""
    agent = config.agent
    protocol = {
        "benchmark": config.benchmark,
        **config.bench.protocol(),
        "policy": agent.policy,
        "modes": list(agent.mode_names),
        "replan": agent.replan,
        "n_action_steps": agent.n_action_steps,
        "camera_map": None if agent.camera_map is None else dict(agent.camera_map),
        "image_size": agent.image_size,
        "async_replan": agent.async_replan,
        "seed": config.seed,
        "resolution": config.resolution,
        "max_steps": config.max_steps,
        "stop_on_success": True,
        "fast_render": config.fast_render,
    }
    return json.loads(json.dumps(protocol))  # as it reads back from protocol.json (lists, not tuples)


def _check_protocol(out: Path, protocol: dict[str, Any]) -> None:
    path = out / PROTOCOL_FILE
    if path.is_file():
        saved = read_json(path, "protocol file")
        changed = sorted(key for key in set(saved) | set(protocol) if saved.get(key) != protocol.get(key))
        if changed:
            raise ValueError(
                f"{out} holds an evaluation under another protocol (differs in {changed}); "
                "give a new --out folder or delete the old one"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(protocol, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def jobs_of(config: EvalConfig) -> list[Job]:
    """Every episode, task-major (a worker keeps one task's env while it runs its episodes)."""
    return [
        Job(task, mode, episode, config.seed + episode)
        for task in config.tasks
        for mode in config.agent.mode_names
        for episode in range(config.episodes)
    ]


# ---------------------------------------------------------------------------------------------
# Workers: one factory (policy loaded once) and one env (the current task's) per process.


class _Worker:
    def __init__(self, config: EvalConfig, out: Path, factory: AgentFactory | None = None) -> None:
        self.config = config
        self.out = out
        self.factory = factory or AgentFactory(config.agent, config.env_config(()), config.bench)
        self.env_config = config.env_config(self.factory.env_cameras)
        self.env: Env | None = None

    def env_for(self, task: str) -> Env:
        if self.env is None or self.env.task != task:
            if self.env is not None:
                self.env.close()
            self.env = self.config.bench.make_env(task, self.env_config)
        return self.env

    def run(self, job: Job) -> EpisodeSummary:
        agent = self.factory.make(job.task, job.mode, job.seed)
        try:
            record = run_episode(
                self.env_for(job.task),
                agent,
                seed=job.seed,
                episode=job.episode,
                config=self.config.rollout_config(),
            )
        finally:
            close = getattr(agent.session, "close", None)
            if close is not None:
                close()  # an asynchronous session's thinking thread
        record.save(episode_folder(self.out, job.task, job.mode, job.episode))
        return record.summary()


_WORKER: _Worker | None = None


def _init_worker(config: EvalConfig, out: Path, threads: int) -> None:
    global _WORKER
    if config.agent.kind is PolicyKind.EMCOT:
        import torch

        torch.set_num_threads(threads)  # workers share the cores instead of oversubscribing them
    _WORKER = _Worker(config, out)


def _run_job(job: Job) -> EpisodeSummary:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.run(job)


def _run_in_process(
    config: EvalConfig, out: Path, jobs: list[Job], factory: AgentFactory
) -> Iterator[EpisodeSummary]:
    worker = _Worker(config, out, factory)
    try:
        for job in jobs:
            yield worker.run(job)
    finally:
        if worker.env is not None:
            worker.env.close()


def _run_in_pool(config: EvalConfig, out: Path, jobs: list[Job]) -> Iterator[EpisodeSummary]:
    workers = min(config.workers, len(jobs))
    threads = max(1, (os.cpu_count() or 1) // workers)
    configure_gl()  # probe once here; the spawned workers inherit MUJOCO_GL
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and GL state
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(config, out, threads)
    ) as pool:
        pending: set[Future[EpisodeSummary]] = {pool.submit(_run_job, job) for job in jobs}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        raise RuntimeError(
                            "an evaluation worker died (killed, or out of memory); finished episodes are "
                            "saved, so running the same command again resumes"
                        ) from None
        finally:
            for future in pending:
                future.cancel()


def _run(
    config: EvalConfig, out: Path, jobs: list[Job], factory: AgentFactory | None
) -> Iterator[EpisodeSummary]:
    if not jobs:
        return iter(())
    if factory is not None:
        return _run_in_process(config, out, jobs, factory)
    return _run_in_pool(config, out, jobs)


def _pending(jobs: list[Job], out: Path) -> list[Job]:
    """The jobs whose episode is not saved in ``out`` yet."""
    return [
        job
        for job in jobs
        if not (episode_folder(out, job.task, job.mode, job.episode) / EPISODE_FILE).is_file()
    ]


def _summarise(config: EvalConfig, out: Path, jobs: list[Job], protocol: dict[str, Any]) -> EvalMetrics:
    """Metrics over the saved episodes of ``jobs``; writes ``results.json`` and ``results.md``."""
    summaries = [EpisodeSummary.load(episode_folder(out, j.task, j.mode, j.episode)) for j in jobs]
    bench = config.bench
    metrics = compute_metrics(summaries, bench.bucket_of, bucket_order=bench.bucket_order)
    full_protocol = {**protocol, "tasks": list(config.tasks), "episodes": config.episodes}
    results = {**metrics.to_dict(), "protocol": full_protocol}
    _write_atomic(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    _write_atomic(out / RESULTS_MARKDOWN, results_markdown(metrics, full_protocol))
    return metrics


def evaluate(
    config: EvalConfig, out: str | Path, *, progress: bool = True, max_new_episodes: int | None = None
) -> EvalOutcome:
    """Run (or resume) the evaluation into ``out`` and summarise it (see the module docstring)."""
    out = Path(out)
    protocol = protocol_of(config)
    # Built here first so a policy the environment cannot feed fails before any folder or worker exists.
    factory: AgentFactory | None = AgentFactory(config.agent, config.env_config(()), config.bench)
    _check_protocol(out, protocol)
    jobs = jobs_of(config)
    todo = _pending(jobs, out)
    skipped = len(jobs) - len(todo)
    if max_new_episodes is not None:
        todo = todo[:max_new_episodes]
    if config.workers > 1 and len(todo) > 1:
        factory = None  # each worker loads its own policy; free this copy
    ran = 0
    bar = tqdm(
        total=len(jobs), initial=skipped, desc=f"eval {config.benchmark}", unit="ep", disable=not progress
    )
    with bar:
        for summary in _run(config, out, todo, factory):
            ran += 1
            bar.update(1)
            bar.set_postfix_str(
                f"{summary.mode} {summary.task} #{summary.episode} {'ok' if summary.success else 'fail'}"
            )
    complete = ran + skipped == len(jobs)
    metrics = _summarise(config, out, jobs, protocol) if complete else None
    return EvalOutcome(metrics=metrics, protocol=protocol, ran=ran, skipped=skipped, complete=complete)
