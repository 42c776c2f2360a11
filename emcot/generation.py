"""Trace generation with caches (DESIGN §5): prefix once, reasoning token by token, then flow stages.

Denoising steps read the KV cache but never write it; only finished segments (reasoning tokens,
the clean subgoal, markers) are appended.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from emcot.flow import FlowSamplerConfig, GuidedVelocity, euler_sample, guidance_active
from emcot.planner import action_segment, check_mode, observation_segments, prompt_ids, subgoal_segments, text
from emcot.processor import EmCoTProcessor
from emcot.sampling import next_token
from emcot.sequence import Modality, Segment, SequencePlan
from emcot.trace import Trace, TraceEvent
from emcot.trace_forward import embed_segments, embed_vit, latent_grid_of


@dataclass
class GenerationOptions:
    """Per-call knobs of :meth:`EmCoTPolicy.generate_trace`; defaults are saved with the policy."""

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
    robot: str | None = None

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.max_reasoning_tokens < 1:
            raise ValueError(f"max_reasoning_tokens must be ≥ 1, got {self.max_reasoning_tokens}")

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


class TraceGenerator:
    """Runs one policy step: observation + instruction → streamed :class:`TraceEvent` s."""

    def __init__(self, model, processor: EmCoTProcessor) -> None:
        self.model = model
        self.proc = processor

    def _noise(self, shape, generator) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(self.model.device, self.model.dtype)

    def _sampler(
        self, base: FlowSamplerConfig, steps: int | None, text_g: float | None, image_g: float | None
    ):
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

    def _velocity_fn(self, plan, cache, segment, embed, head, sampler, contexts):
        """Velocity at (x_t, t) for a noisy segment after ``plan``, with optional guidance branches.

        Each branch's mask and positions are prepared once; every Euler step only embeds and runs.
        """
        model = self.model
        query_plan = SequencePlan(plan.segments + [segment])
        start = len(plan)
        branches = {"cond": (model.prepare_query(query_plan, start), cache)}
        if contexts.get("no_text"):
            layout = query_plan.layout(model.device)
            is_text = torch.tensor(
                [s.modality is Modality.TEXT for s in query_plan.segments], device=model.device
            )
            text_drop = is_text[layout.segment] & (torch.arange(len(query_plan), device=model.device) < start)
            branches["no_text"] = (model.prepare_query(query_plan, start, text_drop), cache)
        if "no_image" in contexts:
            image_plan, image_cache = contexts["no_image"]
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

    def _no_image_context(self, plan: SequencePlan, text_ids: list[list[int]], states: torch.Tensor | None):
        """A separate cache of the plan without camera images (for image guidance)."""
        keep = [i for i, s in enumerate(plan.segments) if s.role != "camera"]
        ctx = SequencePlan([plan.segments[i] for i in keep])
        ids = torch.tensor([t for i in keep for t in text_ids[i]], dtype=torch.long, device=self.model.device)
        embeds = embed_segments(self.model, ctx.segments, ids, [], states, [], latent_grid_of(self.model))
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
        prompt_seg, ids = text(prompt_ids(proc.tokenizer.frame_prompt(instruction), mode, special), "prompt")
        ctx = _Context(SequencePlan(), model.new_cache(), [], [])
        prefix = SequencePlan(obs_segments + [prompt_seg])
        vit = embed_vit(model, patches.to(model.device), grids)
        embeds = embed_segments(
            model,
            prefix.segments,
            torch.tensor(ids, device=model.device),
            vit,
            states,
            [],
            latent_grid_of(model),
        )
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

        actions = self._act(ctx, options, generator)
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

    def _imagine(self, ctx: _Context, options: GenerationOptions, states, generator):
        """Denoise the subgoal latents against the cache, then append its clean latent and ViT copies."""
        model, proc, special = self.model, self.proc, self.proc.special
        marker = [special.vision_start]
        self._append(ctx, text(marker, "vision_start")[0], self._embed_text(marker), marker)
        grid = latent_grid_of(model)
        n_tokens = grid[0] * grid[1]
        block = subgoal_segments(n_tokens, 0)
        sampler = self._sampler(
            model.config.subgoal_sampler, options.subgoal_steps, options.text_guidance, options.image_guidance
        )
        contexts = {"no_text": sampler.text_guidance != 1.0}
        if sampler.image_guidance != 1.0:
            contexts["no_image"] = self._no_image_context(ctx.plan, ctx.text_ids, states)
        velocity = self._velocity_fn(
            ctx.plan,
            ctx.cache,
            block["noisy"],
            lambda x, t: model.subgoal.embed(x, t, grid),
            model.subgoal.velocity,
            sampler,
            contexts,
        )
        noise = self._noise((1, n_tokens, model.subgoal.latent_in.in_features), generator)
        x0 = euler_sample(velocity, noise, sampler)
        ctx.layout.append(block["noisy"])
        clean = model.subgoal.embed(x0, torch.zeros(1, device=model.device, dtype=x0.dtype), grid)
        self._append(ctx, block["clean"], clean)
        image = model.latent_codec.decode(model.latent_codec.unpatchify(x0, grid))[0]
        subgoal = model.latent_codec.postprocess(image.float())
        if model.config.subgoal_vit_copy:
            sub_patches, sub_grid = proc.vision(np.asarray(subgoal))
            vit_copy = embed_vit(model, sub_patches.to(model.device), [sub_grid])[0]
            self._append(
                ctx, Segment(Modality.VIT, "full", vit_copy.shape[0], False, "subgoal_vit"), vit_copy[None]
            )
        marker = [special.vision_end, special.action_start]
        self._append(ctx, text(marker, "action_start")[0], self._embed_text(marker), marker)
        return subgoal

    def _act(self, ctx: _Context, options: GenerationOptions, generator) -> np.ndarray:
        """Denoise the action chunk against the cache; returns robot units."""
        model = self.model
        horizon = model.config.action.horizon
        sampler = self._sampler(model.config.action_sampler, options.action_steps, None, None)
        segment = action_segment(horizon)
        velocity = self._velocity_fn(
            ctx.plan, ctx.cache, segment, model.action.embed_actions, model.action.velocity, sampler, {}
        )
        x0 = euler_sample(
            velocity, self._noise((1, horizon, model.config.action.action_dim), generator), sampler
        )
        ctx.layout.append(segment)
        return self.proc.decode_actions(x0[0], options.robot)
