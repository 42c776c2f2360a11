"""`SampleBatch`: the packed, model-ready form of one or more samples (built by the training collator)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from emcot.sequence.plan import SequencePlan


@dataclass
class SampleBatch:
    """A packed batch. Tensors follow plan order: the k-th ViT grid belongs to the k-th ViT segment, etc.

    ``latent_image_index[j]`` names the row of ``latent_images`` shown by latent segment j (a
    noisy subgoal and its clean copy share one). ``text_loss_positions`` are the token positions
    whose logits predict ``text_loss_targets``. ``key_drop`` (bool per token, or None) hides
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
