"""The cue task: a memory-dependent variant of the synthetic pushing world.

One coloured block on the grey table, the gripper a white cross, one top-down camera. A cyan bar
lights the left or the right edge of the table in the first ``cue_steps`` frames of an episode
only, and the block must be pushed to that edge; the instruction never says which. The block
starts near the middle, so its position tells nothing. A policy's first step must bring the
gripper to the block (the scripted demos never push in it), so when it pushes the cue is gone: a
policy that reads only the current frame can only guess (50 %), one that remembers the first
frame can solve every episode. The wrong edge is a trap: a block pushed there is lost (it never
moves again), so a guess cannot be corrected by wandering back.

Demos come from a scripted expert that knows the side: a chunk reaches the block (the block is
told to stay), the next pushes it straight to the goal edge. Demo chunks are executed with a
little noise on the gripper so that episodes vary, and every step's label is the expert's chunk
from the state actually reached. Samples carry the episode's earlier steps as their history (the
collator keeps what the model's ``config.memory`` reads). ``CueConfig.color_agreement`` plants a
spurious correlation in the demos: the block's colour names the cued side (``SIDE_COLORS``) with
that probability, while the evaluation world keeps colour and side independent.

API: ``CueConfig``, ``CueWorld`` (``reset(seed)``, ``frame()``, ``state()``, ``raw()``,
``step(action) -> bool``), ``expert_chunk(raw, config, horizon)``, ``cue_demos(episodes, ...)``,
``cue_action_samples(demos)``, ``cue_vqa_samples(demos)``, ``cue_corpus()``, ``build_cue_policy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emcot.io_utils import AT_LEAST_ONE, Range, check_fields
from emcot.synthetic.world import (
    COLORS,
    SyntheticConfig,
    build_synthetic_policy,
    push_step,
    render,
    synthetic_corpus,
    where,
)
from emcot.types import EmCoTSample, HistoryStep, Observation, SampleKind

CUE_TASK = "synthetic-cue"
CUE_SIDES = {"left": 0.2, "right": 0.8}  # the goal's x for each side
CUE_COLOR = (0, 230, 230)
# The block colours a shortcut ties to each side (``CueConfig.color_agreement``).
SIDE_COLORS = {"left": ("red", "yellow"), "right": ("green", "blue")}
QUESTION_SIDE = "Which side did the light show?"
QUESTION_START = "Where did my gripper start?"


def instruction_for(color: str) -> str:
    """The episode's instruction: it names the block, never the side."""
    return f"push the {color} block to the side the light showed"


@dataclass(frozen=True)
class CueConfig:
    """The world's look, how long the cue shows (env steps), the episode cap and the dynamics.

    ``color_agreement``: the probability that the block's colour names the cued side (red/yellow
    for left, green/blue for right) — a spurious correlation a policy can learn instead of the cue
    (None: colour and side are independent, as at evaluation).
    """

    world: SyntheticConfig = field(default_factory=SyntheticConfig)
    cue_steps: int = 1
    cue_px: int = 8
    max_steps: int = 48
    max_move: float = 0.15
    contact: float = 0.12
    tolerance: float = 0.08
    color_agreement: float | None = None

    def __post_init__(self) -> None:
        check_fields(self, "CueConfig", cue_steps=AT_LEAST_ONE, cue_px=AT_LEAST_ONE, max_steps=AT_LEAST_ONE)
        if self.color_agreement is not None:
            check_fields(self, "CueConfig", color_agreement=Range(ge=0.0, le=1.0))


def render_cue(config: CueConfig, color: str, block, gripper, side: str | None) -> np.ndarray:
    """The scene, with the cue bar on ``side``'s edge when ``side`` is given."""
    image = render(config.world, color, block, gripper)
    if side == "left":
        image[:, : config.cue_px] = CUE_COLOR
    elif side == "right":
        image[:, -config.cue_px :] = CUE_COLOR
    return image


