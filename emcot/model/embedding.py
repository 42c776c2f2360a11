"""Input embeddings of a sequence plan: text through the embedding table, images through the ViT and
connector, states and flow tokens through their experts' input layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from emcot.model.inputs import SegmentInputs
from emcot.sequence.plan import Modality, SequencePlan

if TYPE_CHECKING:
    from emcot.experts.generation import SubgoalIO
    from emcot.model.modeling import EmCoTModel
    from emcot.tokenizers.vae import LatentCodec


def require_subgoal(model: EmCoTModel) -> SubgoalIO:
    """The model's subgoal expert; a clear error for a model built without one (``config.vae`` None)."""
    if model.subgoal is None:
        raise ValueError(
            "this model has no subgoal expert (config.vae is None); it cannot take latent segments"
        )
    return model.subgoal


def require_latent_codec(model: EmCoTModel) -> LatentCodec:
    """The model's subgoal VAE; a clear error for a model built without one (``config.vae`` None)."""
    if model.latent_codec is None:
        raise ValueError(
            "this model has no subgoal VAE (config.vae is None); it cannot encode subgoal images"
        )
    return model.latent_codec


def grid_coords(grid: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every patch of a row-major grid."""
    h, w = grid
    return torch.arange(h, device=device).repeat_interleave(w), torch.arange(w, device=device).repeat(h)


def encode_images(
    model: EmCoTModel, patches: torch.Tensor, grids: list[tuple[int, int]]
) -> list[torch.Tensor]:
    """ViT features through the connector, one tensor per image."""
    if not grids:
        return []
    # The connector exists exactly when the vision encoder does (both follow config.vision).
    connector = model.understanding.connector
    if model.vision is None or connector is None:
        raise ValueError("this model has no vision encoder (config.vision is None); it cannot take images")
    feats = model.vision(patches.to(model.device, model.dtype), grids)
    rows, cols = zip(*(grid_coords(g, feats.device) for g in grids), strict=True)
    out = connector(feats, torch.cat(rows), torch.cat(cols))
    return list(out.split([h * w for h, w in grids]))


def state_camera_pixels(
    model: EmCoTModel,
    plan: SequencePlan,
    patches: torch.Tensor,
    grids: list[tuple[int, int]],
    key_drop: torch.Tensor | None = None,
) -> list[torch.Tensor | None] | None:
    """Per state segment, the pixels ``[3, H, W]`` of its sample's first current camera (role
    ``camera``), which :class:`~emcot.experts.keypoints.CameraKeypoints` reads; None for a state
    without one (history states, a sample without cameras, a camera ``key_drop`` hides). None
    altogether for a model without keypoints. ``patches`` / ``grids`` are the plan's ViT inputs."""
    if model.keypoints is None or model.config.vision is None:
        return None
    from emcot.tokenizers.vision_processing import unpatchify

    patch = model.config.vision.patch_size
    cameras: dict[int, torch.Tensor] = {}
    patch_start, vit_i = 0, 0
    for seg, sample, start in zip(plan.segments, plan.sample_ids, plan.offsets(), strict=True):
        if seg.modality is not Modality.VIT:
            continue
        grid = grids[vit_i]
        count = grid[0] * grid[1]
        hidden = key_drop is not None and bool(key_drop[start : start + seg.length].all())
        if seg.role == "camera" and sample not in cameras and not hidden:
            cameras[sample] = unpatchify(patches[patch_start : patch_start + count], grid, patch)
        patch_start += count
        vit_i += 1
    return [
        cameras.get(sample) if seg.role == "state" else None
        for seg, sample in zip(plan.segments, plan.sample_ids, strict=True)
        if seg.modality is Modality.STATE
    ]


def _keypoint_offsets(model: EmCoTModel, inputs: SegmentInputs) -> list[torch.Tensor | None]:
    """The keypoints' state-token offset ``[H]`` per state segment (None where it has no camera),
    frames of one size batched through the conv stack together."""
    cameras = inputs.state_cameras or []
    out: list[torch.Tensor | None] = [None] * len(cameras)
    if model.keypoints is None:
        return out
    by_size: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
    for i, pixels in enumerate(cameras):
        if pixels is not None:
            by_size.setdefault(tuple(pixels.shape), []).append((i, pixels))
    for group in by_size.values():
        batch = torch.stack([pixels for _, pixels in group]).to(model.device, model.dtype)
        for (i, _), offset in zip(group, model.keypoints(batch), strict=True):
            out[i] = offset
    return out


def embed_plan(model: EmCoTModel, plan: SequencePlan, inputs: SegmentInputs) -> torch.Tensor:
    """Input embeddings ``[1, L, H]`` of ``plan``'s segments, each from its modality's inputs."""
    ids = inputs.text_ids.to(model.device)
    text = model.understanding.embed_tokens(ids) if ids.numel() else None
    parts, t_pos, v_i, s_i, f_i = [], 0, 0, 0, 0
    keypoints = _keypoint_offsets(model, inputs)
    for seg in plan.segments:
        if seg.modality is Modality.TEXT:
            if text is None:
                raise ValueError("the plan has a text segment but inputs.text_ids is empty")
            parts.append(text[t_pos : t_pos + seg.length])
            t_pos += seg.length
        elif seg.modality is Modality.VIT:
            parts.append(inputs.vit[v_i])
            v_i += 1
        elif seg.modality is Modality.STATE:
            if inputs.states is None:
                raise ValueError("the plan has a state segment but inputs.states is None")
            state = inputs.states[s_i : s_i + 1].to(model.device, model.dtype)
            embedded = model.action.embed_state(state)[0]
            offset = keypoints[s_i] if s_i < len(keypoints) else None
            parts.append(embedded if offset is None else embedded + offset)
            s_i += 1
        else:
            flow = inputs.flows[f_i]
            f_i += 1
            x = flow.tokens.to(model.device, model.dtype)[None]
            t = flow.t.reshape(1).to(model.device, model.dtype)
            if seg.modality is Modality.LATENT:
                parts.append(require_subgoal(model).embed(x, t, model.latent_grid)[0])
            else:
                parts.append(model.action.embed_actions(x, t)[0])
    if model.state_aware is not None:
        parts = _re_represent_states(model, plan, parts)
    return torch.cat(parts)[None]


# The vision-language tokens a state token is re-represented against: its sample's current
# cameras and prompt (history frames and generated parts are not "the scene now").
_STATE_CONTEXT_ROLES = ("camera", "prompt")


def _re_represent_states(
    model: EmCoTModel, plan: SequencePlan, parts: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Each current state token (role ``state``) through the state-aware re-representation."""
    assert model.state_aware is not None
    # One pass gathers every sample's context, instead of one scan of the plan per state token.
    context: dict[int, list[torch.Tensor]] = {}
    for part, seg, sample in zip(parts, plan.segments, plan.sample_ids, strict=True):
        if seg.role in _STATE_CONTEXT_ROLES:
            context.setdefault(sample, []).append(part)
    out = list(parts)
    for i, (seg, sample) in enumerate(zip(plan.segments, plan.sample_ids, strict=True)):
        if seg.role == "state" and sample in context:
            out[i] = model.state_aware(parts[i], torch.cat(context[sample]))
    return out
