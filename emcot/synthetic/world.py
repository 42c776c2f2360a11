"""A small synthetic robot world for tests, demos and the tiny recipes.

A coloured block sits on a grey table seen by one top-down camera; the robot's gripper (a white
mark) must push it to one side. Every part of an EM-CoT sample has a ground truth: the reasoning
text follows from the scene, the subgoal image shows the block at its goal, and the action chunk
moves the gripper along a straight line. No randomness hides in the rendering, so a small model
can learn it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emcot.types import EmCoTSample, Observation, SampleKind

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
SIDES = {"left": (0.2, None), "right": (0.8, None), "top": (None, 0.2), "bottom": (None, 0.8)}


@dataclass(frozen=True)
class SyntheticConfig:
    """Image size, chunk horizon and dimensions of the synthetic task (state and action are 4-d)."""

    image_size: int = 32
    horizon: int = 8
    camera: str = "head"
    block_px: int = 6


def render(cfg: SyntheticConfig, color: str, block_xy, gripper_xy) -> np.ndarray:
    """Top-down view: grey table, the block as a square, the gripper as a white plus sign."""
    size = cfg.image_size
    image = np.full((size, size, 3), 128, dtype=np.uint8)
    bx, by = (int(round(v * (size - 1))) for v in block_xy)
    half = cfg.block_px // 2
    image[max(by - half, 0) : by + half, max(bx - half, 0) : bx + half] = COLORS[color]
    gx, gy = (int(round(v * (size - 1))) for v in gripper_xy)
    image[max(gy - 2, 0) : gy + 3, gx] = 255
    image[gy, max(gx - 2, 0) : gx + 3] = 255
    return image


def _toward(current: np.ndarray, target: np.ndarray, limit: float) -> np.ndarray:
    delta = target - current
    distance = float(np.linalg.norm(delta))
    return target if distance <= limit else current + delta * (limit / distance)


def push_step(
    gripper: np.ndarray, block: np.ndarray, target: np.ndarray, *, max_move: float, contact: float
) -> tuple[np.ndarray, np.ndarray]:
    """One step of the world's dynamics: the gripper moves toward ``target[:2]`` (at most
    ``max_move``); the block moves toward ``target[2:]`` only if the gripper touched it (within
    ``contact`` of its centre) as the step began. Returns the new (gripper, block)."""
    target = np.clip(np.asarray(target, np.float32), 0.0, 1.0)
    touching = float(np.linalg.norm(gripper - block)) <= contact
    new_gripper = _toward(gripper, target[:2], max_move).astype(np.float32)
    new_block = _toward(block, target[2:], max_move).astype(np.float32) if touching else block
    return new_gripper, new_block


def where(xy) -> str:
    """Coarse words for a position."""
    col = "left" if xy[0] < 0.4 else "right" if xy[0] > 0.6 else "middle"
    row = "top" if xy[1] < 0.4 else "bottom" if xy[1] > 0.6 else "centre"
    return f"{row} {col}"


def make_sample(
    cfg: SyntheticConfig, color: str, side: str, block_xy, gripper_xy, *, robot: str = "synthetic"
) -> EmCoTSample:
    """One EM-CoT sample of the pushing task."""
    block_xy = np.asarray(block_xy, dtype=np.float32)
    gripper_xy = np.asarray(gripper_xy, dtype=np.float32)
    gx, gy = SIDES[side]
    goal = np.array(
        [gx if gx is not None else block_xy[0], gy if gy is not None else block_xy[1]], np.float32
    )
    state = np.concatenate([gripper_xy, block_xy]).astype(np.float32)
    steps = np.linspace(0.0, 1.0, cfg.horizon + 1, dtype=np.float32)[1:, None]
    gripper_path = gripper_xy + steps * (block_xy - gripper_xy)
    block_path = np.repeat(block_xy[None], cfg.horizon, axis=0)
    actions = np.concatenate([gripper_path, block_path + steps * (goal - block_xy)], axis=1)
    reasoning = (
        f"The {color} block is at the {where(block_xy)}. I move my gripper to it and push it to the {side}."
    )
    return EmCoTSample(
        observation=Observation({cfg.camera: render(cfg, color, block_xy, gripper_xy)}, state),
        instruction=f"push the {color} block to the {side}",
        reasoning=reasoning,
        subgoal=render(cfg, color, goal, goal),
        actions=actions.astype(np.float32),
        robot=robot,
    )


def synthetic_samples(n: int, cfg: SyntheticConfig | None = None, seed: int = 0) -> list[EmCoTSample]:
    """``n`` samples with random colours, sides and positions (deterministic for a seed)."""
    cfg = cfg or SyntheticConfig()
    rng = np.random.default_rng(seed)
    colors, sides = list(COLORS), list(SIDES)
    out = []
    for _ in range(n):
        out.append(
            make_sample(
                cfg,
                colors[rng.integers(len(colors))],
                sides[rng.integers(len(sides))],
                rng.uniform(0.3, 0.7, 2),
                rng.uniform(0.1, 0.9, 2),
            )
        )
    return out


def synthetic_corpus(cfg: SyntheticConfig | None = None) -> list[str]:
    """Every sentence the task can produce, for training a tiny tokenizer."""
    cfg = cfg or SyntheticConfig()
    lines = []
    for color in COLORS:
        for side in SIDES:
            for row in ("top", "centre", "bottom"):
                for col in ("left", "middle", "right"):
                    s = make_sample(cfg, color, side, (0.5, 0.5), (0.5, 0.5))
                    assert s.reasoning is not None  # make_sample always writes the reasoning
                    lines.append(s.instruction)
                    lines.append(s.reasoning.replace("centre middle", f"{row} {col}"))
    lines.append("You are an embodied agent. Your task is to: do it. Plan and act.")
    lines.append("user\nassistant\n")
    return lines


def norm_stats_of(samples: list[EmCoTSample], robot: str = "synthetic"):
    """Normalisation statistics of the samples' states and actions."""
    from emcot.tokenizers.actions import NormStats, RobotNormStats

    states, actions = [], []
    for s in samples:
        if s.observation.state is None or s.actions is None:
            raise ValueError(
                "norm_stats_of needs samples with a state and actions (EM-CoT or action samples)."
            )
        states.append(s.observation.state)
        actions.append(s.actions)
    return RobotNormStats(
        {
            robot: {
                "state": NormStats.compute(np.stack(states)),
                "action": NormStats.compute(np.concatenate(actions)),
            }
        }
    )