class CueWorld:
    """One cue-task scene per seed; ``step`` applies the pushing world's dynamics."""

    def __init__(self, config: CueConfig | None = None) -> None:
        self.config = config or CueConfig()
        self.color, self.side = "red", "left"
        self.gripper = np.zeros(2, np.float32)
        self.block = np.zeros(2, np.float32)
        self.steps = 0
        self.lost = False

    @property
    def instruction(self) -> str:
        """What the robot is told (the block's colour, not the side)."""
        return instruction_for(self.color)

    def reset(self, seed: int) -> None:
        """Draw colour, side, block (near the middle) and gripper from ``seed``."""
        rng = np.random.default_rng(int(seed))
        colors = list(COLORS)
        self.color = colors[rng.integers(len(colors))]
        self.side = list(CUE_SIDES)[rng.integers(len(CUE_SIDES))]
        if self.config.color_agreement is not None:
            agrees = rng.random() < self.config.color_agreement
            named = self.side if agrees else next(side for side in CUE_SIDES if side != self.side)
            self.color = SIDE_COLORS[named][rng.integers(len(SIDE_COLORS[named]))]
        self.block = np.array([rng.uniform(0.45, 0.55), rng.uniform(0.3, 0.7)], np.float32)
        # Far enough from the block that the first step must reach it (and so cannot push yet).
        self.gripper = rng.uniform(0.1, 0.9, 2).astype(np.float32)
        while float(np.linalg.norm(self.gripper - self.block)) < 0.25:
            self.gripper = rng.uniform(0.1, 0.9, 2).astype(np.float32)
        self.steps = 0
        self.lost = False

    def frame(self) -> np.ndarray:
        """The camera image (with the cue during the first ``cue_steps`` steps)."""
        side = self.side if self.steps < self.config.cue_steps else None
        return render_cue(self.config, self.color, self.block, self.gripper, side)

    def state(self) -> np.ndarray:
        """What the robot feels: gripper xy, block xy."""
        return np.concatenate([self.gripper, self.block]).astype(np.float32)

    def raw(self) -> np.ndarray:
        """The state plus the goal's x: what the scripted expert reads."""
        return np.concatenate([self.state(), [CUE_SIDES[self.side]]]).astype(np.float32)

    def solved(self) -> bool:
        """Whether the block's centre is within ``tolerance`` of the goal edge."""
        return abs(float(self.block[0]) - CUE_SIDES[self.side]) <= self.config.tolerance

    def step(self, action: np.ndarray) -> bool:
        """Apply one 4-d action (gripper target xy, block target xy); returns whether solved."""
        cfg = self.config
        gripper, block = push_step(
            self.gripper,
            self.block,
            np.asarray(action, np.float32),
            max_move=cfg.max_move,
            contact=cfg.contact,
        )
        self.gripper = gripper
        if not self.lost:
            self.block = block
        wrong = next(x for side, x in CUE_SIDES.items() if side != self.side)
        self.lost = self.lost or abs(float(self.block[0]) - wrong) <= cfg.tolerance
        self.steps += 1
        return self.solved()


def _path(start: np.ndarray, goal: np.ndarray, horizon: int, max_move: float) -> np.ndarray:
    distance = float(np.linalg.norm(goal - start))
    steps = np.arange(1, horizon + 1, dtype=np.float32)[:, None]
    fraction = np.minimum(1.0, steps * max_move / distance) if distance > 0 else np.ones_like(steps)
    return (start + fraction * (goal - start)).astype(np.float32)


def expert_chunk(raw: np.ndarray, config: CueConfig, horizon: int) -> np.ndarray:
    """The expert's next ``horizon`` actions from ``raw`` (gripper xy, block xy, goal x): reach the
    block while it stays, or, once touching it, push gripper and block straight to the goal."""
    gripper, block, goal_x = raw[:2], raw[2:4], float(raw[4])
    if float(np.linalg.norm(gripper - block)) > config.contact:
        reach = _path(gripper, block, horizon, config.max_move)
        return np.concatenate([reach, np.repeat(block[None], horizon, axis=0)], axis=1)
    push = _path(block, np.array([goal_x, block[1]], np.float32), horizon, config.max_move)
    return np.concatenate([push, push], axis=1)


@dataclass
class DemoStep:
    """One policy step of a demo: what was seen and felt, the expert's chunk (the label) and the
    actions executed from it."""

    frame: np.ndarray
    state: np.ndarray
    label: np.ndarray
    executed: np.ndarray


