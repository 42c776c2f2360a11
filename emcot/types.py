"""Plain data types shared by the policy, the codecs and the training pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from emcot.io_utils import parse_choice


@dataclass
class Observation:
    """What the robot sees and feels at one control step.

    ``images`` maps camera names to uint8 arrays of shape (H, W, 3); ``state`` is the
    proprioceptive vector in robot units (or None for policies without a state input).
    """

    images: dict[str, np.ndarray]
    state: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Only the container types are checked here; sizes and dtypes depend on the policy and are
        # checked by its processor.
        if not isinstance(self.images, Mapping):
            raise ValueError(
                "Observation.images must be a dict mapping camera names to uint8 (H, W, 3) arrays, "
                f"got {type(self.images).__name__}"
            )
        for name, image in self.images.items():
            if not isinstance(name, str):
                raise ValueError(f"Observation.images keys must be camera names (str), got {name!r}")
            if not isinstance(image, np.ndarray):
                raise ValueError(
                    f"Observation.images['{name}'] must be a numpy uint8 (H, W, 3) array, got {type(image).__name__}"
                )
        if self.state is not None:
            state = np.asarray(self.state)
            if state.dtype.kind not in "biuf":
                raise ValueError(f"Observation.state must be numbers, got {self.state!r:.80}")
            self.state = state


@dataclass(frozen=True)
class HistoryStep:
    """One past policy step a memory-enabled policy reads (oldest first in a history).

    ``frame``: the primary camera's uint8 (H, W, 3) image at that step; ``state``: the state then
    (robot units, or None); ``actions``: the chunk executed from that step on, robot units
    ``[n, action_dim]`` with n ≤ the policy's horizon (None when not recorded).
    """

    frame: np.ndarray
    state: np.ndarray | None = None
    actions: np.ndarray | None = None

    def __post_init__(self) -> None:
        frame = self.frame
        if (
            not isinstance(frame, np.ndarray)
            or frame.dtype != np.uint8
            or frame.ndim != 3
            or frame.shape[2] != 3
        ):
            raise ValueError(
                "HistoryStep.frame must be a uint8 (H, W, 3) array, got "
                f"{getattr(frame, 'dtype', type(frame).__name__)} {getattr(frame, 'shape', '')}"
            )
        if self.actions is not None and np.asarray(self.actions).ndim != 2:
            raise ValueError(
                f"HistoryStep.actions must be a [steps, action_dim] chunk, got shape {np.shape(self.actions)}"
            )


class SampleKind(str, Enum):
    """What a training sample teaches; the collator lays out each kind with its own encoder."""

    TRACE = "trace"  # EM-CoT trace, or action-only when it has no reasoning
    VQA = "vqa"  # question(s) about images, answers carry the loss
    GENERATION = "generation"  # context frames + prompt → a future frame


# Keys that once travelled in ``metadata`` and are typed fields now, so a stale producer fails loudly.
_TYPED_METADATA = {"kind": "kind", "is_pad": "action_pad", "vae_context": "vae_context"}


@dataclass
class EmCoTSample:
    """One raw training example in robot units, before tokenisation.

    Every part but the observation and the instruction is optional, so the same type carries
    EM-CoT traces (reasoning + subgoal + actions), reactive action-only samples, VQA
    (``instruction`` = question, ``reasoning`` = answer, no actions) and visual-generation
    samples (``subgoal`` = the future frame to predict); ``kind`` says which. ``action_pad``
    (bool, one per action step) marks steps repeated past the episode end, which carry no loss;
    ``vae_context`` False leaves a generation sample's clean latent copies of its frames out.
    ``metadata`` holds provenance (episode, frame …) and VQA ``turns``. ``history`` holds the
    episode's earlier steps, oldest first; the collator keeps those a memory-enabled model reads
    (``config.memory``, :func:`emcot.memory.select_history`) and a model without memory none. VQA
    samples with a history are video-QA, whose answers form the ``vqa`` loss term.
    """

    observation: Observation
    instruction: str
    reasoning: str | None = None
    subgoal: np.ndarray | None = None
    actions: np.ndarray | None = None
    robot: str = "default"
    kind: SampleKind = SampleKind.TRACE
    action_pad: np.ndarray | None = None
    vae_context: bool = True
    metadata: dict = field(default_factory=dict)
    history: tuple[HistoryStep, ...] = ()

    def __post_init__(self) -> None:
        self.history = tuple(self.history)
        self.kind = parse_choice(SampleKind, self.kind, "sample kind")
        stale = [key for key in _TYPED_METADATA if key in self.metadata]
        if stale:
            fields = [_TYPED_METADATA[key] for key in stale]
            raise ValueError(
                f"metadata keys {stale} moved to the EmCoTSample fields {fields}; set those instead"
            )
