"""Plain data types shared by the policy, the codecs and the training pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Observation:
    """What the robot sees and feels at one control step.

    ``images`` maps camera names to uint8 arrays of shape (H, W, 3); ``state`` is the
    proprioceptive vector in robot units (or None for policies without a state input).
    """

    images: dict[str, np.ndarray]
    state: np.ndarray | None = None


@dataclass
class EmCoTSample:
    """One raw training example in robot units, before tokenisation.

    Every part but the observation and the instruction is optional, so the same type carries
    EM-CoT traces (reasoning + subgoal + actions), reactive action-only samples, VQA
    (``instruction`` = question, ``reasoning`` = answer, no actions) and visual-generation
    samples (``subgoal`` = the future frame to predict).
    """

    observation: Observation
    instruction: str
    reasoning: str | None = None
    subgoal: np.ndarray | None = None
    actions: np.ndarray | None = None
    robot: str = "default"
    metadata: dict = field(default_factory=dict)
