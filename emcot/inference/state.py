"""`TraceState`: the public, typed state of one control step, which the stages read and extend."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from emcot.model.attention import KVCache
from emcot.sequence.plan import Segment, SequencePlan

if TYPE_CHECKING:
    from emcot.model.modeling import EmCoTModel


@dataclass
class TraceState:
    """A control step (or a frame prediction) in progress (DESIGN §5).

    ``plan`` holds the segments whose keys and values are in ``cache`` and ``text_ids`` the token
    ids of each of them (empty for non-text). Noise segments never enter the cache: no token may
    see them and they take no RoPE step, so leaving them out is exact. ``layout`` holds every
    segment in order, the denoised noise segments included: the step's teacher-forced training
    layout. ``last_hidden [1, H]`` is the newest cached token's final hidden state (the next
    token's logits come from it), ``x0 [1, n, d]`` the denoised subgoal latents once imagined.
    ``states [1, state_dim]`` is the normalised robot state, ``rng`` the generator every
    stage draws from, and ``timings`` holds each finished stage's seconds.
    """

    plan: SequencePlan
    cache: KVCache
    text_ids: list[list[int]]
    layout: SequencePlan
    last_hidden: torch.Tensor
    instruction: str
    framed_instruction: list[int]
    states: torch.Tensor | None = None
    rng: torch.Generator | None = None
    x0: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # perf_counter() when the running stage began; `lap` closes the stage.
    stage_start: float = field(default_factory=time.perf_counter)

    @classmethod
    def prefilled(
        cls,
        model: EmCoTModel,
        plan: SequencePlan,
        embeds: torch.Tensor,
        *,
        text_ids: list[list[int]],
        instruction: str,
        framed_instruction: list[int],
        stage_start: float,
        states: torch.Tensor | None = None,
        rng: torch.Generator | None = None,
    ) -> TraceState:
        """The state after running ``plan``'s prefix (input embeddings ``embeds``) into a new cache;
        its time since ``stage_start`` is recorded as the ``prefix`` stage."""
        cache = model.new_cache()
        hidden = model.run_plan(embeds, plan, 0, cache, write_cache=True)
        state = cls(
            plan=plan,
            cache=cache,
            text_ids=text_ids,
            layout=SequencePlan(list(plan.segments)),
            last_hidden=hidden[:, -1],
            instruction=instruction,
            framed_instruction=framed_instruction,
            states=states,
            rng=rng,
            stage_start=stage_start,
        )
        state.lap("prefix")
        return state

    def extend(
        self, model: EmCoTModel, segment: Segment, embeds: torch.Tensor, ids: list[int] | None = None
    ) -> None:
        """Add a finished ``segment`` (input embeddings ``embeds [1, n, H]``, its ``ids`` if text):
        run it against the cache and store its keys and values."""
        start = len(self.plan)
        self.plan.append(segment)
        self.layout.append(segment)
        self.text_ids.append(list(ids or []))
        self._run(model, embeds, start)

    def grow(self, model: EmCoTModel, token: int, embeds: torch.Tensor) -> None:
        """Append ``token`` (embedding ``embeds [1, 1, H]``) to the last, causal text segment."""
        last = self.plan.segments[-1]
        grown = dataclasses.replace(last, length=last.length + 1)
        self.plan.segments[-1] = self.layout.segments[-1] = grown
        self.text_ids[-1].append(token)
        self._run(model, embeds, len(self.plan) - 1)

    def _run(self, model: EmCoTModel, embeds: torch.Tensor, start: int) -> None:
        hidden = model.run_plan(embeds, self.plan, start, self.cache, write_cache=True)
        self.last_hidden = hidden[:, -1]

    def lap(self, stage: str) -> None:
        """Record the seconds since the previous stage ended as ``timings[stage]``."""
        now = time.perf_counter()
        self.timings[stage] = now - self.stage_start
        self.stage_start = now
