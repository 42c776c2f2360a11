"""Sample kinds share the planner; packing fills token budgets deterministically; dropout and loss counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from emcot.sequence.layouts import generation_layout, subgoal_segments, vqa_layout
from emcot.sequence.plan import AttnMode, Modality
from emcot.synthetic.world import (
    build_synthetic_policy,
    synthetic_action_samples,
    synthetic_generation_samples,
    synthetic_samples,
    synthetic_vqa_samples,
)
from emcot.tokenizers.text_base import SpecialTokenIds
from emcot.tokenizers.vae import resize_rgb, to_unit_range
from emcot.training.collate import ConditionDropout, SampleCollator, SubgoalBlur, blur_rgb
from emcot.training.data.vqa import LlavaVQADataset, conversation_turns
from emcot.training.packing import MixtureStream, PackingConfig, TokenPacker, shard_packs
from emcot.types import SampleKind

# The layouts place think/vision/action markers and EOS only; the other ids are distinct fillers.
SPECIAL = SpecialTokenIds(
    think_start=1, think_end=2, vision_start=3, vision_end=4, action_start=5,
    action_end=6, im_start=13, im_end=14, eos=0, pad=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def policy():
    return build_synthetic_policy(synthetic_samples(8, seed=0))


@pytest.fixture(scope="module")
def mixed():
    return (
        synthetic_samples(3, seed=1)
        + synthetic_action_samples(2, seed=2)
        + synthetic_vqa_samples(3, seed=3)
        + synthetic_generation_samples(2, seed=4)
    )


def test_vqa_layout_puts_loss_on_answers_only():
    layout = vqa_layout(vit_lengths=[4], turns=[([7, 8], [9]), ([10], [11, 12])], special=SPECIAL)
    roles = [s.role for s in layout.segments]
    assert roles == ["image", "question", "answer", "question", "answer"]
    assert [s.loss for s in layout.segments] == [False, False, True, False, True]
    assert layout.text_ids[2] == [9, SPECIAL.eos]
    with pytest.raises(ValueError, match="turn"):
        vqa_layout(vit_lengths=[], turns=[], special=SPECIAL)


def test_generation_layout_reuses_the_subgoal_noisy_segment():
    layout = generation_layout(
        vit_lengths=[4, 4], context_latents=2, latent_tokens=6, framed_prompt=[7, 8], special=SPECIAL
    )
    segs = layout.segments
    assert [s.role for s in segs[:2]] == ["camera", "camera"]
    assert [s.role for s in segs[2:4]] == ["context_latent"] * 2
    assert segs[-1] == subgoal_segments(6, 0)["noisy"]
    assert segs[-1].mode is AttnMode.NOISE and segs[-1].loss
    assert layout.text_ids[-2] == [SPECIAL.vision_start]


def test_collator_packs_every_kind_and_counts_match(policy, mixed):
    collate = SampleCollator(policy.processor)
    batch = collate(mixed)
    assert batch.num_tokens == sum(collate.num_tokens(s) for s in mixed)
    assert set(batch.plan.sample_ids) == set(range(len(mixed)))
    assert batch.actions.shape[0] == 5 and batch.key_drop is None
    out = policy.model.compute_loss(batch, torch.Generator().manual_seed(0))
    assert set(out.terms) == {"text", "subgoal", "action"}
    assert out.counts == policy.model.loss_counts(batch)
    vqa_only = collate(synthetic_vqa_samples(2, seed=5))
    assert policy.model.loss_counts(vqa_only).keys() == {"text"}
    assert policy.model.compute_loss(vqa_only).terms.keys() == {"text"}


def test_condition_dropout_hides_or_removes_conditions(policy):
    sample = synthetic_generation_samples(1, seed=6)[0]
    full = SampleCollator(policy.processor)([sample])
    dropped = SampleCollator(policy.processor, ConditionDropout(text=1.0, vit=1.0, vae=1.0))(
        [sample], rng=np.random.default_rng(0)
    )
    assert [s.role for s in full.plan.segments] == [
        "camera",
        "context_latent",
        "prompt",
        "vision_start",
        "subgoal_noisy",
    ]
    assert [s.role for s in dropped.plan.segments] == ["prompt", "vision_start", "subgoal_noisy"]
    text = sum(s.length for s in dropped.plan.segments if s.modality is Modality.TEXT)
    assert int(dropped.key_drop.sum()) == text
    mask = dropped.plan.layout().mask(key_drop=dropped.key_drop)
    assert not mask[-1, :text].any()
    trace = synthetic_samples(1, seed=7)
    always = SampleCollator(policy.processor, ConditionDropout(1.0, 1.0, 1.0))
    assert always(trace).plan.segments == SampleCollator(policy.processor)(trace).plan.segments


def test_condition_dropout_of_action_only_samples(policy):
    sample = synthetic_action_samples(1, seed=8)[0]
    full = SampleCollator(policy.processor)([sample])
    roles = [s.role for s in full.plan.segments]
    assert roles == ["camera"] * roles.count("camera") + ["state", "prompt", "action_start", "actions"]
    no_text = SampleCollator(policy.processor, ConditionDropout(text=1.0))(
        [sample], rng=np.random.default_rng(0)
    )
    assert no_text.plan.segments == full.plan.segments
    mask = no_text.plan.layout().mask(key_drop=no_text.key_drop)
    observation = sum(s.length for s in full.plan.segments if s.role in ("camera", "state"))
    horizon = full.plan.segments[-1].length
    assert mask[-horizon:, :observation].all() and not mask[-horizon:, observation:-horizon].any()
    no_vit = SampleCollator(policy.processor, ConditionDropout(vit=1.0))(
        [sample], rng=np.random.default_rng(0)
    )
    assert [s.role for s in no_vit.plan.segments] == ["state", "prompt", "action_start", "actions"]
    assert no_vit.key_drop is None and no_vit.vit_patches.shape[0] == 0
    off = ConditionDropout(text=1.0, vit=1.0, action_samples=False)
    kept = SampleCollator(policy.processor, off)([sample], rng=np.random.default_rng(0))
    assert kept.plan.segments == full.plan.segments and kept.key_drop is None
    out = policy.model.compute_loss(no_text, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.terms["action"])


def test_state_dropout_hides_the_state_token_of_every_trace_sample(policy):
    for sample in (synthetic_action_samples(1, seed=8)[0], synthetic_samples(1, seed=7)[0]):
        full = SampleCollator(policy.processor)([sample])
        hidden = SampleCollator(policy.processor, ConditionDropout(state=1.0))(
            [sample], rng=np.random.default_rng(0)
        )
        assert hidden.plan.segments == full.plan.segments
        offsets = full.plan.offsets()
        state = next(i for i, s in enumerate(full.plan.segments) if s.role == "state")
        position = offsets[state]
        assert hidden.key_drop is not None and hidden.key_drop.nonzero().flatten().tolist() == [position]
        mask = hidden.plan.layout().mask(key_drop=hidden.key_drop)
        later = full.plan.layout().mask()
        assert not mask[position + 1 :, position].any() and later[position + 1 :, position].any()
        # Everything else stays visible exactly as without dropout.
        others = torch.ones(mask.shape[1], dtype=torch.bool)
        others[position] = False
        assert torch.equal(mask[:, others], later[:, others])
    # At probability 0 no number is drawn, so the other dropouts see the generator they saw before.
    rng = np.random.default_rng(3)
    assert not ConditionDropout().draw_state(rng) and rng.random() == np.random.default_rng(3).random()
    with pytest.raises(ValueError, match="state"):
        ConditionDropout(state=1.5)


def test_subgoal_blur_shows_the_copies_a_blurred_frame_and_the_noisy_segment_the_sharp_one(policy):
    trace = synthetic_samples(1, seed=9)
    sharp = SampleCollator(policy.processor)(trace, rng=np.random.default_rng(0))
    blurred = SampleCollator(policy.processor, subgoal_blur=SubgoalBlur(p=1.0, max_factor=2))(
        trace, rng=np.random.default_rng(0)
    )
    # Same layout; one more latent image, which the clean copy (the second latent segment) shows.
    assert blurred.plan.segments == sharp.plan.segments
    assert sharp.latent_image_index == [0, 0] and blurred.latent_image_index == [0, 1]
    torch.testing.assert_close(blurred.latent_images[0], sharp.latent_images[0])
    subgoal = resize_rgb(trace[0].subgoal, policy.processor.config.vae.image_size)
    torch.testing.assert_close(blurred.latent_images[1], to_unit_range(blur_rgb(subgoal, 2)))
    assert not torch.equal(blurred.latent_images[1], sharp.latent_images[0])
    # The ViT copy of the subgoal (the last image patches) reads the blurred frame too.
    n = sharp.vit_grids[-1][0] * sharp.vit_grids[-1][1]
    assert torch.equal(blurred.vit_patches[:-n], sharp.vit_patches[:-n])
    assert not torch.equal(blurred.vit_patches[-n:], sharp.vit_patches[-n:])
    assert torch.isfinite(policy.model.compute_loss(blurred, torch.Generator().manual_seed(0)).loss)
    # Without blur no random number is drawn (old runs replay exactly); factors cover [2, max].
    rng = np.random.default_rng(3)
    assert SubgoalBlur().draw(rng) == 1 and rng.random() == np.random.default_rng(3).random()
    assert {SubgoalBlur(p=1.0, max_factor=4).draw(rng) for _ in range(50)} == {2, 3, 4}
    flat = np.full((8, 8, 3), 77, np.uint8)
    assert np.array_equal(blur_rgb(flat, 4), flat) and blur_rgb(subgoal, 1) is subgoal
    with pytest.raises(ValueError, match="max_factor must be ≥ 2"):
        SubgoalBlur(p=0.5, max_factor=1)


def test_padding_adds_loss_free_tokens(policy, mixed):
    collate = SampleCollator(policy.processor)
    longest = max(collate.num_tokens(s) for s in mixed[:4])
    padded = collate(mixed[:4], pad_to=longest)
    assert padded.num_tokens == 4 * longest
    assert policy.model.loss_counts(padded) == policy.model.loss_counts(collate(mixed[:4]))


def test_packer_respects_budget_and_resumes_exactly(mixed):
    lengths = {id(s): 100 + 37 * i for i, s in enumerate(mixed)}
    config = PackingConfig(expected_tokens=400, max_tokens=500, packs_per_step=2)
    make = lambda: TokenPacker([mixed[:5], mixed[5:]], [1.0, 3.0], lambda s: lengths[id(s)], config, seed=3)  # noqa: E731
    packer = make()
    steps = [packer.next_step() for _ in range(6)]
    for step in steps:
        assert len(step) == 2
        for pack in step:
            total = sum(lengths[id(s)] for s in pack)
            assert total <= 500 and (total >= 400 or len(pack) >= 1)
    other = make()
    other.next_step(), other.next_step(), other.next_step()
    saved = json.loads(json.dumps(other.state_dict()))
    resumed = make()
    resumed.load_state_dict(saved)
    assert [[id(s) for s in p] for p in resumed.next_step()] == [[id(s) for s in p] for p in steps[3]]
    too_small = TokenPacker([mixed], [1.0], lambda s: 1000, config)
    with pytest.raises(ValueError, match="max_tokens"):
        too_small.next_pack()


def test_mixture_follows_weights_and_covers_each_epoch():
    stream = MixtureStream([10, 5], [3.0, 1.0], seed=0)
    state, seen = stream.initial_state(), []
    for _ in range(400):
        seen.append(stream.peek(state))
        state = stream.advance(state)
    share = np.mean([s == 0 for s, _ in seen])
    assert 0.68 < share < 0.82
    first = [i for s, i in seen if s == 0][:10]
    assert sorted(first) == list(range(10))
    with pytest.raises(ValueError, match="weight"):
        MixtureStream([3], [1.0, 2.0])


def test_shard_packs_splits_the_global_batch():
    packs = [["a"], ["b"], ["c"], ["d"]]
    assert shard_packs(packs, 1, 2) == [(1, ["b"]), (3, ["d"])]
    with pytest.raises(ValueError, match="multiple"):
        shard_packs(packs[:3], 0, 2)


def test_llava_json_reader(tmp_path, policy):
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(tmp_path / "a.png")
    records = [
        {
            "id": "x",
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is the block?"},
                {"from": "gpt", "value": "The block is red."},
                {"from": "human", "value": "Where is it?"},
                {"from": "gpt", "value": "At the top left."},
            ],
        },
        {"id": "y", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    ]
    (tmp_path / "vqa.json").write_text(json.dumps(records))
    data = LlavaVQADataset(tmp_path / "vqa.json")
    assert len(data) == 2
    sample = data[0]
    assert sample.kind is SampleKind.VQA and sample.observation.images["image0"].shape == (20, 24, 3)
    assert sample.metadata["turns"][0] == ("What colour is the block?", "The block is red.")
    batch = SampleCollator(policy.processor)([data[0], data[1]])
    assert [s.role for s in batch.plan.segments].count("answer") == 3
    with pytest.raises(ValueError, match="human"):
        conversation_turns([{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}])
