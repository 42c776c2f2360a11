"""Caches and masks of the multimodal path: cache = no cache, no information leaks, read-only denoising."""

from __future__ import annotations

import pytest
import torch

from emcot.model.inputs import FlowInput, SegmentInputs
from emcot.sequence.layouts import trace_layout
from emcot.sequence.plan import Modality, SequencePlan
from emcot.synthetic.world import build_synthetic_policy, synthetic_samples


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    samples = synthetic_samples(2, seed=5)
    policy = build_synthetic_policy(samples)
    model = policy.model.eval()
    with torch.no_grad():
        # Zero-initialised velocity heads would make every comparison trivially equal.
        for head in (model.subgoal.latent_out, model.action.action_out):
            head.weight.normal_(0, 0.3)
            head.bias.normal_(0, 0.3)
    sample = samples[0]
    proc = policy.processor
    patches, grids = proc.encode_cameras(sample.observation)
    grid = model.latent_grid
    n_lat = grid[0] * grid[1]
    sub_patches, sub_grid = proc.vision(sample.subgoal)
    layout = trace_layout(
        mode="full",
        vit_lengths=[h * w for h, w in grids],
        has_state=True,
        framed_instruction=proc.tokenizer.frame_prompt(sample.instruction),
        special=proc.special,
        reasoning=proc.tokenizer.encode(sample.reasoning),
        subgoal_tokens=n_lat,
        subgoal_vit_tokens=sub_grid[0] * sub_grid[1],
        horizon=model.config.action.horizon,
    )
    gen = torch.Generator().manual_seed(1)
    token_dim = model.config.latent_token_dim
    inputs = dict(
        state=proc.encode_state(sample.observation)[None],
        vit=[*model.encode_images(patches, grids), model.encode_images(sub_patches, [sub_grid])[0]],
        x_latent=torch.randn(n_lat, token_dim, generator=gen),
        x0_latent=torch.randn(n_lat, token_dim, generator=gen),
        x_action=torch.randn(model.config.action.horizon, 4, generator=gen),
        t_latent=torch.tensor(0.63),
        t_action=torch.tensor(0.41),
    )
    return model, layout, inputs, grid


def full_embeds(model, layout, inputs, grid, **changes):
    values = {**inputs, **changes}
    flows = [
        FlowInput(values["x_latent"], values["t_latent"]),
        FlowInput(values["x0_latent"], torch.tensor(0.0)),
        FlowInput(values["x_action"], values["t_action"]),
    ]
    ids = torch.tensor([t for seg_ids in layout.text_ids for t in seg_ids])
    return model.embed(
        SequencePlan(layout.segments), SegmentInputs(ids, values["vit"], values["state"], flows)
    )


@torch.no_grad()
def test_cached_velocities_equal_one_full_forward(setup):
    model, layout, inputs, grid = setup
    plan = SequencePlan(layout.segments)
    hidden = model.run_plan(full_embeds(model, layout, inputs, grid), plan)[0]
    offsets = plan.offsets()
    roles = [s.role for s in plan.segments]
    i_noisy, i_action = roles.index("subgoal_noisy"), roles.index("actions")
    v_sub_full = model.subgoal.velocity(
        hidden[offsets[i_noisy] : offsets[i_noisy] + plan.segments[i_noisy].length]
    )
    v_act_full = model.action.velocity(hidden[offsets[i_action] :])

    # Cached path: everything before the noisy subgoal goes into the cache segment by segment,
    # the noisy queries read it, then the clean copy and markers are appended (noise never cached).
    embeds = full_embeds(model, layout, inputs, grid)[0]
    cache, cached = model.new_cache(), SequencePlan()
    for i, seg in enumerate(plan.segments):
        if seg.role in ("subgoal_noisy", "actions"):
            before = [k.clone() for k in cache.keys]
            query = SequencePlan(cached.segments + [seg])
            out = model.run_plan(
                embeds[offsets[i] : offsets[i] + seg.length][None],
                query,
                len(cached),
                cache,
                write_cache=False,
            )
            assert len(cache) == len(cached) and all(torch.equal(a, b) for a, b in zip(before, cache.keys))
            if seg.role == "subgoal_noisy":
                v_sub_cached = model.subgoal.velocity(out[0])
            else:
                v_act_cached = model.action.velocity(out[0])
            continue
        start = len(cached)
        cached.append(seg)
        model.run_plan(
            embeds[offsets[i] : offsets[i] + seg.length][None], cached, start, cache, write_cache=True
        )
    assert (v_sub_cached - v_sub_full).abs().max() <= 1e-5
    assert (v_act_cached - v_act_full).abs().max() <= 1e-5
    assert v_sub_full.abs().mean() > 1e-3  # the comparison is not between zeros


@torch.no_grad()
def test_noisy_segments_leak_nowhere_and_later_segments_never_reach_back(setup):
    model, layout, inputs, grid = setup
    plan = SequencePlan(layout.segments)
    offsets = plan.offsets()
    roles = [s.role for s in plan.segments]
    base = model.run_plan(full_embeds(model, layout, inputs, grid), plan)[0]

    def changed_rows(**changes):
        out = model.run_plan(full_embeds(model, layout, inputs, grid, **changes), plan)[0]
        return (out - base).abs().amax(-1) > 0

    i_noisy = roles.index("subgoal_noisy")
    noisy = slice(offsets[i_noisy], offsets[i_noisy] + plan.segments[i_noisy].length)
    rows = changed_rows(x_latent=inputs["x_latent"] + 1.0, t_latent=torch.tensor(0.2))
    assert rows[noisy].all()
    rows[noisy] = False
    assert not rows.any(), "a noisy subgoal token influenced a token outside its segment"

    i_clean = roles.index("subgoal_clean")
    rows = changed_rows(x0_latent=inputs["x0_latent"] + 1.0)
    assert not rows[: offsets[i_clean]].any(), "a later segment changed an earlier token"
    assert rows[offsets[i_clean] :].any()

    i_action = roles.index("actions")
    rows = changed_rows(x_action=inputs["x_action"] + 1.0)
    assert not rows[: offsets[i_action]].any() and rows[offsets[i_action] :].all()

    rows = changed_rows(state=inputs["state"] + 1.0)
    i_state = roles.index("state")
    assert not rows[: offsets[i_state]].any(), "the state token reached back into the camera tokens"
    assert rows[offsets[i_state] :].any()


def test_every_modality_goes_to_its_expert(setup):
    _, layout, _, _ = setup
    layout_tokens = SequencePlan(layout.segments).layout()
    for seg, start in zip(layout.segments, SequencePlan(layout.segments).offsets()):
        expert = int(layout_tokens.expert[start])
        expected = {
            Modality.TEXT: 0,
            Modality.VIT: 0,
            Modality.LATENT: 1,
            Modality.STATE: 2,
            Modality.ACTION: 2,
        }
        assert expert == expected[seg.modality]