def build_synthetic_policy(
    samples: list[EmCoTSample],
    cfg: SyntheticConfig | None = None,
    seed: int = 0,
    *,
    corpus: list[str] | None = None,
    **overrides,
):
    """A fresh tiny policy (random weights) sized for the synthetic task, with its own tokenizer
    (trained on ``corpus``, default :func:`synthetic_corpus`); ``overrides`` go to the config."""
    import torch

    from emcot.config import EmCoTConfig
    from emcot.model.modeling import EmCoTModel
    from emcot.policy.policy import EmCoTPolicy
    from emcot.policy.processor import EmCoTProcessor, ProcessorConfig
    from emcot.tokenizers.actions import ActionSpaceConfig
    from emcot.tokenizers.text import SentencePieceTextTokenizer

    cfg = cfg or SyntheticConfig()
    tokenizer = SentencePieceTextTokenizer.train(corpus or synthetic_corpus(cfg), vocab_size=320)
    torch.manual_seed(seed)
    config = EmCoTConfig.from_preset(
        "tiny",
        vocab_size=len(tokenizer),
        action=ActionSpaceConfig(action_dim=4, state_dim=4, horizon=cfg.horizon, norm_mode="mean_std"),
        **overrides,
    )
    model = EmCoTModel(config)
    settings = ProcessorConfig(cameras=[cfg.camera], robot="synthetic")
    return EmCoTPolicy(model, EmCoTProcessor(config, tokenizer, norm_stats_of(samples), settings))


def synthetic_action_samples(n: int, cfg: SyntheticConfig | None = None, seed: int = 0) -> list[EmCoTSample]:
    """Reactive (action-only) samples of the pushing task: no reasoning, no subgoal."""
    out = synthetic_samples(n, cfg, seed)
    for sample in out:
        sample.reasoning, sample.subgoal = None, None
    return out