@dataclass
class CueDemo:
    """One expert episode: its scene and its policy steps."""

    color: str
    side: str
    steps: list[DemoStep]
    success: bool

    def history(self, upto: int) -> tuple[HistoryStep, ...]:
        """The steps before step ``upto`` as a history (oldest first)."""
        return tuple(HistoryStep(s.frame, s.state, s.executed) for s in self.steps[:upto])


def cue_demos(
    episodes: int,
    *,
    seed: int = 0,
    config: CueConfig | None = None,
    horizon: int = 8,
    noise: float = 0.05,
) -> list[CueDemo]:
    """``episodes`` expert demos from seeds ``seed, seed + 1, …`` (chunks executed with gripper noise)."""
    config = config or CueConfig()
    if episodes < 1 or horizon < 1 or noise < 0:
        raise ValueError(
            f"cue_demos needs episodes ≥ 1, horizon ≥ 1, noise ≥ 0; got {episodes}, {horizon}, {noise}"
        )
    world, out = CueWorld(config), []
    for episode in range(episodes):
        world.reset(seed + episode)
        rng = np.random.default_rng([seed, episode, 7])
        # Each episode draws its own noise scale in [0, 2·noise]: some reach the block at once,
        # some miss it and reach again, so a policy sees longer histories too.
        scale = rng.uniform(0.0, 2.0 * noise)
        steps, solved = [], False
        while world.steps < config.max_steps and not solved:
            label = expert_chunk(world.raw(), config, horizon)
            executed = label.copy()
            executed[:, :2] += rng.normal(0.0, scale, (horizon, 2)).astype(np.float32)
            frame, state, done = world.frame(), world.state(), []
            for action in executed:
                solved = world.step(action)
                done.append(action)
                if solved or world.steps >= config.max_steps:
                    break
            steps.append(DemoStep(frame, state, label, np.asarray(done, np.float32)))
        out.append(CueDemo(world.color, world.side, steps, solved))
    return out


def cue_action_samples(demos: list[CueDemo], camera: str = "head") -> list[EmCoTSample]:
    """One action-only sample per demo step, with the episode's earlier steps as its history."""
    return [
        EmCoTSample(
            observation=Observation({camera: step.frame}, step.state),
            instruction=instruction_for(demo.color),
            actions=step.label,
            robot="synthetic",
            history=demo.history(i),
            metadata={"side": demo.side, "step": i},
        )
        for demo in demos
        for i, step in enumerate(demo.steps)
    ]


def cue_vqa_samples(demos: list[CueDemo], camera: str = "head") -> list[EmCoTSample]:
    """Video-QA about the history, at every demo step after the first: which side the light showed
    (the cue, seen only in the first frame) and where the gripper started."""
    out = []
    for demo in demos:
        start = where(demo.steps[0].state[:2])
        for i in range(1, len(demo.steps)):
            turns = [
                (QUESTION_SIDE, f"The light showed the {demo.side}."),
                (QUESTION_START, f"My gripper started at the {start}."),
            ]
            out.append(
                EmCoTSample(
                    observation=Observation({camera: demo.steps[i].frame}),
                    instruction=turns[0][0],
                    reasoning=turns[0][1],
                    kind=SampleKind.VQA,
                    robot="synthetic",
                    history=demo.history(i),
                    metadata={"turns": turns, "side": demo.side, "step": i},
                )
            )
    return out


def cue_corpus() -> list[str]:
    """The synthetic world's sentences plus the cue task's, for training a tiny tokenizer."""
    lines = synthetic_corpus()
    for color in COLORS:
        lines.append(instruction_for(color))
    lines.append(QUESTION_SIDE)
    lines.append(QUESTION_START)
    for side in CUE_SIDES:
        lines.append(f"The light showed the {side}.")
    for row in ("top", "centre", "bottom"):
        for col in ("left", "middle", "right"):
            lines.append(f"My gripper started at the {row} {col}.")
    return lines


def build_cue_policy(samples: list[EmCoTSample], seed: int = 0, **overrides):
    """A fresh tiny policy for the cue task (its tokenizer knows the cue sentences); ``overrides``
    go to the config, e.g. ``memory={"history_length": 4, "top_k": 8}``."""
    return build_synthetic_policy(samples, seed=seed, corpus=cue_corpus(), **overrides)
