"""Trace generation with caches (DESIGN §5): prefix once, reasoning token by token, then flow stages.

Denoising steps read the KV cache but never write it; only finished segments (reasoning tokens,
the clean subgoal, markers) are appended.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from emcot.inference.finite import require_finite
from emcot.inference.trace import Trace, TraceEvent
from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, check_fields, check_value
from emcot.model.attention import KVCache
from emcot.model.flow import FlowSamplerConfig, GuidedVelocity, VelocityFn, euler_sample, guidance_active
from emcot.model.inputs import SegmentInputs
from emcot.model.sampling import next_token
from emcot.sequence.layouts import (
    action_segment,
    check_mode,
    observation_segments,
    prompt_ids,
    subgoal_segments,
    text,
    trace_layout,
)
from emcot.sequence.plan import Modality, Segment, SequencePlan

if TYPE_CHECKING:  # the processor is handed in; importing it would run policy → inference back
    from emcot.policy.processor import EmCoTProcessor

GUIDANCE_OPTIONS = ("text_guidance", "image_guidance", "action_text_guidance", "action_image_guidance")


@dataclass
class GenerationOptions:
    """Per-call knobs of :meth:`EmCoTPolicy.generate_trace`; defaults are saved with the policy.

    Steps and guidance scales left None take the model config's ``subgoal_sampler`` (``text_guidance``,
    ``image_guidance``) and ``action_sampler`` (``action_text_guidance``, ``action_image_guidance``).
    """

    mode: str = "full"
    max_reasoning_tokens: int = 96
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    subgoal_steps: int | None = None
    action_steps: int | None = None
    text_guidance: float | None = None
    image_guidance: float | None = None
    action_text_guidance: float | None = None
    action_image_guidance: float | None = None
    robot: str | None = None

    def __post_init__(self) -> None:
        # Checked here, by the option's name, so a bad value fails before any compute is spent
        # (NaN/inf included: they would pass a `value < 0` check and give NaN actions).
        check_fields(
            self,
            "",
            max_reasoning_tokens=AT_LEAST_ONE,
            temperature=POSITIVE,
            top_k=AT_LEAST_ONE,
            top_p=Range(gt=0, le=1),
            subgoal_steps=AT_LEAST_ONE,
            action_steps=AT_LEAST_ONE,
            **dict.fromkeys(GUIDANCE_OPTIONS, NON_NEGATIVE),
        )
        check_mode(self.mode)

    def replace(self, **changes) -> GenerationOptions:
        """A copy with some options changed; unknown names raise."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown generation options {unknown}; known options are {sorted(known)}")
        return dataclasses.replace(self, **changes)


@dataclass
class _Context:
    """Generation state: the cached plan (noise segments never enter the cache — no token may see
    them and they take no RoPE step, so leaving them out is exact), its KV cache, the text ids of
    each cached segment, and the full layout including noise segments (for inspection/tests)."""

    plan: SequencePlan
    cache: object
    text_ids: list[list[int]]
    layout: list[Segment]


# Segments an action-only sample keeps when its language is dropped (the no-text action branch).
OBSERVATION_ROLES = ("camera", "state")


def is_text(segment: Segment) -> bool:
    """Whether a segment is text (prompt, reasoning, markers): what text-condition dropout hides."""
    return segment.modality is Modality.TEXT


@dataclass
class GuidanceBranches:
    """The unconditional branches of one denoising run; a branch left None costs nothing.

    ``hide`` picks the cached segments the no-text branch hides from the noisy queries through the
    key-drop mask (as training's condition dropout does); ``no_image`` is a separate plan and its
    cache without the image conditions (see :meth:`TraceGenerator.no_image_context`).
    """

    hide: Callable[[Segment], bool] | None = None
    no_image: tuple[SequencePlan, KVCache] | None = None


