"""`KeptPlan`: the part of a control step a robot can reuse on later steps (reasoning + subgoal)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from emcot.inference.state import TraceState
from emcot.inference.trace import Trace
from emcot.sequence.layouts import TraceMode


@dataclass(frozen=True)
class KeptPlan:
    """The reasoning token ids (``<|think_end|>`` included) and denoised subgoal latents of one
    step, with the instruction they answer; ``made_at`` is the session step that made them."""

    instruction: str
    reasoning: str
    reasoning_ids: list[int]
    subgoal_latents: torch.Tensor | None
    made_at: int = 0
    subgoal_image: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def mode(self) -> TraceMode:
        """The trace mode a step that keeps this plan runs in."""
        if self.subgoal_latents is not None:
            return TraceMode.FULL
        return TraceMode.REASON if self.reasoning_ids else TraceMode.REACTIVE

    @classmethod
    def from_step(cls, trace: Trace, state: TraceState, made_at: int = 0) -> KeptPlan:
        """The plan of a finished step (its trace and the final state of the ``done`` event)."""
        ids = next(
            (
                list(ids)
                for seg, ids in zip(state.plan.segments, state.text_ids, strict=True)
                if seg.role == "reasoning"
            ),
            [],
        )
        latents = None if state.x0 is None else state.x0.detach().clone()
        return cls(trace.instruction, trace.reasoning, ids, latents, made_at, trace.subgoal)
