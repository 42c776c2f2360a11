"""The stages of one control step with caches (DESIGN §5): prefill, reason, imagine, act.

Each stage reads a :class:`TraceState` and extends it; :meth:`TraceStages.stream_trace` is their
composition. The prefix is encoded once; reasoning tokens are appended one by one; denoising
steps read the KV cache but never write it, and only finished segments (reasoning tokens, the
clean subgoal, markers) are appended.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from emcot.inference.finite import require_finite
from emcot.inference.guidance import (
    FlowQuery,
    action_guidance,
    action_query,
    subgoal_query,
    subgoal_velocity,
    velocity_fn,
)
from emcot.inference.options import GenerationOptions
from emcot.inference.plan import KeptPlan
from emcot.inference.state import TraceState
from emcot.inference.trace import Trace, TraceEvent
from emcot.io_utils import check_value
from emcot.memory.history import encode_history
from emcot.model.embedding import require_latent_codec, require_subgoal, state_camera_pixels
from emcot.model.flow import FlowSamplerConfig, VelocityFn, euler_sample
from emcot.model.inputs import FlowInput, SegmentInputs
from emcot.model.sampling import next_token
from emcot.sequence.layouts import TraceMode, observation_segments, prompt_ids, subgoal_segments, text
from emcot.sequence.plan import SequencePlan
from emcot.types import HistoryStep, Observation

if TYPE_CHECKING:  # the processor is handed in; importing it would run policy → inference back
    from emcot.model.modeling import EmCoTModel
    from emcot.policy.processor import EmCoTProcessor


def seeded(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with ``seed`` (checked), or None to draw from torch's global one."""
    seed = check_value("seed", seed, int | None)
    return torch.Generator().manual_seed(seed) if seed is not None else None


def with_overrides(
    base: FlowSamplerConfig,
    *,
    steps: int | None,
    text_guidance: float | None,
    image_guidance: float | None,
    noise_scale: float | None = None,
) -> FlowSamplerConfig:
    """``base`` with the per-call overrides that are not None (validated again)."""
    changes: dict[str, Any] = {}
    if steps is not None:
        changes["num_steps"] = steps
    if text_guidance is not None:
        changes["text_guidance"] = text_guidance
    if image_guidance is not None:
        changes["image_guidance"] = image_guidance
    if noise_scale is not None:
        changes["noise_scale"] = noise_scale
    return dataclasses.replace(base, **changes)


def embed_text(model: EmCoTModel, ids: list[int]) -> torch.Tensor:
    """Input embeddings ``[1, n, H]`` of text tokens."""
    return model.understanding.embed_tokens(torch.tensor(ids, device=model.device))[None]


def denoise(
    model: EmCoTModel,
    state: TraceState,
    query: FlowQuery,
    *,
    velocity: VelocityFn,
    sampler: FlowSamplerConfig,
) -> torch.Tensor:
    """Euler-sample ``query``'s segment from noise drawn from ``state.rng``, then record the segment
    in the layout (it never enters the cache)."""
    shape = (1, query.segment.length, query.width)
    # Drawn on the CPU, then moved, so a seed gives the same noise on every device.
    noise = torch.randn(shape, generator=state.rng).to(model.device, model.dtype) * sampler.noise_scale
    x0 = euler_sample(velocity, noise, sampler)
    state.layout.append(query.segment)
    return x0


def imagine_latents(
    model: EmCoTModel, state: TraceState, sampler: FlowSamplerConfig, what: str
) -> torch.Tensor:
    """Denoise subgoal latents after the state's cached plan into ``state.x0`` (``what`` names them
    if they are not finite)."""
    velocity = subgoal_velocity(model, state, sampler)
    x0 = denoise(model, state, subgoal_query(model), velocity=velocity, sampler=sampler)
    state.x0 = require_finite(x0, what, model)
    return state.x0


def decode_image(model: EmCoTModel, x0: torch.Tensor) -> Image.Image:
    """Denoised latent tokens ``[1, n, d]`` of one image → RGB image through the latent codec."""
    codec = require_latent_codec(model)
    image = codec.decode(codec.unpatchify(x0, model.latent_grid))[0]
    return codec.postprocess(require_finite(image.float(), "decoded image", model))


