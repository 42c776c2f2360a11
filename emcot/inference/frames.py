"""Visual generation without a trace: context frames + a prompt → the predicted next frame.

Prediction is prefill + imagine. The plan is :func:`emcot.sequence.layouts.generation_layout`, the
layout stage-1 ``generation`` samples train on: everything before the noisy target is prefilled
into a KV cache once (a :class:`TraceState`), then the target is denoised against it with the
subgoal sampler, through the same helpers a trace uses to imagine its subgoal; guidance branches
mirror the condition dropout of generation samples (:func:`subgoal_guidance`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from emcot.inference.stages import decode_image, imagine_latents, seeded, with_overrides
from emcot.inference.state import TraceState
from emcot.model.embedding import require_latent_codec
from emcot.model.flow import FlowSamplerConfig
from emcot.model.inputs import FlowInput, SegmentInputs
from emcot.sequence.layouts import generation_layout
from emcot.sequence.plan import SequencePlan
from emcot.tokenizers.vision_processing import validate_rgb_uint8

if TYPE_CHECKING:  # handed in; importing them would run policy → inference back
    from emcot.model.modeling import EmCoTModel
    from emcot.policy.processor import EmCoTProcessor

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


class FramePredictor:
    """Predicts the next frame with a model and its processor: :meth:`prefill`, then :meth:`imagine`."""

    def __init__(self, model: EmCoTModel, processor: EmCoTProcessor) -> None:
        self.model = model
        self.proc = processor

    @torch.no_grad()
    def prefill(
        self, frames: Frames, prompt: str, vae_context: bool = True, seed: int | None = None
    ) -> TraceState:
        """Encode frames and prompt as training does and run everything before the target into a cache.

        ``vae_context=False`` leaves out the frames' clean latent copies (a sample whose
        ``vae_context`` is False); ``seed`` seeds the state's generator.
        """
        model, proc = self.model, self.proc
        if model.config.vae is None:
            raise ValueError(
                "predict_frame needs a model with a VAE (config.vae is None); load a policy trained "
                "with subgoal generation"
            )
        images = context_frames(frames)
        prompt = proc.check_instruction(prompt)
        vit_inputs = [proc.vision(image) for image in images]
        grid = model.latent_grid
        framed = proc.check_prompt_length(proc.tokenizer.frame_question(prompt))
        layout = generation_layout(
            vit_lengths=[h * w for _, (h, w) in vit_inputs],
            context_latents=len(images) if vae_context else 0,
            latent_tokens=grid[0] * grid[1],
            framed_prompt=framed,
            special=proc.special,
        )
        rng = seeded(seed)
        started = time.perf_counter()
        # The noisy target is the last segment; imagine adds it to the layout.
        plan = SequencePlan(layout.segments[:-1])
        vit = model.encode_images(torch.cat([p for p, _ in vit_inputs]), [g for _, g in vit_inputs])
        flows = []
        if vae_context:
            codec = require_latent_codec(model)
            pixels = torch.stack([codec.preprocess(image) for image in images]).to(model.device, model.dtype)
            # The posterior mean, as an eval-mode training forward encodes (train mode may sample it).
            tokens, _ = codec.patchify(codec.encode(pixels, sample=False))
            flows = [FlowInput.clean(x) for x in tokens]
        text_ids = layout.text_ids[:-1]
        ids = torch.tensor([t for seg_ids in text_ids for t in seg_ids], dtype=torch.long)
        embeds = model.embed(plan, SegmentInputs(ids, vit, flows=flows))
        return TraceState.prefilled(
            model,
            plan,
            embeds,
            text_ids=text_ids,
            instruction=prompt,
            framed_instruction=framed,
            stage_start=started,
            rng=rng,
        )

    @torch.no_grad()
    def imagine(self, state: TraceState, sampler: FlowSamplerConfig) -> Image.Image:
        """Denoise the target after a prefilled ``state`` with ``sampler`` and decode it."""
        image = decode_image(self.model, imagine_latents(self.model, state, sampler, "predicted frame"))
        state.lap("frame")
        return image

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
        """Prefill, then imagine with ``model.config.subgoal_sampler`` (arguments that are not None override it)."""
        sampler = with_overrides(
            self.model.config.subgoal_sampler,
            steps=steps,
            text_guidance=text_guidance,
            image_guidance=image_guidance,
        )
        return self.imagine(self.prefill(frames, prompt, vae_context, seed), sampler)
