"""Reference for cache-vs-training checks: the teacher-forced forward of a packed batch at a chosen
(x_t, t), embedded exactly as :meth:`EmCoTModel.compute_loss` embeds it."""

from __future__ import annotations

import torch

from emcot.model.inputs import FlowInput, SampleBatch, SegmentInputs
from emcot.sequence.plan import AttnMode, Modality, SequencePlan


@torch.no_grad()
def noisy_velocity(model, batch: SampleBatch, x_t: torch.Tensor, t: float) -> torch.Tensor:
    """Velocity ``[1, n, d]`` the training forward predicts for the batch's single noisy segment,
    fed ``x_t [1, n, d]`` at time ``t``; clean latent copies see their encoded images at t = 0."""
    batch = batch.to(model.device)
    plan = batch.plan
    noisy = [i for i, s in enumerate(plan.segments) if s.mode is AttnMode.NOISE]
    assert len(noisy) == 1, "the reference expects exactly one noisy segment"
    latent_tokens = None
    if batch.latent_images.shape[0]:
        latent_tokens, _ = model.latent_codec.patchify(model.latent_codec.encode(batch.latent_images))
    flows, latent_i, action_i = [], 0, 0
    zero = torch.zeros(())
    for seg in plan.segments:
        if seg.modality is Modality.LATENT:
            clean = latent_tokens[batch.latent_image_index[latent_i]]
            latent_i += 1
        elif seg.modality is Modality.ACTION:
            clean = batch.actions[action_i]
            action_i += 1
        else:
            continue
        noisy_here = seg.mode is AttnMode.NOISE
        flows.append(FlowInput(x_t[0] if noisy_here else clean, torch.tensor(t) if noisy_here else zero))
    vit = model.encode_images(batch.vit_patches, batch.vit_grids)
    embeds = model.embed(plan, SegmentInputs(batch.text_ids, vit, batch.states, flows))
    hidden = model.run_plan(embeds, plan, key_drop=batch.key_drop)[0]
    seg = plan.segments[noisy[0]]
    start = plan.offsets()[noisy[0]]
    rows = hidden[start : start + seg.length][None]
    head = model.subgoal.velocity if seg.modality is Modality.LATENT else model.action.velocity
    return head(rows)


def segment_key_drop(plan: SequencePlan, hidden: list[bool]) -> torch.Tensor:
    """A per-token key-drop mask from one flag per segment."""
    lengths = torch.tensor([s.length for s in plan.segments])
    return torch.repeat_interleave(torch.tensor(hidden), lengths)


def backbone_calls(policy, run) -> int:
    """How many backbone passes ``run()`` makes (guidance branches each cost one per step)."""
    calls = []
    handle = policy.model.backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        run()
    finally:
        handle.remove()
    return len(calls)