class TraceGenerator:
    """Runs one policy step: observation + instruction → streamed :class:`TraceEvent` s."""

    def __init__(self, model, processor: EmCoTProcessor) -> None:
        self.model = model
        self.proc = processor

    def noise(self, shape, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal noise on the model's device and dtype (drawn on the CPU, so seeds agree)."""
        return torch.randn(shape, generator=generator).to(self.model.device, self.model.dtype)

    def sampler(
        self, base: FlowSamplerConfig, steps: int | None, text_g: float | None, image_g: float | None
    ) -> FlowSamplerConfig:
        """``base`` with the per-call overrides that are not None (validated again)."""
        changes = {}
        if steps is not None:
            changes["num_steps"] = steps
        if text_g is not None:
            changes["text_guidance"] = text_g
        if image_g is not None:
            changes["image_guidance"] = image_g
        return dataclasses.replace(base, **changes)

    def _append(self, ctx: _Context, segment: Segment, embeds: torch.Tensor, ids: list[int] | None = None):
        """Add a finished segment: run it against the cache and store its keys/values."""
        start = len(ctx.plan)
        ctx.plan.append(segment)
        ctx.layout.append(segment)
        ctx.text_ids.append(list(ids or []))
        return self.model.run_plan(embeds, ctx.plan, start, ctx.cache, write_cache=True)

    def _embed_text(self, ids: list[int]) -> torch.Tensor:
        return self.model.understanding.embed_tokens(torch.tensor(ids, device=self.model.device))[None]

    def velocity_fn(
        self,
        plan: SequencePlan,
        cache: KVCache,
        segment: Segment,
        embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        head: Callable[[torch.Tensor], torch.Tensor],
        sampler: FlowSamplerConfig,
        guidance: GuidanceBranches,
    ) -> VelocityFn:
        """Velocity at (x_t, t) for a noisy ``segment`` after the cached ``plan``, with the guidance
        branches that are set.

        Each branch's mask and positions are prepared once; every Euler step only embeds and runs.
        """
        model = self.model
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
            query, branch_cache = branches[branch]
            emb = embed(x, torch.full((1,), t, device=x.device, dtype=x.dtype))
            return head(model.run_prepared(emb, query, branch_cache, write_cache=False))

        def velocity(x: torch.Tensor, t: float):
            cond = run(x, t, "cond")
            if not guidance_active(sampler, t):
                return cond
            no_text = run(x, t, "no_text") if "no_text" in branches else None
            no_image = run(x, t, "no_image") if "no_image" in branches else None
            return GuidedVelocity(cond, no_text, no_image)

        return velocity

    def no_image_context(
        self,
        plan: SequencePlan,
        text_ids: list[list[int]],
        states: torch.Tensor | None,
        drop: tuple[str, ...] = ("camera",),
    ) -> tuple[SequencePlan, KVCache]:
        """A separate cache of ``plan`` without its segments of the roles ``drop`` (image guidance).

        What remains must be text or state: it is embedded from ``text_ids`` and ``states`` alone.
        """
        keep = [i for i, s in enumerate(plan.segments) if s.role not in drop]
        ctx = SequencePlan([plan.segments[i] for i in keep])
        ids = torch.tensor([t for i in keep for t in text_ids[i]], dtype=torch.long, device=self.model.device)
        embeds = self.model.embed(ctx, SegmentInputs(ids, states=states))
        cache = self.model.new_cache()
        self.model.run_plan(embeds, ctx, 0, cache, write_cache=True)
        return ctx, cache

    @torch.no_grad()
    def stream(
        self, observation, instruction: str, options: GenerationOptions, seed: int | None
    ) -> Iterator[TraceEvent]:
        """Generate a trace stage by stage, yielding events as soon as each piece exists."""
        model, proc = self.model, self.proc
        mode = options.mode
        if mode == "full" and model.config.vae is None:
            raise ValueError("mode='full' needs a model with a VAE; use mode='reason' or 'reactive'")
        proc.validate_observation(observation)
        instruction = proc.check_instruction(instruction)
        framed = proc.frame_instruction(instruction)
        seed = check_value("seed", seed, int | None)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        special = proc.special
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = now - clock
            clock = now

        patches, grids = proc.encode_cameras(observation)
        state = proc.encode_state(observation, options.robot)
        states = state[None].to(model.device) if state is not None else None
        obs_segments = observation_segments([h * w for h, w in grids], state is not None)
        prompt_seg, ids = text(prompt_ids(framed, mode, special), "prompt")
        ctx = _Context(SequencePlan(), model.new_cache(), [], [])
        prefix = SequencePlan(obs_segments + [prompt_seg])
        vit = model.encode_images(patches, grids)
        embeds = model.embed(prefix, SegmentInputs(torch.tensor(ids), vit, states))
        for seg in prefix.segments:
            ctx.plan.append(seg)
            ctx.layout.append(seg)
            ctx.text_ids.append(ids if seg is prompt_seg else [])
        hidden = model.run_plan(embeds, ctx.plan, 0, ctx.cache, write_cache=True)
        lap("prefix")

        reasoning_text = ""
        if mode != "reactive":
            reasoning_text = yield from self._reason(ctx, hidden, options, generator)
            lap("reasoning")

        subgoal_image = None
        if mode == "full":
            subgoal_image = self._imagine(ctx, options, states, generator)
            lap("subgoal")
            yield TraceEvent("subgoal", image=subgoal_image)
        else:
            marker = [special.action_start]
            self._append(ctx, text(marker, "action_start")[0], self._embed_text(marker), marker)

        actions = self._act(ctx, options, generator, framed, states)
        lap("actions")
        yield TraceEvent("actions", actions=actions)
        timings["total"] = sum(timings.values())
        self.last_layout = SequencePlan(list(ctx.layout))
        yield TraceEvent(
            "done", trace=Trace(reasoning_text, subgoal_image, actions, timings, mode, instruction)
        )

    def _reason(self, ctx: _Context, hidden, options: GenerationOptions, generator):
        """Decode reasoning tokens into one growing causal segment until ``<|think_end|>``."""
        model, proc, special = self.model, self.proc, self.proc.special
        tokens: list[int] = []
        shown = ""
        logits = model.understanding.logits(hidden[:, -1])
        while True:
            token = special.think_end
            if len(tokens) < options.max_reasoning_tokens:
                picked = next_token(
                    logits, options.do_sample, options.temperature, options.top_k, options.top_p, generator
                )
                token = int(picked[0])
            tokens.append(token)
            if len(tokens) == 1:
                seg = Segment(Modality.TEXT, "causal", 1, True, "reasoning")
                ctx.plan.append(seg)
                ctx.layout.append(seg)
                ctx.text_ids.append([])
            else:
                grown = dataclasses.replace(ctx.plan.segments[-1], length=len(tokens))
                ctx.plan.segments[-1] = ctx.layout[-1] = grown
            ctx.text_ids[-1].append(token)
            hidden = model.run_plan(
                self._embed_text([token]), ctx.plan, len(ctx.plan) - 1, ctx.cache, write_cache=True
            )
            decoded = proc.tokenizer.decode([t for t in tokens if t != special.think_end])
            if decoded != shown:
                yield TraceEvent("reasoning", text=decoded[len(shown) :])
                shown = decoded
            if token == special.think_end:
                return shown
            logits = model.understanding.logits(hidden[:, -1])

    def decode_image(self, x0: torch.Tensor) -> Image.Image:
        """Denoised latent tokens ``[1, n, d]`` of one image → RGB image through the latent codec."""
        codec = self.model.latent_codec
        image = codec.decode(codec.unpatchify(x0, self.model.latent_grid))[0]
        return codec.postprocess(require_finite(image.float(), "decoded image", self.model))

    def _imagine(self, ctx: _Context, options: GenerationOptions, states, generator):
        """Denoise the subgoal latents against the cache, then append its clean latent and ViT copies."""
        model, proc, special = self.model, self.proc, self.proc.special
        marker = [special.vision_start]
        self._append(ctx, text(marker, "vision_start")[0], self._embed_text(marker), marker)
        grid = model.latent_grid
        n_tokens = grid[0] * grid[1]
        block = subgoal_segments(n_tokens, 0)
        sampler = self.sampler(
            model.config.subgoal_sampler, options.subgoal_steps, options.text_guidance, options.image_guidance
        )
        guidance = GuidanceBranches(
            hide=is_text if sampler.text_guidance != 1.0 else None,
            no_image=(
                self.no_image_context(ctx.plan, ctx.text_ids, states)
                if sampler.image_guidance != 1.0
                else None
            ),
        )
        velocity = self.velocity_fn(
            ctx.plan,
            ctx.cache,
            block["noisy"],
            lambda x, t: model.subgoal.embed(x, t, grid),
            model.subgoal.velocity,
            sampler,
            guidance,
        )
        noise = self.noise((1, n_tokens, model.config.latent_token_dim), generator)
        x0 = require_finite(euler_sample(velocity, noise, sampler), "subgoal image", model)
        ctx.layout.append(block["noisy"])
        clean = model.subgoal.embed(x0, torch.zeros(1, device=model.device, dtype=x0.dtype), grid)
        self._append(ctx, block["clean"], clean)
        subgoal = self.decode_image(x0)
        if model.config.subgoal_vit_copy:
            sub_patches, sub_grid = proc.vision(np.asarray(subgoal))
            vit_copy = model.encode_images(sub_patches, [sub_grid])[0]
            self._append(
                ctx, Segment(Modality.VIT, "full", vit_copy.shape[0], False, "subgoal_vit"), vit_copy[None]
            )
        marker = [special.vision_end, special.action_start]
        self._append(ctx, text(marker, "action_start")[0], self._embed_text(marker), marker)
        return subgoal

    def _act(
        self, ctx: _Context, options: GenerationOptions, generator, framed: list[int], states
    ) -> np.ndarray:
        """Denoise the action chunk against the cache, with HALO-style guidance when its scales
        differ from 1; returns robot units.

        The branches match the condition dropout of action-only training samples: no-text sees only
        the observation (cameras and state), no-image is the reactive sample of this step (state,
        plain prompt ``framed``, ``<|action_start|>``) with its cameras dropped.
        """
        model = self.model
        horizon = model.config.action.horizon
        sampler = self.sampler(
            model.config.action_sampler,
            options.action_steps,
            options.action_text_guidance,
            options.action_image_guidance,
        )
        guidance = GuidanceBranches()
        if sampler.text_guidance != 1.0:
            guidance.hide = lambda s: s.role not in OBSERVATION_ROLES
        if sampler.image_guidance != 1.0:
            reactive = trace_layout(
                mode="reactive",
                vit_lengths=[s.length for s in ctx.plan.segments if s.role == "camera"],
                has_state=states is not None,
                framed_instruction=framed,
                special=self.proc.special,
                reasoning=None,
                subgoal_tokens=0,
                subgoal_vit_tokens=0,
                horizon=horizon,
            )
            # Everything before the action chunk, cameras dropped by no_image_context.
            guidance.no_image = self.no_image_context(
                SequencePlan(reactive.segments[:-1]), reactive.text_ids[:-1], states
            )
        segment = action_segment(horizon)
        velocity = self.velocity_fn(
            ctx.plan, ctx.cache, segment, model.action.embed_actions, model.action.velocity, sampler, guidance
        )
        x0 = euler_sample(
            velocity, self.noise((1, horizon, model.config.action.action_dim), generator), sampler
        )
        ctx.layout.append(segment)
        require_finite(x0, "action chunk", model)
        actions = self.proc.decode_actions(x0[0], options.robot)
        # Un-normalising can overflow too (huge statistics); the robot must never see it.
        return require_finite(torch.from_numpy(actions), "action chunk (robot units)", model).numpy()
