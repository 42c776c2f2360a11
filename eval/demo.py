"""One closed-loop demo episode of a policy in the simulator its card names, with its outputs on disk.

API:
- ``DemoEpisode(record, first_frame, last_frame)`` — the episode record and the first and last
  camera frames the policy saw.
- ``run_demo_episode(policy, task, *, seed, mode="full", max_steps=None) -> DemoEpisode`` — one
  Meta-World episode under the session's default re-planning rules (evaluation seeds start at 1000).
- ``save_demo(demo, out) -> list[Path]`` — ``episode/`` (the full record), ``observation.png``,
  ``subgoal.png`` and ``reasoning.txt`` of the first plan, ``reached.png`` (the last frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from emcot.eval.adapters import adapter_for_policy
from emcot.eval.envs.base import EnvObservation, StepOutcome
from emcot.eval.envs.metaworld import ACTION_DIM, STATE_DIM, MetaWorldConfig, MetaWorldEnv
from emcot.eval.envs.metaworld_tasks import check_task
from emcot.eval.records import EpisodeRecord
from emcot.eval.rollout import Agent, RolloutConfig, run_episode

if TYPE_CHECKING:
    from emcot.policy.policy import EmCoTPolicy


FRAME_EVERY = 5  # the viewer's timeline: a frame every 5 env steps (plus every re-plan and the last)


@dataclass
class DemoEpisode:
    """An episode and the first and last frames of its camera."""

    record: EpisodeRecord
    first_frame: np.ndarray
    last_frame: np.ndarray


class _Watched:
    """An environment that remembers the frames it showed first and last."""

    def __init__(self, env: MetaWorldEnv, camera: str) -> None:
        self.env, self.camera = env, camera
        self.task, self.instruction = env.task, env.instruction
        self.cameras, self.max_steps = env.cameras, env.max_steps
        self.first: np.ndarray | None = None
        self.last: np.ndarray | None = None

    def reset(self, seed: int) -> EnvObservation:
        observation = self.env.reset(seed)
        self.first = self.last = observation.images[self.camera]
        return observation

    def observe(self) -> EnvObservation:
        return self.env.observe()

    def step(self, action: np.ndarray) -> StepOutcome:
        outcome = self.env.step(action)
        self.last = outcome.observation.images[self.camera]
        return outcome

    @property
    def success(self) -> bool:
        return self.env.success

    def close(self) -> None:
        self.env.close()


def run_demo_episode(
    policy: EmCoTPolicy, task: str, *, seed: int, mode: str = "full", max_steps: int | None = None
) -> DemoEpisode:
    """One episode of ``task`` (a Meta-World task) at the resolution and camera of the policy's card."""
    from emcot.runtime.rules import DEFAULT_RULES
    from emcot.runtime.session import PolicySession

    card = policy.card
    if card is None or card.benchmark != "metaworld":
        raise ValueError("this policy's card names no Meta-World training; pass a Meta-World policy")
    task = check_task(task)
    steps = max_steps or int(card.evaluation.get("max_steps", 500))
    camera_map = {card.camera: policy.cameras[0]}
    adapter = adapter_for_policy(
        policy,
        env_cameras=(card.camera,),
        resolution=card.resolution,
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        camera_map=camera_map,
    )
    env = _Watched(
        MetaWorldEnv(
            task, MetaWorldConfig(resolution=card.resolution, cameras=(card.camera,), max_steps=steps)
        ),
        card.camera,
    )
    try:
        with PolicySession(policy, DEFAULT_RULES, mode=mode, seed=seed) as session:
            record = run_episode(
                env,
                Agent(mode, session, adapter),
                seed=seed,
                config=RolloutConfig(max_steps=steps, frame_every=FRAME_EVERY),
            )
    finally:
        env.close()
    assert env.first is not None and env.last is not None  # reset ran
    return DemoEpisode(record, env.first, env.last)


def save_demo(demo: DemoEpisode, out: str | Path) -> list[Path]:
    """Write the demo's files into ``out``; returns the pictures and texts written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    demo.record.save(out / "episode")
    written = [out / "observation.png", out / "reached.png"]
    Image.fromarray(demo.first_frame).save(written[0])
    Image.fromarray(demo.last_frame).save(written[1])
    if demo.record.plans:
        plan = demo.record.plans[0]
        (out / "reasoning.txt").write_text(plan.reasoning + "\n", encoding="utf-8")
        written.append(out / "reasoning.txt")
        if plan.subgoal is not None:
            Image.fromarray(plan.subgoal).save(out / "subgoal.png")
            written.append(out / "subgoal.png")
    return written
