"""Samples → packed `TraceBatch`: one sequence holding several samples, with everything the forward needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from PIL import Image

from emcot.planner import TraceLayout, trace_layout
from emcot.processor import EmCoTProcessor
from emcot.sequence import Modality, SequencePlan
from emcot.types import EmCoTSample


@dataclass
class TraceBatch:
    """A packed batch. Tensors follow plan order: the k-th ViT grid belongs to the k-th ViT segment, etc.

    ``latent_image_index[j]`` names the row of ``latent_images`` shown by latent segment j (a
    noisy subgoal and its clean copy share one). ``text_loss_positions`` are the token positions
    whose logits predict ``text_loss_targets``.
    """

    plan: SequencePlan
    text_ids: torch.Tensor
    vit_patches: torch.Tensor
    vit_grids: list[tuple[int, int]]
    states: torch.Tensor
    latent_images: torch.Tensor
    latent_image_index: list[int]
    actions: torch.Tensor
    action_pad: torch.Tensor
    text_loss_positions: torch.Tensor
    text_loss_targets: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TraceBatch:
        """Move tensors (casting floating ones to ``dtype`` when given)."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(
                    device, dtype=dtype if dtype is not None and value.is_floating_point() else None
                )
            moved[f.name] = value
        return TraceBatch(**moved)

    @property
    def num_tokens(self) -> int:
        """Sequence length of the packed batch."""
        return self.plan.num_tokens


def sample_mode(sample: EmCoTSample) -> str:
    """``full`` with reasoning and subgoal, ``reason`` with reasoning only, else ``reactive``."""
    if sample.reasoning is None:
        return "reactive"
    return "full" if sample.subgoal is not None else "reason"


def resize_uint8(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a uint8 RGB image (no-op when already that size)."""
    if image.shape[:2] == tuple(size_hw):
        return image
    return np.asarray(Image.fromarray(image).resize((size_hw[1], size_hw[0]), Image.Resampling.BICUBIC))


class TraceCollator:
    """Turns :class:`EmCoTSample` lists into packed :class:`TraceBatch` es with the shared planner."""

    def __init__(self, processor: EmCoTProcessor) -> None:
        self.processor = processor
        config = processor.config
        if config.vae is None:
            self.latent_grid = (0, 0)
        else:
            ds, p = config.vae.downsample, config.vae.patch_size
            h, w = config.vae.image_size
            self.latent_grid = (h // ds // p, w // ds // p)

    def layout_for(
        self, sample: EmCoTSample, mode: str, vit_lengths: list[int], subgoal_vit: int
    ) -> TraceLayout:
        """The sample's segments (the same function generation follows)."""
        proc = self.processor
        reasoning = proc.tokenizer.encode(sample.reasoning) if sample.reasoning is not None else None
        return trace_layout(
            mode=mode,
            vit_lengths=vit_lengths,
            has_state=proc.config.action.state_dim > 0,
            framed_instruction=proc.tokenizer.frame_prompt(proc.check_instruction(sample.instruction)),
            special=proc.special,
            reasoning=reasoning,
            subgoal_tokens=self.latent_grid[0] * self.latent_grid[1],
            subgoal_vit_tokens=subgoal_vit,
            horizon=proc.config.action.horizon,
        )

    def __call__(self, samples: Sequence[EmCoTSample]) -> TraceBatch:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        proc, config = self.processor, self.processor.config
        plans, text_ids, vit_patches, vit_grids, states = [], [], [], [], []
        latent_images, latent_index, actions, pads = [], [], [], []
        for sample in samples:
            mode = sample_mode(sample)
            if mode == "full" and config.vae is None:
                raise ValueError("sample has a subgoal image but the model has no VAE (config.vae is None)")
            proc.validate_observation(sample.observation)
            if sample.actions is None:
                raise ValueError(
                    "trace samples need an action chunk; VQA samples go through the VQA collator"
                )
            patches, grids = proc.encode_cameras(sample.observation)
            vit_patches.append(patches)
            vit_grids += grids
            subgoal_vit = 0
            if mode == "full":
                subgoal = resize_uint8(np.asarray(sample.subgoal), config.vae.image_size)
                latent_images.append(proc_latent(subgoal))
                latent_index += [len(latent_images) - 1] * 2
                if config.subgoal_vit_copy:
                    sub_patches, sub_grid = proc.vision(subgoal)
                    subgoal_vit = sub_grid[0] * sub_grid[1]
            layout = self.layout_for(sample, mode, [h * w for h, w in grids], subgoal_vit)
            if mode == "full" and config.subgoal_vit_copy:
                vit_patches.append(sub_patches)
                vit_grids.append(sub_grid)
            state = proc.encode_state(sample.observation, sample.robot)
            if state is not None:
                states.append(state)
            actions.append(proc.encode_actions(sample.actions, sample.robot))
            pad = sample.metadata.get("is_pad")
            pads.append(
                torch.as_tensor(pad, dtype=torch.bool)
                if pad is not None
                else torch.zeros(len(sample.actions), dtype=torch.bool)
            )
            plans.append(SequencePlan(layout.segments))
            text_ids.append(layout.text_ids)
        return self._pack(
            plans, text_ids, vit_patches, vit_grids, states, latent_images, latent_index, actions, pads
        )

    def _pack(
        self, plans, text_ids, vit_patches, vit_grids, states, latent_images, latent_index, actions, pads
    ):
        plan = SequencePlan.pack(plans)
        flat_ids, loss_pos, loss_tgt = [], [], []
        offset = 0
        for segment, ids in zip(plan.segments, (ids for per_sample in text_ids for ids in per_sample)):
            if segment.modality is Modality.TEXT:
                flat_ids += ids
                if segment.loss:
                    loss_pos += range(offset - 1, offset + segment.length - 1)
                    loss_tgt += ids
            offset += segment.length
        config = self.processor.config
        vit_dim = config.vision.patch_dim
        image_hw = config.vae.image_size if config.vae is not None else (1, 1)
        return TraceBatch(
            plan=plan,
            text_ids=torch.tensor(flat_ids, dtype=torch.long),
            vit_patches=torch.cat(vit_patches) if vit_patches else torch.zeros(0, vit_dim),
            vit_grids=vit_grids,
            states=torch.stack(states) if states else torch.zeros(0, config.action.state_dim),
            latent_images=torch.stack(latent_images) if latent_images else torch.zeros(0, 3, *image_hw),
            latent_image_index=latent_index,
            actions=torch.stack(actions),
            action_pad=torch.stack(pads),
            text_loss_positions=torch.tensor(loss_pos, dtype=torch.long),
            text_loss_targets=torch.tensor(loss_tgt, dtype=torch.long),
        )


def proc_latent(image: np.ndarray) -> torch.Tensor:
    """uint8 image (already at the VAE's size) → float tensor [3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1.0
