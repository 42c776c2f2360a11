"""Classifier-free guidance of the flow stages: which conditions each unconditional branch drops, and
the velocity function that runs every branch against the cache.

The branches mirror training's condition dropout, so each one is a forward the model was trained on:
no-text hides segments from the noisy queries through the key-drop mask, no-image is a separate,
smaller cache without the image conditions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from emcot.inference.state import TraceState
from emcot.model.attention import KVCache
from emcot.model.embedding import require_subgoal
from emcot.model.flow import FlowSamplerConfig, GuidedVelocity, VelocityFn, guidance_active
from emcot.model.inputs import SegmentInputs
from emcot.sequence.layouts import TraceMode, action_segment, subgoal_segments, trace_layout
from emcot.sequence.plan import Modality, Segment, SequencePlan
from emcot.tokenizers.text_base import SpecialTokenIds

if TYPE_CHECKING:
    from emcot.model.modeling import EmCoTModel

# Segments an action-only sample keeps when its language is dropped (the no-text action branch).
OBSERVATION_ROLES = ("camera", "state")
# What the no-image branch of a subgoal or predicted frame drops: the observation's (or context
# frames') ViT segments and the frames' clean latent copies, as training's dropout.vit / dropout.vae.
IMAGE_ROLES = ("camera", "context_latent")


def is_text(segment: Segment) -> bool:
    """Whether a segment is text (prompt, reasoning, markers): what text-condition dropout hides."""
    return segment.modality is Modality.TEXT


def beyond_observation(segment: Segment) -> bool:
    """Whether a segment is neither camera nor state: what the no-text action branch hides."""
    return segment.role not in OBSERVATION_ROLES


@dataclass
class GuidanceBranches:
    """The unconditional branches of one denoising run; a branch left None costs nothing.

    ``hide`` picks the cached segments the no-text branch hides from the noisy queries through the
    key-drop mask (as training's condition dropout does); ``no_image`` is a separate plan and its
    cache without the image conditions (see :func:`no_image_context`).
    """

    hide: Callable[[Segment], bool] | None = None
    no_image: tuple[SequencePlan, KVCache] | None = None


@dataclass(frozen=True)
class FlowQuery:
    """A noisy segment to denoise after a cached plan, and how its tokens enter and leave the backbone.

    ``embed(x_t [1, n, width], t [1])`` gives the input embeddings, ``head(hidden)`` the velocity.
    """

    segment: Segment
    width: int
    embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]


def subgoal_query(model: EmCoTModel) -> FlowQuery:
    """The noisy subgoal latents through the generation expert (a trace's subgoal, a predicted frame)."""
    grid, io = model.latent_grid, require_subgoal(model)
    return FlowQuery(
        segment=subgoal_segments(grid[0] * grid[1], 0)["noisy"],
        width=model.config.latent_token_dim,
        embed=lambda x, t: io.embed(x, t, grid),
        head=io.velocity,
    )


def action_query(model: EmCoTModel) -> FlowQuery:
    """The noisy action chunk through the action expert."""
    action = model.config.action
    return FlowQuery(
        segment=action_segment(action.horizon),
        width=action.action_dim,
        embed=model.action.embed_actions,
        head=model.action.velocity,
    )


def velocity_fn(
    model: EmCoTModel,
    plan: SequencePlan,
    cache: KVCache,
    query: FlowQuery,
    *,
    sampler: FlowSamplerConfig,
    guidance: GuidanceBranches,
) -> VelocityFn:
    """Velocity at (x_t, t) of ``query``'s segment after the cached ``plan``, with the guidance
    branches that are set; the cache is only read.

    Each branch's mask and positions are prepared once; every Euler step only embeds and runs.
    """
    segment = query.segment
    query_plan = SequencePlan(plan.segments + [segment])
    start = len(plan)
    branches = {"cond": (model.prepare_query(query_plan, start), cache)}
    if guidance.hide is not None:
        layout = query_plan.layout(model.device)
        hidden = torch.tensor([guidance.hide(s) for s in plan.segments] + [False], device=model.device)
        branches["no_text"] = (model.prepare_query(query_plan, start, hidden[layout.segment]), cache)
    if guidance.no_image is not None:
        image_plan, image_cache = guidance.no_image
        branches["no_image"] = (
            model.prepare_query(SequencePlan(image_plan.segments + [segment]), len(image_plan)),
            image_cache,
        )

    def run(x: torch.Tensor, t: float, branch: str) -> torch.Tensor:
        prepared, branch_cache = branches[branch]
        emb = query.embed(x, torch.full((1,), t, device=x.device, dtype=x.dtype))
        return query.head(model.run_prepared(emb, prepared, branch_cache, write_cache=False))

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor | GuidedVelocity:
        cond = run(x, t, "cond")
        if not guidance_active(sampler, t):
            return cond
        no_text = run(x, t, "no_text") if "no_text" in branches else None
        no_image = run(x, t, "no_image") if "no_image" in branches else None
        return GuidedVelocity(cond, no_text, no_image)

    return velocity


def no_image_context(
    model: EmCoTModel,
    plan: SequencePlan,
    text_ids: list[list[int]],
    states: torch.Tensor | None,
    *,
    drop: tuple[str, ...] = ("camera",),
) -> tuple[SequencePlan, KVCache]:
    """A separate cache of ``plan`` without its segments of the roles ``drop`` (image guidance).

    What remains must be text or state: it is embedded from ``text_ids`` and ``states`` alone. The
    segments of past steps (a memory-enabled model's history) are images too and always dropped.
    """
    keep = [i for i, s in enumerate(plan.segments) if s.role not in drop and not s.is_history]
    context = SequencePlan([plan.segments[i] for i in keep])
    ids = torch.tensor([t for i in keep for t in text_ids[i]], dtype=torch.long, device=model.device)
    embeds = model.embed(context, SegmentInputs(ids, states=states))
    cache = model.new_cache()
    model.run_plan(embeds, context, 0, cache, write_cache=True)
    return context, cache


def subgoal_guidance(model: EmCoTModel, state: TraceState, sampler: FlowSamplerConfig) -> GuidanceBranches:
    """Branches of a subgoal (or predicted frame) whose scales differ from 1: no-text hides every
    text segment, no-image drops the :data:`IMAGE_ROLES`."""
    return GuidanceBranches(
        hide=is_text if sampler.text_guidance != 1.0 else None,
        no_image=(
            no_image_context(model, state.plan, state.text_ids, state.states, drop=IMAGE_ROLES)
            if sampler.image_guidance != 1.0
            else None
        ),
    )


def subgoal_velocity(model: EmCoTModel, state: TraceState, sampler: FlowSamplerConfig) -> VelocityFn:
    """The subgoal latents' velocity after the state's cached plan, with :func:`subgoal_guidance`."""
    return velocity_fn(
        model,
        state.plan,
        state.cache,
        subgoal_query(model),
        sampler=sampler,
        guidance=subgoal_guidance(model, state, sampler),
    )


def action_guidance(
    model: EmCoTModel, special: SpecialTokenIds, state: TraceState, sampler: FlowSamplerConfig
) -> GuidanceBranches:
    """Branches of the action chunk whose scales differ from 1, HALO-style.

    They match the condition dropout of action-only training samples: no-text sees only the
    observation (cameras and state); no-image is the reactive sample of this step (state, plain
    prompt, ``<|action_start|>``) with its cameras dropped, whatever the mode.
    """
    guidance = GuidanceBranches()
    if sampler.text_guidance != 1.0:
        guidance.hide = beyond_observation
    if sampler.image_guidance != 1.0:
        reactive = trace_layout(
            mode=TraceMode.REACTIVE,
            vit_lengths=[s.length for s in state.plan.segments if s.role == "camera"],
            has_state=state.states is not None,
            framed_instruction=state.framed_instruction,
            special=special,
            reasoning=None,
            subgoal_tokens=0,
            subgoal_vit_tokens=0,
            horizon=model.config.action.horizon,
        )
        # Everything before the action chunk; no_image_context drops the cameras.
        guidance.no_image = no_image_context(
            model, SequencePlan(reactive.segments[:-1]), reactive.text_ids[:-1], state.states
        )
    return guidance
