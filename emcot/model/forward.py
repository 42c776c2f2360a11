"""Multimodal forward passes: embedding a plan's tokens, and the three training losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from emcot.model.flow import interpolate, sample_time, velocity_target
from emcot.model.inputs import SampleBatch
from emcot.sequence.plan import AttnMode, Modality, Segment


@dataclass
class FlowInput:
    """Tokens of one latent or action segment and their flow time (0 for clean copies)."""

    tokens: torch.Tensor
    t: torch.Tensor


@dataclass
class LossOutput:
    """Weighted total loss, each term's mean, and the raw sums/counts for cross-process averaging."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    sums: dict[str, torch.Tensor]
    counts: dict[str, int]


def grid_coords(grid: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every patch of a row-major grid."""
    h, w = grid
    return torch.arange(h, device=device).repeat_interleave(w), torch.arange(w, device=device).repeat(h)


def embed_vit(model, patches: torch.Tensor, grids: list[tuple[int, int]]) -> list[torch.Tensor]:
    """ViT features through the connector, one tensor per image."""
    if not grids:
        return []
    feats = model.vision(patches.to(model.dtype), grids)
    rows, cols = zip(*(grid_coords(g, feats.device) for g in grids))
    out = model.understanding.connector(feats, torch.cat(rows), torch.cat(cols))
    return list(out.split([h * w for h, w in grids]))


def embed_segments(
    model,
    segments: list[Segment],
    text_ids: torch.Tensor,
    vit: list[torch.Tensor],
    states: torch.Tensor,
    flows: list[FlowInput],
    latent_grid: tuple[int, int],
) -> torch.Tensor:
    """Input embeddings ``[1, L, H]`` of ``segments`` from per-modality inputs in segment order.

    ``vit`` holds connector outputs per ViT segment; ``flows`` one :class:`FlowInput` per latent
    or action segment.
    """
    text = model.understanding.embed_tokens(text_ids) if text_ids.numel() else None
    parts, t_pos, v_i, s_i, f_i = [], 0, 0, 0, 0
    for seg in segments:
        if seg.modality is Modality.TEXT:
            parts.append(text[t_pos : t_pos + seg.length])
            t_pos += seg.length
        elif seg.modality is Modality.VIT:
            parts.append(vit[v_i])
            v_i += 1
        elif seg.modality is Modality.STATE:
            parts.append(model.action.embed_state(states[s_i : s_i + 1].to(model.dtype))[0])
            s_i += 1
        else:
            flow = flows[f_i]
            f_i += 1
            x, t = flow.tokens.to(model.dtype)[None], flow.t.reshape(1).to(model.dtype)
            if seg.modality is Modality.LATENT:
                parts.append(model.subgoal.embed(x, t, latent_grid)[0])
            else:
                parts.append(model.action.embed_actions(x, t)[0])
    return torch.cat(parts)[None]


def latent_grid_of(model) -> tuple[int, int]:
    """Token grid of one subgoal image."""
    vae = model.config.vae
    if vae is None:
        return (0, 0)
    ds, p = vae.downsample, vae.patch_size
    return (vae.image_size[0] // ds // p, vae.image_size[1] // ds // p)


def compute_losses(model, batch: SampleBatch, generator: torch.Generator | None = None) -> LossOutput:
    """Teacher-forced forward of a packed batch: cross-entropy, subgoal MSE and action L1.

    Noisy segments get ``x_t = (1−t)·x0 + t·ε`` with t from the configured distributions; clean
    copies see ``x0`` at t = 0.
    """
    cfg, device = model.config.loss, model.device
    batch = batch.to(device)
    plan = batch.plan
    latent_tokens = None
    if batch.latent_images.shape[0]:
        with torch.no_grad():
            latents = model.latent_codec.encode(batch.latent_images.to(model.dtype), generator=generator)
            latent_tokens, _ = model.latent_codec.patchify(latents)

    def noise_like(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    flows, targets = [], []
    latent_i = action_i = 0
    for seg in plan.segments:
        if seg.modality is Modality.LATENT:
            x0 = latent_tokens[batch.latent_image_index[latent_i]]
            latent_i += 1
            dist, shift = cfg.subgoal_time_distribution, cfg.subgoal_time_shift
        elif seg.modality is Modality.ACTION:
            x0 = batch.actions[action_i]
            action_i += 1
            dist, shift = cfg.action_time_distribution, cfg.action_time_shift
        else:
            continue
        if seg.mode is AttnMode.NOISE:
            t = sample_time(1, distribution=dist, shift=shift, generator=generator).to(device)[0]
            eps = noise_like(x0)
            flows.append(FlowInput(interpolate(x0[None], eps[None], t[None])[0], t))
            targets.append(velocity_target(x0, eps))
        else:
            flows.append(FlowInput(x0, torch.zeros((), device=device)))
            targets.append(None)

    vit = embed_vit(model, batch.vit_patches, batch.vit_grids)
    embeds = embed_segments(
        model, plan.segments, batch.text_ids, vit, batch.states, flows, latent_grid_of(model)
    )
    key_drop = batch.key_drop if batch.key_drop is not None and bool(batch.key_drop.any()) else None
    hidden = model.run_plan(embeds, plan, key_drop=key_drop)[0]

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    if batch.text_loss_positions.numel():
        logits = model.understanding.logits(hidden[batch.text_loss_positions])
        sums["text"], counts["text"] = model.understanding.loss(logits, batch.text_loss_targets)
    flow_i, action_i = 0, 0
    offsets = plan.offsets()
    for seg, start in zip(plan.segments, offsets):
        if seg.modality not in (Modality.LATENT, Modality.ACTION):
            continue
        target = targets[flow_i]
        flow_i += 1
        if seg.modality is Modality.ACTION:
            pad = batch.action_pad[action_i]
            action_i += 1
        if target is None or not seg.loss:
            continue
        rows = hidden[start : start + seg.length]
        if seg.modality is Modality.LATENT:
            s, n = model.subgoal.loss(model.subgoal.velocity(rows), target)
            key = "subgoal"
        else:
            s, n = model.action.loss(model.action.velocity(rows), target, cfg.action_loss, (~pad).float())
            key = "action"
        sums[key] = sums.get(key, 0) + s
        counts[key] = counts.get(key, 0) + n
    weights = {"text": cfg.text_weight, "subgoal": cfg.subgoal_weight, "action": cfg.action_weight}
    terms = {k: sums[k] / max(counts[k], 1) for k in sums}
    total = sum(weights[k] * terms[k] for k in terms)
    return LossOutput(loss=total, terms=terms, sums=sums, counts=counts)


def loss_counts(batch: SampleBatch, config) -> dict[str, int]:
    """The element counts :func:`compute_losses` will normalise by, known before the forward pass.

    A trainer sums them over micro-batches and processes first, so every loss term is a mean over
    the whole global batch however it is split.
    """
    counts: dict[str, int] = {}
    if batch.text_loss_targets.numel():
        counts["text"] = int(batch.text_loss_targets.numel())
    action_i = 0
    for seg in batch.plan.segments:
        if seg.modality is Modality.ACTION:
            pad = batch.action_pad[action_i]
            action_i += 1
            if seg.mode is AttnMode.NOISE and seg.loss:
                counts["action"] = counts.get("action", 0) + int((~pad).sum()) * config.action.action_dim
        elif seg.modality is Modality.LATENT and seg.mode is AttnMode.NOISE and seg.loss:
            token_dim = config.vae.latent_channels * config.vae.patch_size**2
            counts["subgoal"] = counts.get("subgoal", 0) + seg.length * token_dim
    return counts