def synthetic_vqa_samples(n: int, cfg: SyntheticConfig | None = None, seed: int = 0) -> list[EmCoTSample]:
    """VQA samples about the scene, one or two turns each."""
    out = []
    for i, sample in enumerate(synthetic_samples(n, cfg, seed)):
        color = sample.instruction.split()[2]
        assert sample.observation.state is not None  # synthetic_samples always sets the state
        place = where(sample.observation.state[2:])
        turns = [("What colour is the block?", f"The block is {color}.")]
        if i % 2:
            turns.append((f"Where is the {color} block?", f"The {color} block is at the {place}."))
        out.append(
            EmCoTSample(
                observation=Observation(
                    {"image": sample.observation.images[(cfg or SyntheticConfig()).camera]}
                ),
                instruction=turns[0][0],
                reasoning=turns[0][1],
                kind=SampleKind.VQA,
                metadata={"turns": turns},
            )
        )
    return out


def synthetic_generation_samples(
    n: int, cfg: SyntheticConfig | None = None, seed: int = 0
) -> list[EmCoTSample]:
    """Future-frame prediction (generation samples): current view + prompt → the pushed scene."""
    out = []
    for sample in synthetic_samples(n, cfg, seed):
        out.append(
            EmCoTSample(
                observation=Observation(dict(sample.observation.images)),
                instruction=f"Imagine the next scene: {sample.instruction}.",
                subgoal=sample.subgoal,
                kind=SampleKind.GENERATION,
            )
        )
    return out


def robot_vectors(sample: EmCoTSample, action_dim: int, state_dim: int, horizon: int):
    """A pushing sample's state and actions mapped onto another robot's dimensions and horizon.

    The first dimensions keep their meaning (gripper xy, block xy); extra dimensions are smooth
    functions of them (height, opening), so a fine-tuned model can learn them.
    """

    def widen(x: np.ndarray, dim: int) -> np.ndarray:
        extra = [0.5 + 0.25 * np.sin(3.0 * x[..., k % x.shape[-1]]) for k in range(max(dim - x.shape[-1], 0))]
        return np.concatenate([x[..., :dim], *(e[..., None] for e in extra)], axis=-1).astype(np.float32)

    chunk, state = sample.actions, sample.observation.state
    if chunk is None or state is None:
        raise ValueError(
            "robot_vectors needs a sample with a state and actions (an EM-CoT or action sample)."
        )
    steps = np.linspace(0, len(chunk) - 1, horizon)
    lo = np.floor(steps).astype(int)
    hi = np.minimum(lo + 1, len(chunk) - 1)
    frac = (steps - lo)[:, None].astype(np.float32)
    resampled = chunk[lo] * (1 - frac) + chunk[hi] * frac
    return widen(state, state_dim), widen(resampled, action_dim)


def synthetic_robot_samples(
    n: int,
    action_dim: int,
    state_dim: int,
    horizon: int,
    *,
    cfg: SyntheticConfig | None = None,
    seed: int = 0,
    robot: str = "new_robot",
) -> list[EmCoTSample]:
    """EM-CoT samples of the pushing task for a robot with other action/state sizes and chunk horizon."""
    out = []
    for sample in synthetic_samples(n, cfg, seed):
        state, actions = robot_vectors(sample, action_dim, state_dim, horizon)
        sample.observation = Observation(sample.observation.images, state)
        sample.actions, sample.robot = actions, robot
        out.append(sample)
    return out


def push_frames(sample: EmCoTSample, steps: int = 8, cfg: SyntheticConfig | None = None) -> list[np.ndarray]:
    """The camera frames of carrying out ``sample``: ``steps`` frames moving the gripper to the
    block, then ``steps`` pushing both to the goal (the last frame is the sample's subgoal)."""
    cfg = cfg or SyntheticConfig()
    if sample.actions is None or sample.observation.state is None:
        raise ValueError("push_frames needs a pushing sample with a state and actions")
    color = next(name for name in COLORS if f" {name} " in f" {sample.instruction} ")
    gripper, block = sample.observation.state[:2], sample.observation.state[2:4]
    goal = sample.actions[-1, 2:4]
    fractions = np.linspace(0.0, 1.0, steps + 1)[1:]
    approach = [render(cfg, color, block, gripper + f * (block - gripper)) for f in fractions]
    push = [render(cfg, color, block + f * (goal - block), block + f * (goal - block)) for f in fractions]
    return approach + push
