"""What the model's multimodal forward takes: per-segment inputs, flow inputs, packed sample batches;
and what its loss returns."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from emcot.sequence.plan import SequencePlan


@dataclass
class SampleBatch:
    """A packed batch. Tensors follow plan order: the k-th ViT grid belongs to the k-th ViT segment, etc.

    ``latent_image_index[j]`` names the row of ``latent_images`` shown by latent segment j (a
    noisy subgoal and its clean copy share one). ``text_loss_positions`` are the token positions
    whose logits predict ``text_loss_targets`` (``vqa_loss_*`` likewise for video-QA answers, the
    ``vqa`` term). ``key_drop`` (bool per token, or None) hides
    condition tokens dropped for guidance training from every other segment.
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
    key_drop: torch.Tensor | None = None
    vqa_loss_positions: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    vqa_loss_targets: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SampleBatch:
        """Move tensors (casting floating ones to ``dtype`` when given)."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(
                    device, dtype=dtype if dtype is not None and value.is_floating_point() else None
                )
            moved[f.name] = value
        return SampleBatch(**moved)

    @property
    def num_tokens(self) -> int:
        """Sequence length of the packed batch."""
        return self.plan.num_tokens


@dataclass
class FlowInput:
    """Tokens of one latent or action segment and their flow time (0 for clean copies)."""

    tokens: torch.Tensor
    t: torch.Tensor

    @classmethod
    def clean(cls, tokens: torch.Tensor) -> FlowInput:
        """A clean copy: the tokens at flow time 0."""
        return cls(tokens, torch.zeros((), device=tokens.device))


@dataclass
class SegmentInputs:
    """The inputs of a plan's segments, per modality and in segment order.

    ``text_ids`` holds the ids of every text segment back to back; ``vit`` the connector output of
    each ViT segment (:meth:`EmCoTModel.encode_images`); ``states`` one row per state segment;
    ``flows`` one :class:`FlowInput` per latent or action segment; ``state_cameras`` (models with
    camera keypoints) per state segment the pixels ``[3, H, W]`` of its sample's primary camera, or
    None where the state has none (:func:`emcot.model.embedding.state_camera_pixels`).
    """

    text_ids: torch.Tensor
    vit: list[torch.Tensor] = field(default_factory=list)
    states: torch.Tensor | None = None
    flows: list[FlowInput] = field(default_factory=list)
    state_cameras: list[torch.Tensor | None] | None = None


@dataclass
class LossOutput:
    """Weighted total loss, each term's mean, and the raw sums/counts for cross-process averaging."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    sums: dict[str, torch.Tensor]
    counts: dict[str, int]
