"""History segments: which past steps a memory-enabled policy reads, how they are laid out and
encoded, and the rolling buffer a session keeps them in.

A history is a tuple of :class:`~emcot.types.HistoryStep` (oldest first). Each step becomes, in
order, a ViT segment of the primary camera's frame (resized to ``memory.history_image_size`` when
set: selective spatial-temporal sampling), a state token and a clean action segment of the chunk
executed from it. The steps come before the current observation, so the one attention rule
(DESIGN §3: earlier, non-noise segments are visible) makes them causal in time: a step sees the
steps before it, the present sees them all, and no past step sees the future. Training and
inference build them with these functions.

API: ``select_history(past, memory)``, ``history_segments(frame_tokens, ...)``,
``encode_history(processor, history, robot)`` → :class:`HistoryInputs`, ``HistoryBuffer``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from emcot.memory.config import MemoryConfig
from emcot.sequence.plan import AttnMode, Modality, Segment
from emcot.tokenizers.vae import resize_rgb
from emcot.types import HistoryStep, Observation

if TYPE_CHECKING:  # the processor lives above memory; it is handed in
    from emcot.policy.processor import EmCoTProcessor

HISTORY_FRAME = "history_frame"
HISTORY_STATE = "history_state"
HISTORY_ACTIONS = "history_actions"


def select_history(past: Sequence[HistoryStep], memory: MemoryConfig) -> tuple[HistoryStep, ...]:
    """The steps read at the step after ``past[-1]``: those ``stride``, ``2·stride``, … steps back,
    at most ``history_length`` of them, oldest first (none when memory is off)."""
    if not memory.uses_history:
        return ()
    picked = list(past)[::-1][memory.history_stride - 1 :: memory.history_stride][: memory.history_length]
    return tuple(reversed(picked))


def history_segments(
    frame_tokens: Sequence[int], *, states: bool, actions: bool, horizon: int
) -> list[Segment]:
    """Per past step (``frame_tokens[i]`` ViT tokens each): its frame, state and action chunk."""
    out: list[Segment] = []
    for tokens in frame_tokens:
        out.append(Segment(Modality.VIT, AttnMode.FULL, tokens, False, HISTORY_FRAME))
        if states:
            out.append(Segment(Modality.STATE, AttnMode.FULL, 1, False, HISTORY_STATE))
        if actions:
            out.append(Segment(Modality.ACTION, AttnMode.FULL, horizon, False, HISTORY_ACTIONS))
    return out


@dataclass
class HistoryInputs:
    """A history's model inputs in step order: ViT patches and grid per frame (patches None when
    only counting tokens), normalised states ``[n, state_dim]`` and action chunks with pad masks."""

    vit: list[tuple[torch.Tensor | None, tuple[int, int]]] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)
    actions: list[torch.Tensor] = field(default_factory=list)
    pads: list[torch.Tensor] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)


def _padded_chunk(actions: np.ndarray | None, horizon: int, action_dim: int) -> tuple[np.ndarray, np.ndarray]:
    if actions is None:
        raise ValueError(
            "a history step has no actions but this policy reads past action chunks "
            "(memory.history_actions); record the executed chunk in HistoryStep.actions"
        )
    chunk = np.asarray(actions, dtype=np.float32)
    if chunk.ndim != 2 or chunk.shape[1] != action_dim or len(chunk) < 1:
        raise ValueError(f"a history action chunk must have shape [n ≥ 1, {action_dim}], got {chunk.shape}")
    chunk = chunk[:horizon]  # a longer record (demo anchors far apart) keeps its first chunk's worth
    pad = np.zeros(horizon, dtype=bool)
    pad[len(chunk) :] = True
    # Steps past the executed ones repeat the last action (and are marked, like episode-end padding).
    return np.concatenate([chunk, np.repeat(chunk[-1:], horizon - len(chunk), axis=0)]), pad


def encode_history(
    processor: EmCoTProcessor,
    history: Sequence[HistoryStep],
    robot: str | None = None,
    *,
    encode: bool = True,
) -> HistoryInputs:
    """Segments and inputs of ``history`` for ``processor``'s model (``encode=False``: grids only)."""
    config = processor.config
    memory: MemoryConfig = config.memory
    if history and not memory.uses_history:
        raise ValueError(
            "this policy has no history memory (config.memory.history_length is 0); pass no history"
        )
    if len(history) > memory.history_length:
        raise ValueError(
            f"got {len(history)} history steps but this policy reads at most {memory.history_length} "
            "(config.memory.history_length); pick them with emcot.memory.select_history"
        )
    action, has_state = config.action, config.action.state_dim > 0 and memory.history_states
    out = HistoryInputs()
    for step in history:
        frame = step.frame
        if memory.history_image_size is not None:
            frame = resize_rgb(frame, (memory.history_image_size, memory.history_image_size))
        if encode:
            out.vit.append(processor.vision(frame))
        else:
            h, w = processor.vision.target_size(*frame.shape[:2])
            out.vit.append((None, (h // config.vision.patch_size, w // config.vision.patch_size)))
        if has_state:
            if step.state is None:
                raise ValueError("a history step has no state but this policy reads past states")
            if encode:
                state = processor.encode_state(Observation({}, step.state), robot)
                assert state is not None  # state_dim > 0
                out.states.append(state)
        if memory.history_actions:
            chunk, pad = _padded_chunk(
                step.actions, action.horizon, action.action_dim
            )  # checked when counting too
            if encode:
                out.actions.append(processor.encode_actions(chunk, robot))
                out.pads.append(torch.from_numpy(pad))
    out.segments = history_segments(
        [h * w for _, (h, w) in out.vit],
        states=has_state,
        actions=memory.history_actions,
        horizon=action.horizon,
    )
    return out


class HistoryBuffer:
    """The rolling record of one episode's steps a session keeps (bounded by length × stride)."""

    def __init__(self, memory: MemoryConfig) -> None:
        self.memory = memory
        self._steps: deque[HistoryStep] = deque(maxlen=max(memory.history_length * memory.history_stride, 1))

    def __len__(self) -> int:
        return len(self._steps)

    def clear(self) -> None:
        """Forget every step (a new episode)."""
        self._steps.clear()

    def push(self, step: HistoryStep) -> None:
        """Record a finished step (its frame, state and the actions executed from it)."""
        if self.memory.uses_history:
            self._steps.append(step)

    def current(self) -> tuple[HistoryStep, ...]:
        """The history the next step reads (see :func:`select_history`)."""
        return select_history(self._steps, self.memory)
