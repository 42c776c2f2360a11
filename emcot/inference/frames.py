"""Visual generation without a trace: context frames + a prompt → the predicted next frame.

The plan is :func:`emcot.sequence.layouts.generation_layout`, the layout stage-1 ``generation`` samples
train on. Everything before the noisy target is prefilled into a KV cache once and the target is
denoised against it with the subgoal sampler, through the same helpers a trace uses to imagine its
subgoal; guidance branches mirror the condition dropout of generation samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from emcot.inference.finite import require_finite
from emcot.inference.stages import GuidanceBranches, TraceGenerator, is_text
from emcot.io_utils import check_value
from emcot.model.attention import KVCache
from emcot.model.flow import FlowSamplerConfig, VelocityFn, euler_sample
from emcot.model.inputs import FlowInput, SegmentInputs
from emcot.sequence.layouts import generation_layout
from emcot.sequence.plan import Segment, SequencePlan
from emcot.tokenizers.vision_processing import validate_rgb_uint8

# What the no-image branch drops: training drops the frames' ViT segments (dropout.vit) and their
# clean latent copies (dropout.vae).
IMAGE_ROLES = ("camera", "context_latent")

Frames = np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]


def context_frames(frames: Frames) -> list[np.ndarray]:
    """The context frames in order: one array, a list of arrays, or a name → array dict (its order)."""
    if isinstance(frames, np.ndarray):
        named = [("frame 0", frames)]
    elif isinstance(frames, Mapping):
        named = [(f"frame {name!r}", frame) for name, frame in frames.items()]
    elif isinstance(frames, Sequence) and not isinstance(frames, str):
        named = [(f"frame {i}", frame) for i, frame in enumerate(frames)]
    else:
        raise ValueError(
            "frames must be a uint8 (H, W, 3) array, a list of them or a dict like Observation.images; "
            f"got {type(frames).__name__}"
        )
    if not named:
        raise ValueError("predict_frame needs at least one context frame")
    for what, frame in named:
        validate_rgb_uint8(frame, what=what)
    return [frame for _, frame in named]


@dataclass
class FrameContext:
    """A prefilled prediction: the cached plan (everything before the noisy target), its KV cache,
    the text ids of each cached segment, and the noisy target segment."""

    plan: SequencePlan
    cache: KVCache
    text_ids: list[list[int]]
    target: Segment


class FramePredictor:
    """Predicts the next frame with a :class:`TraceGenerator`'s model, processor and denoising helpers."""

    def __init__(self, generator: TraceGenerator) -> None:
        self.gen = generator
        self.last_layout: SequencePlan | None = None

    @torch.no_grad()
    def prefill(self, frames: Frames, prompt: str, vae_context: bool = True) -> FrameContext:
        """Encode frames and prompt as training does and run everything before the target into a cache.

        ``vae_context=False`` leaves out the frames' clean latent copies (a sample whose metadata
        sets ``vae_context`` to False).
        """
        model, proc = self.gen.model, self.gen.proc
        if model.config.vae is None:
            raise ValueError(
                "predict_frame needs a model with a VAE (config.vae is None); load a policy trained "
                "with subgoal generation"
            )
        images = context_frames(frames)
        prompt = proc.check_instruction(prompt)
        vit_inputs = [proc.vision(image) for image in images]
        grid = model.latent_grid
        layout = generation_layout(
            vit_lengths=[h * w for _, (h, w) in vit_inputs],
            context_latents=len(images) if vae_context else 0,
            latent_tokens=grid[0] * grid[1],
            framed_prompt=proc.check_prompt_length(proc.tokenizer.frame_question(prompt)),
            special=proc.special,
        )
        *cached, target = layout.segments
        plan = SequencePlan(cached)
        vit = model.encode_images(torch.cat([p for p, _ in vit_inputs]), [g for _, g in vit_inputs])
        flows = []
        if vae_context:
            codec = model.latent_codec
            pixels = torch.stack([codec.preprocess(image) for image in images]).to(model.device, model.dtype)
            # The posterior mean, as an eval-mode training forward encodes (train mode may sample it).
            tokens, _ = codec.patchify(codec.encode(pixels, sample=False))
            flows = [FlowInput.clean(x) for x in tokens]
        text_ids = layout.text_ids[:-1]
        ids = torch.tensor([t for seg_ids in text_ids for t in seg_ids], dtype=torch.long)
        embeds = model.embed(plan, SegmentInputs(ids, vit, flows=flows))
        cache = model.new_cache()
        model.run_plan(embeds, plan, 0, cache, write_cache=True)
        self.last_layout = SequencePlan(list(layout.segments))
        return FrameContext(plan, cache, text_ids, target)

    def velocity(self, ctx: FrameContext, sampler: FlowSamplerConfig) -> VelocityFn:
        """The target's velocity against the cache, with a guidance branch per scale that is not 1.

        No-text hides the prompt and the ``<|vision_start|>`` marker; no-image is a separate cache
        without the frames' ViT segments and clean latent copies.
        """
        gen, model = self.gen, self.gen.model
        grid = model.latent_grid
        guidance = GuidanceBranches(
            hide=is_text if sampler.text_guidance != 1.0 else None,
            no_image=(
                gen.no_image_context(ctx.plan, ctx.text_ids, None, drop=IMAGE_ROLES)
                if sampler.image_guidance != 1.0
                else None
            ),
        )
        return gen.velocity_fn(
            ctx.plan,
            ctx.cache,
            ctx.target,
            lambda x, t: model.subgoal.embed(x, t, grid),
            model.subgoal.velocity,
            sampler,
            guidance,
        )

    @torch.no_grad()
    def predict(
        self,
        frames: Frames,
        prompt: str,
        *,
        seed: int | None = None,
        steps: int | None = None,
        text_guidance: float | None = None,
        image_guidance: float | None = None,
        vae_context: bool = True,
    ) -> Image.Image:
        """Denoise the next frame with ``model.config.subgoal_sampler`` (arguments that are not None override it)."""
        gen, model = self.gen, self.gen.model
        sampler = gen.sampler(model.config.subgoal_sampler, steps, text_guidance, image_guidance)
        ctx = self.prefill(frames, prompt, vae_context)
        seed = check_value("seed", seed, int | None)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        noise = gen.noise((1, ctx.target.length, model.config.latent_token_dim), generator)
        x0 = euler_sample(self.velocity(ctx, sampler), noise, sampler)
        return gen.decode_image(require_finite(x0, "predicted frame", model))
