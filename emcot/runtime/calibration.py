"""Calibrating :class:`~emcot.runtime.rules.SubgoalReached`: how far a camera frame is from an
imagined subgoal, over episodes whose frames are labelled "subgoal reached" or not.

For each episode the subgoal is either the policy's own (imagined from the first observation: the
distance the rule sees at run time) or a given true subgoal frame (which calibrates the latent
metric alone, independent of how well the policy imagines). Every frame's latent distance to it is
measured and the threshold that best separates the reached frames from the others is chosen
(balanced accuracy; among equally good cut points, the middle one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from emcot.policy.policy import EmCoTPolicy
from emcot.types import Observation


@dataclass(frozen=True)
class CalibrationEpisode:
    """The first observation, the instruction, the primary camera's later frames, per frame whether
    it shows the subgoal reached, and optionally the true ``subgoal`` frame to measure against."""

    observation: Observation
    instruction: str
    frames: Sequence[np.ndarray]
    reached: Sequence[bool]
    subgoal: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.frames) != len(self.reached) or not self.frames:
            raise ValueError(
                f"an episode needs one 'reached' flag per frame and at least one frame; "
                f"got {len(self.frames)} frames and {len(self.reached)} flags"
            )


@dataclass(frozen=True)
class SubgoalCalibration:
    """Distances of reached and not-reached frames, the chosen ``threshold`` and its balanced
    accuracy, and the ROC AUC of the distance as a reached-detector (1 = perfect, 0.5 = chance)."""

    reached: np.ndarray
    not_reached: np.ndarray
    threshold: float
    balanced_accuracy: float
    auc: float


def latent_distance(policy: EmCoTPolicy, frame: np.ndarray, subgoal_latents: torch.Tensor) -> float:
    """RMS distance between a frame's latent tokens and subgoal latents (what the rule compares)."""
    current = policy.image_latents(frame)
    return float((current - subgoal_latents.to(current.device, current.dtype)).pow(2).mean().sqrt())


def episode_distances(policy: EmCoTPolicy, episode: CalibrationEpisode, seed: int = 0) -> np.ndarray:
    """Distances of an episode's frames to its true subgoal frame when given, else to the subgoal
    the policy imagines from the first observation."""
    if episode.subgoal is not None:
        target = policy.image_latents(episode.subgoal)
    else:
        trace = policy.generate_trace(episode.observation, episode.instruction, mode="full", seed=seed)
        if trace.subgoal_latents is None:
            raise ValueError("the policy imagines no subgoal (a model without a visual-generation expert)")
        target = trace.subgoal_latents
    return np.array([latent_distance(policy, frame, target) for frame in episode.frames])


def best_threshold(reached: np.ndarray, not_reached: np.ndarray) -> tuple[float, float]:
    """The threshold (``distance < threshold`` means reached) with the best balanced accuracy, and
    that accuracy; among equally good cut points the midpoint between neighbouring distances."""
    reached, not_reached = np.asarray(reached, float), np.asarray(not_reached, float)
    if reached.size == 0 or not_reached.size == 0:
        raise ValueError("calibration needs both reached and not-reached frames")
    values = np.unique(np.concatenate([reached, not_reached]))
    cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    accuracy = np.array([((reached < c).mean() + (not_reached >= c).mean()) / 2 for c in cuts])
    best = np.flatnonzero(accuracy == accuracy.max())
    chosen = cuts[best[len(best) // 2]]
    return float(chosen), float(accuracy.max())


def roc_auc(reached: np.ndarray, not_reached: np.ndarray) -> float:
    """Probability that a reached frame is closer than a not-reached one (ties count half)."""
    r = np.asarray(reached, float)[:, None]
    n = np.asarray(not_reached, float)[None, :]
    return float((r < n).mean() + 0.5 * (r == n).mean())


def calibrate_subgoal_threshold(
    policy: EmCoTPolicy, episodes: Sequence[CalibrationEpisode], seed: int = 0
) -> SubgoalCalibration:
    """Measure every episode and choose the :class:`SubgoalReached` threshold for ``policy``."""
    reached, not_reached = [], []
    for index, episode in enumerate(episodes):
        distances = episode_distances(policy, episode, seed=seed + index)
        flags = np.asarray(episode.reached, bool)
        reached.extend(distances[flags])
        not_reached.extend(distances[~flags])
    r, n = np.array(reached), np.array(not_reached)
    threshold, accuracy = best_threshold(r, n)
    return SubgoalCalibration(r, n, threshold, accuracy, roc_auc(r, n))