class TraceStages:
    """The stages of one policy step: observation + instruction → reasoning, subgoal, actions."""

    def __init__(self, model: EmCoTModel, processor: EmCoTProcessor) -> None:
        self.model = model
        self.proc = processor

    def _marker(self, state: TraceState, ids: list[int], role: str) -> None:
        state.extend(self.model, text(ids, role)[0], embed_text(self.model, ids), ids)

    @torch.no_grad()
    def prefill(
        self,
        observation: Observation,
        instruction: str,
        options: GenerationOptions,
        seed: int | None,
        *,
        history: Sequence[HistoryStep] = (),
    ) -> TraceState:
        """Validate the inputs and run the prefix (history, cameras, state, prompt) into a new cache."""
        model, proc = self.model, self.proc
        if options.mode.imagines and model.config.vae is None:
            raise ValueError("mode='full' needs a model with a VAE; use mode='reason' or 'reactive'")
        proc.validate_observation(observation)
        instruction = proc.check_instruction(instruction)
        framed = proc.frame_instruction(instruction)
        rng = seeded(seed)
        started = time.perf_counter()
        past = encode_history(proc, history, options.robot)
        patches, grids = proc.encode_cameras(observation)
        robot_state = proc.encode_state(observation, options.robot)
        states = robot_state[None].to(model.device) if robot_state is not None else None
        prompt, ids = text(prompt_ids(framed, options.mode, proc.special), "prompt")
        observed = observation_segments([h * w for h, w in grids], states is not None)
        prefix = SequencePlan(past.segments + observed + [prompt])
        all_patches = torch.cat([p for p, _ in past.vit if p is not None] + [patches])
        all_grids = [g for _, g in past.vit] + grids
        vit = model.encode_images(all_patches, all_grids)
        state_rows = past.states + ([robot_state] if robot_state is not None else [])
        flows = [FlowInput.clean(chunk.to(model.device, model.dtype)) for chunk in past.actions]
        inputs = SegmentInputs(
            torch.tensor(ids),
            vit,
            torch.stack(state_rows) if state_rows else None,
            flows,
            state_camera_pixels(model, prefix, all_patches, all_grids),
        )
        embeds = model.embed(prefix, inputs)
        return TraceState.prefilled(
            model,
            prefix,
            embeds,
            text_ids=[ids if seg is prompt else [] for seg in prefix.segments],
            instruction=instruction,
            framed_instruction=framed,
            stage_start=started,
            states=states,
            rng=rng,
        )

    @torch.no_grad()
    def reason(self, state: TraceState, options: GenerationOptions) -> Generator[TraceEvent, None, str]:
        """Decode reasoning tokens into one growing causal segment until ``<|think_end|>``, yielding
        the new text as it appears; returns the whole reasoning text."""
        model, special = self.model, self.proc.special
        tokens: list[int] = []
        shown = ""
        while True:
            token = special.think_end
            if len(tokens) < options.max_reasoning_tokens:
                picked = next_token(
                    model.understanding.logits(state.last_hidden),
                    do_sample=options.do_sample,
                    temperature=options.temperature,
                    top_k=options.top_k,
                    top_p=options.top_p,
                    generator=state.rng,
                )
                token = int(picked[0])
            tokens.append(token)
            embeds = embed_text(model, [token])
            if len(tokens) == 1:
                segment, ids = text([token], "reasoning", loss=True)
                state.extend(model, segment, embeds, ids)
            else:
                state.grow(model, token, embeds)
            decoded = self.proc.tokenizer.decode([t for t in tokens if t != special.think_end])
            if decoded != shown:
                yield TraceEvent("reasoning", text=decoded[len(shown) :])
                shown = decoded
            if token == special.think_end:
                state.lap("reasoning")
                return shown

    @torch.no_grad()
    def imagine(self, state: TraceState, options: GenerationOptions) -> Image.Image:
        """Denoise the subgoal latents against the cache, then append their clean latent copy, the
        optional ViT copy of the decoded image and ``<|vision_end|><|action_start|>``."""
        model, special = self.model, self.proc.special
        self._marker(state, [special.vision_start], "vision_start")
        sampler = with_overrides(
            model.config.subgoal_sampler,
            steps=options.subgoal_steps,
            text_guidance=options.text_guidance,
            image_guidance=options.image_guidance,
        )
        x0 = imagine_latents(model, state, sampler, "subgoal image")
        subgoal = self._attach_subgoal(state, x0)
        state.lap("subgoal")
        return subgoal

    def _attach_subgoal(
        self, state: TraceState, x0: torch.Tensor, decoded: Image.Image | None = None
    ) -> Image.Image:
        """Append denoised subgoal latents as the clean segments training shows after its noisy
        ones (latent copy, optional ViT copy of the decoded image), then ``<|vision_end|><|action_start|>``.

        ``decoded`` is ``x0``'s image when already known (a kept plan), so it is not decoded again."""
        model, special = self.model, self.proc.special
        zero = torch.zeros(1, device=model.device, dtype=x0.dtype)
        clean = require_subgoal(model).embed(x0, zero, model.latent_grid)
        state.extend(model, subgoal_segments(x0.shape[1], 0)["clean"], clean)
        subgoal = decoded if decoded is not None else decode_image(model, x0)
        if model.config.subgoal_vit_copy:
            patches, grid = self.proc.vision(np.asarray(subgoal))
            vit_copy = model.encode_images(patches, [grid])[0]
            state.extend(model, subgoal_segments(x0.shape[1], vit_copy.shape[0])["vit"], vit_copy[None])
        self._marker(state, [special.vision_end, special.action_start], "action_start")
        return subgoal

    @torch.no_grad()
    def recall(self, state: TraceState, plan: KeptPlan) -> Image.Image | None:
        """Teacher-force a kept plan after the prefix: its reasoning ids as the reasoning segment and
        its subgoal latents as the clean subgoal block, the layout a training sample with that
        reasoning and subgoal has (the noisy subgoal segment enters the layout, never the cache)."""
        model = self.model
        subgoal = None
        if plan.reasoning_ids:
            segment, ids = text(plan.reasoning_ids, "reasoning", loss=True)
            state.extend(model, segment, embed_text(model, ids), ids)
        if plan.subgoal_latents is not None:
            x0 = plan.subgoal_latents.to(model.device, model.dtype)
            self._marker(state, [self.proc.special.vision_start], "vision_start")
            state.layout.append(subgoal_segments(x0.shape[1], 0)["noisy"])
            state.x0 = x0
            subgoal = self._attach_subgoal(state, x0, plan.subgoal_image)
        state.lap("recall")
        return subgoal

    def act_on_plan(
        self,
        observation: Observation,
        plan: KeptPlan,
        options: GenerationOptions,
        seed: int | None,
        *,
        history: Sequence[HistoryStep] = (),
    ) -> tuple[Trace, TraceState]:
        """A step that keeps ``plan``: prefill the new observation (after ``history``), :meth:`recall`
        the plan, act."""
        options = dataclasses.replace(options, mode=plan.mode)
        state = self.prefill(observation, plan.instruction, options, seed, history=history)
        subgoal = self.recall(state, plan)
        actions = self.act(state, options)
        return self._trace(state, plan.mode, plan.reasoning, subgoal, actions), state

    @staticmethod
    def _trace(
        state: TraceState, mode: TraceMode, reasoning: str, subgoal: Image.Image | None, actions: np.ndarray
    ) -> Trace:
        return Trace(
            reasoning=reasoning,
            subgoal=subgoal,
            actions=actions,
            timings={**state.timings, "total": sum(state.timings.values())},
            mode=mode.value,
            instruction=state.instruction,
            layout=SequencePlan(list(state.layout.segments)),
            subgoal_latents=state.x0,
        )

    @torch.no_grad()
    def act(self, state: TraceState, options: GenerationOptions) -> np.ndarray:
        """Denoise the action chunk against the cache, with guidance when its scales differ from 1
        (see :func:`action_guidance`); returns robot units."""
        model = self.model
        if state.plan.segments[-1].role != "action_start":
            # A subgoal closes its block with <|vision_end|><|action_start|>; otherwise the chunk opens here.
            self._marker(state, [self.proc.special.action_start], "action_start")
        sampler = with_overrides(
            model.config.action_sampler,
            steps=options.action_steps,
            text_guidance=options.action_text_guidance,
            image_guidance=options.action_image_guidance,
            noise_scale=options.action_noise_scale,
        )
        query = action_query(model)
        guidance = action_guidance(model, self.proc.special, state, sampler)
        velocity = velocity_fn(model, state.plan, state.cache, query, sampler=sampler, guidance=guidance)
        x0 = require_finite(
            denoise(model, state, query, velocity=velocity, sampler=sampler), "action chunk", model
        )
        actions = self.proc.decode_actions(x0[0], options.robot)
        # Un-normalising can overflow too (huge statistics); the robot must never see it.
        actions = require_finite(torch.from_numpy(actions), "action chunk (robot units)", model).numpy()
        state.lap("actions")
        return actions

    def stream_trace(
        self,
        observation: Observation,
        instruction: str,
        options: GenerationOptions,
        seed: int | None,
        *,
        history: Sequence[HistoryStep] = (),
    ) -> Iterator[TraceEvent]:
        """prefill → reason → imagine → act as the mode asks, yielding events as soon as each piece
        exists; the final ``done`` event carries the :class:`Trace` and the finished state."""
        mode = options.mode
        state = self.prefill(observation, instruction, options, seed, history=history)
        reasoning = ""
        if mode.reasons:
            reasoning = yield from self.reason(state, options)
        subgoal = None
        if mode.imagines:
            subgoal = self.imagine(state, options)
            yield TraceEvent("subgoal", image=subgoal)
        actions = self.act(state, options)
        yield TraceEvent("actions", actions=actions)
        yield TraceEvent("done", trace=self._trace(state, mode, reasoning, subgoal, actions), state=state)
