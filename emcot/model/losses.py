"""The teacher-forced training loss of a packed batch: cross-entropy, subgoal MSE and action L1
(and the video-QA cross-entropy ``vqa`` of memory-enabled models)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from emcot.model.attention import BACKENDS
from emcot.model.backbone import PreparedQuery
from emcot.model.embedding import (
    embed_plan,
    encode_images,
    require_latent_codec,
    require_subgoal,
    state_camera_pixels,
)
from emcot.model.flow import interpolate, sample_time, velocity_target
from emcot.model.inputs import FlowInput, LossOutput, SampleBatch, SegmentInputs
from emcot.sequence.plan import AttnMode, Modality, Segment

if TYPE_CHECKING:
    from emcot.config import EmCoTConfig
    from emcot.model.modeling import EmCoTModel


def _flow_inputs(
    model: EmCoTModel, batch: SampleBatch, generator: torch.Generator | None
) -> tuple[list[FlowInput], list[torch.Tensor | None]]:
    """One flow input per latent/action segment, and the velocity target of each noisy one.

    Noisy segments get ``x_t = (1−t)·x0 + t·ε`` with t from the configured distributions; clean
    copies see ``x0`` at t = 0.
    """
    cfg, device = model.config.loss, model.device
    latent_tokens = None
    if batch.latent_images.shape[0]:
        codec = require_latent_codec(model)
        with torch.no_grad():
            latents = codec.encode(batch.latent_images.to(model.dtype), generator=generator)
            latent_tokens, _ = codec.patchify(latents)
    flows: list[FlowInput] = []
    targets: list[torch.Tensor | None] = []
    latent_i = action_i = 0
    for seg in batch.plan.segments:
        if seg.modality is Modality.LATENT:
            if latent_tokens is None:
                raise ValueError("the plan has a latent segment but the batch has no latent_images")
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
            eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            flows.append(FlowInput(interpolate(x0[None], eps[None], t[None])[0], t))
            targets.append(velocity_target(x0, eps))
        else:
            flows.append(FlowInput(x0, torch.zeros((), device=device)))
            targets.append(None)
    return flows, targets


def _flow_loss(
    model: EmCoTModel, seg: Segment, rows: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None
) -> tuple[torch.Tensor, int]:
    """(sum, count) of one noisy segment's velocity loss."""
    if seg.modality is Modality.LATENT:
        subgoal = require_subgoal(model)
        return subgoal.loss(subgoal.velocity(rows), target)
    assert pad is not None  # compute_loss passes every action segment its action_pad row
    return model.action.loss(
        model.action.velocity(rows), target, model.config.loss.action_loss, (~pad).float()
    )


@dataclass
class _Prepared:
    """One batch ready for the backbone: its embeddings, key drops and flow targets."""

    batch: SampleBatch
    embeds: torch.Tensor
    key_drop: torch.Tensor | None
    targets: list[torch.Tensor | None]


def _prepare(model: EmCoTModel, batch: SampleBatch, generator: torch.Generator | None) -> _Prepared:
    batch = batch.to(model.device)
    flows, targets = _flow_inputs(model, batch, generator)
    key_drop = batch.key_drop if batch.key_drop is not None and bool(batch.key_drop.any()) else None
    inputs = SegmentInputs(
        batch.text_ids,
        encode_images(model, batch.vit_patches, batch.vit_grids),
        batch.states,
        flows,
        # A camera hidden for guidance training is hidden from the keypoints as well.
        state_camera_pixels(model, batch.plan, batch.vit_patches, batch.vit_grids, key_drop),
    )
    embeds = embed_plan(model, batch.plan, inputs)
    return _Prepared(batch, embeds, key_drop, targets)


