"""The modality-switching mask, RoPE positions and packing, checked against a brute-force reference."""

from __future__ import annotations

import random

import pytest
import torch

from emcot.sequence.plan import (
    AttnMode,
    Modality,
    Segment,
    SequencePlan,
    build_attention_mask,
    rope_positions,
)


def reference_mask(modes, lengths, sample_ids):
    """Literal transcription of DESIGN §3, one (q, k) pair at a time."""
    seg_of = []
    for s, n in enumerate(lengths):
        seg_of += [s] * n
    total = len(seg_of)
    mask = torch.zeros(total, total, dtype=torch.bool)
    for q in range(total):
        for k in range(total):
            sq, sk = seg_of[q], seg_of[k]
            if sample_ids[sq] != sample_ids[sk]:
                continue
            if sk < sq and modes[sk] != "noise":
                mask[q, k] = True
            elif sk == sq and (modes[sq] in ("full", "noise") or k <= q):
                mask[q, k] = True
    return mask


def random_plan(rng: random.Random, packed: bool):
    n_segments = rng.randint(1, 7)
    modes = [rng.choice(["causal", "full", "noise"]) for _ in range(n_segments)]
    lengths = [rng.randint(1, 4) for _ in range(n_segments)]
    sample_ids, current = [], 0
    for i in range(n_segments):
        if packed and i > 0 and rng.random() < 0.35:
            current += 1
        sample_ids.append(current)
    return modes, lengths, sample_ids


@pytest.mark.parametrize("packed", [False, True])
def test_mask_matches_brute_force_on_random_plans(packed):
    rng = random.Random(1234 + packed)
    for _ in range(300):
        modes, lengths, sample_ids = random_plan(rng, packed)
        got = build_attention_mask(modes, lengths, sample_ids if packed else None)
        want = reference_mask(modes, lengths, sample_ids if packed else [0] * len(modes))
        assert torch.equal(got, want), (modes, lengths, sample_ids)


def test_mask_truth_table_of_a_trace():
    # prompt(causal 2) | noisy subgoal (2) | clean subgoal (2) | text (1) | noisy actions (2)
    modes = ["causal", "noise", "full", "causal", "noise"]
    lengths = [2, 2, 2, 1, 2]
    m = build_attention_mask(modes, lengths).int()
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0, 0],  # noisy latents: prompt + each other
            [1, 1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 1, 1, 0, 0, 0],  # clean latents never see the noisy ones
            [1, 1, 0, 0, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 1, 1, 1, 1],  # noisy actions see all clean context
            [1, 1, 0, 0, 1, 1, 1, 1, 1],
        ]
    )
    assert torch.equal(m, expected)


def test_sample_ids_per_token_equal_per_segment():
    modes, lengths, seg_ids = ["causal", "full", "causal"], [2, 3, 2], [0, 0, 1]
    per_token = [0, 0, 0, 0, 0, 1, 1]
    assert torch.equal(
        build_attention_mask(modes, lengths, seg_ids), build_attention_mask(modes, lengths, per_token)
    )


def test_mask_input_errors():
    with pytest.raises(ValueError, match="one of each per segment"):
        build_attention_mask(["causal"], [1, 2])
    with pytest.raises(ValueError, match="attention modes are"):
        build_attention_mask(["sideways"], [1])
    with pytest.raises(ValueError, match="one per segment"):
        build_attention_mask(["causal", "full"], [1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match="length 0"):
        build_attention_mask(["causal"], [0])


def test_rope_positions_follow_design():
    segs = [
        Segment(Modality.VIT, AttnMode.FULL, 4),
        Segment(Modality.TEXT, AttnMode.CAUSAL, 3),
        Segment(Modality.LATENT, AttnMode.NOISE, 2),
        Segment(Modality.LATENT, AttnMode.FULL, 2),
        Segment(Modality.TEXT, AttnMode.CAUSAL, 2),
        Segment(Modality.ACTION, AttnMode.NOISE, 3),
    ]
    pos = rope_positions(segs).tolist()
    assert pos == [0] * 4 + [1, 2, 3] + [4, 4] + [4, 4] + [5, 6] + [7, 7, 7]


def test_packing_restarts_positions_and_separates_samples():
    a = SequencePlan([Segment("vit", "full", 2), Segment("text", "causal", 2)])
    b = SequencePlan([Segment("text", "causal", 3)])
    packed = SequencePlan.pack([a, b])
    assert packed.sample_ids == [0, 0, 1]
    assert packed.positions().tolist() == [0, 0, 1, 2, 0, 1, 2]
    mask = packed.layout().mask()
    assert not mask[4:, :4].any() and not mask[:4, 4:].any()
    assert packed.layout().expert.tolist() == [0] * 7


def test_layout_routes_modalities_to_experts():
    plan = SequencePlan(
        [
            Segment("vit", "full", 1),
            Segment("state", "full", 1),
            Segment("text", "causal", 1),
            Segment("latent", "noise", 1),
            Segment("action", "noise", 1),
        ]
    )
    assert plan.layout().expert.tolist() == [0, 2, 0, 1, 2]


def test_key_drop_hides_segments_from_later_queries():
    plan = SequencePlan(
        [Segment("text", "causal", 2), Segment("vit", "full", 2), Segment("latent", "noise", 2)]
    )
    layout = plan.layout()
    drop = torch.tensor([False, False, True, True, False, False])
    rows = layout.mask(query_start=4, key_drop=drop)
    assert rows.shape == (2, 6)
    assert rows[:, :2].all() and not rows[:, 2:4].any() and rows[:, 4:].all()