def _loss_sums(
    model: EmCoTModel, prepared: _Prepared, hidden: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Summed loss terms and element counts of one batch from its final hidden states ``[L, H]``."""
    batch, plan = prepared.batch, prepared.batch.plan
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    if batch.text_loss_positions.numel():
        logits = model.understanding.logits(hidden[batch.text_loss_positions])
        sums["text"], counts["text"] = model.understanding.loss(logits, batch.text_loss_targets)
    if batch.vqa_loss_positions.numel():
        logits = model.understanding.logits(hidden[batch.vqa_loss_positions])
        sums["vqa"], counts["vqa"] = model.understanding.loss(logits, batch.vqa_loss_targets)
    flow_i = action_i = 0
    for seg, start in zip(plan.segments, plan.offsets(), strict=True):
        if seg.modality not in (Modality.LATENT, Modality.ACTION):
            continue
        target = prepared.targets[flow_i]
        flow_i += 1
        pad = None
        if seg.modality is Modality.ACTION:
            pad = batch.action_pad[action_i]
            action_i += 1
        if target is None or not seg.loss:
            continue
        s, n = _flow_loss(model, seg, hidden[start : start + seg.length], target, pad)
        key = "subgoal" if seg.modality is Modality.LATENT else "action"
        sums[key] = sums.get(key, 0) + s
        counts[key] = counts.get(key, 0) + n
    return sums, counts


def _weighted(model: EmCoTModel, sums: dict[str, torch.Tensor], counts: dict[str, int]) -> LossOutput:
    weights = model.config.loss.weights
    terms = {k: sums[k] / max(counts[k], 1) for k in sums}
    total = sum(weights[k] * terms[k] for k in terms)
    return LossOutput(loss=total, terms=terms, sums=sums, counts=counts)


def compute_loss(
    model: EmCoTModel, batch: SampleBatch, generator: torch.Generator | None = None
) -> LossOutput:
    """Teacher-forced forward of a packed batch and its weighted loss terms."""
    prepared = _prepare(model, batch, generator)
    hidden = model.run_plan(prepared.embeds, batch.plan, key_drop=prepared.key_drop)[0]
    return _weighted(model, *_loss_sums(model, prepared, hidden))


def compute_padded_loss(
    model: EmCoTModel, batches: Sequence[SampleBatch], generator: torch.Generator | None = None
) -> LossOutput:
    """The loss of several batches run as one ``[B, L]`` padded batch (one row per batch).

    Each row keeps its own plan's mask, positions and experts; padding tokens attend only to
    themselves and no row sees another. The terms equal :func:`compute_loss` of the rows packed
    into one sequence. This is the layout padded-batch trainers use; packing (one row, no padding)
    is what emcot trains with, and ``bench/train_throughput.py`` measures both.
    """
    if not batches:
        raise ValueError("compute_padded_loss needs at least one batch")
    backend = model.attention_backend
    if not BACKENDS[backend].per_row_masks:
        raise ValueError(
            f"padded batches need per-row masks, which the {backend.value} backend lacks; use sdpa or eager"
        )
    rows = [_prepare(model, batch, generator) for batch in batches]
    lengths = [row.embeds.shape[1] for row in rows]
    width, device = max(lengths), model.device
    embeds = torch.zeros(
        len(rows), width, rows[0].embeds.shape[-1], dtype=rows[0].embeds.dtype, device=device
    )
    experts = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    positions = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.eye(width, dtype=torch.bool, device=device).repeat(len(rows), 1, 1)
    for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        query = model.prepare_query(row.batch.plan, key_drop=row.key_drop, device=device)
        embeds[i, :n] = row.embeds[0]
        experts[i, :n], positions[i, :n] = query.experts, query.positions
        mask[i, :n, :n] = query.mask
    padded = PreparedQuery(query_start=0, experts=experts, positions=positions, mask=mask)
    hidden = model.run_prepared(embeds, padded)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        row_sums, row_counts = _loss_sums(model, row, hidden[i, :n])
        for key in row_sums:
            sums[key] = sums.get(key, 0) + row_sums[key]
            counts[key] = counts.get(key, 0) + row_counts[key]
    return _weighted(model, sums, counts)


def loss_counts(config: EmCoTConfig, batch: SampleBatch) -> dict[str, int]:
    """The element counts :func:`compute_loss` will normalise by, known before the forward pass.

    A trainer sums them over micro-batches and processes first, so every loss term is a mean over
    the whole global batch however it is split.
    """
    counts: dict[str, int] = {}
    if batch.text_loss_targets.numel():
        counts["text"] = int(batch.text_loss_targets.numel())
    if batch.vqa_loss_targets.numel():
        counts["vqa"] = int(batch.vqa_loss_targets.numel())
    action_i = 0
    for seg in batch.plan.segments:
        if seg.modality is Modality.ACTION:
            pad = batch.action_pad[action_i]
            action_i += 1
            if seg.mode is AttnMode.NOISE and seg.loss:
                counts["action"] = counts.get("action", 0) + int((~pad).sum()) * config.action.action_dim
        elif seg.modality is Modality.LATENT and seg.mode is AttnMode.NOISE and seg.loss:
            counts["subgoal"] = counts.get("subgoal", 0) + seg.length * config.latent_token_dim
    return counts
