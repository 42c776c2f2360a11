"""The cue task: the side is shown only in the first frame, the expert always solves it, the wrong
edge is a trap, and samples carry their episode's history."""

from __future__ import annotations

import numpy as np
import pytest

from emcot.synthetic.cue import CUE_COLOR, CueConfig, CueWorld, cue_action_samples, cue_demos, cue_vqa_samples


def _cue_pixels(frame: np.ndarray) -> int:
    return int((frame == np.array(CUE_COLOR, np.uint8)).all(-1).sum())


def test_the_cue_shows_only_in_the_first_frame_on_the_cued_side():
    world = CueWorld()
    for seed in range(6):
        world.reset(seed)
        first = world.frame()
        column = np.nonzero((first == np.array(CUE_COLOR, np.uint8)).all(-1).any(0))[0]
        assert (column.max() < 16) == (world.side == "left")
        world.step(np.concatenate([world.gripper, world.block]))
        assert _cue_pixels(first) == 32 * CueConfig().cue_px and _cue_pixels(world.frame()) == 0


def test_after_the_first_frame_nothing_tells_the_side():
    left, right = CueWorld(), CueWorld()
    left.reset(0)
    right.reset(0)
    right.side = "left" if left.side == "right" else "right"
    for world in (left, right):
        world.step(np.concatenate([world.block, world.block]))
    assert np.array_equal(left.frame(), right.frame()) and np.array_equal(left.state(), right.state())


def test_the_expert_solves_every_episode_and_never_pushes_in_its_first_step():
    demos = cue_demos(40, seed=11, noise=0.0)
    assert all(d.success for d in demos)
    for demo in demos:
        first = demo.steps[0]
        assert np.allclose(first.label[:, 2:], first.state[2:])  # the block is told to stay


def test_the_wrong_edge_is_a_trap():
    world = CueWorld()
    world.reset(2)
    wrong = 0.2 if world.side == "right" else 0.8
    world.gripper = world.block.copy()
    for _ in range(6):
        target = np.array([wrong, world.block[1]], np.float32)
        world.step(np.concatenate([target, target]))
    assert world.lost and not world.solved()
    right = 0.8 if world.side == "right" else 0.2
    for _ in range(10):
        target = np.array([right, world.block[1]], np.float32)
        world.step(np.concatenate([target, target]))
    assert not world.solved()  # the block never moves again


def test_samples_carry_the_earlier_steps_and_video_qa_asks_about_them():
    demos = cue_demos(5, seed=0)
    samples = cue_action_samples(demos)
    assert [len(s.history) for s in samples] == [i for d in demos for i in range(len(d.steps))]
    for sample, step in zip(samples, [s for d in demos for s in d.steps]):
        assert np.array_equal(sample.actions, step.label)
    vqa = cue_vqa_samples(demos)
    assert len(vqa) == sum(len(d.steps) - 1 for d in demos)
    assert all(
        s.history and s.metadata["turns"][0][1] == f"The light showed the {s.metadata['side']}." for s in vqa
    )


def test_color_agreement_ties_the_block_colour_to_the_side_only_when_asked():
    from emcot.synthetic.cue import SIDE_COLORS

    def agreement(config: CueConfig) -> float:
        world = CueWorld(config)
        hits = 0
        for seed in range(400):
            world.reset(seed)
            hits += world.color in SIDE_COLORS[world.side]
        return hits / 400

    assert agreement(CueConfig(color_agreement=1.0)) == 1.0
    assert agreement(CueConfig(color_agreement=0.0)) == 0.0
    assert 0.85 < agreement(CueConfig(color_agreement=0.9)) < 0.95
    assert 0.4 < agreement(CueConfig()) < 0.6  # independent: the evaluation world
    with pytest.raises(ValueError, match="color_agreement"):
        CueConfig(color_agreement=1.5)


def test_the_cue_data_sources_take_the_shortcut_option():
    from emcot.synthetic.cue import SIDE_COLORS
    from emcot.training.data.sources import DataSpec, build_source
    from emcot.training.recipes import load_recipe

    recipe = load_recipe("cue-shortcut-history-vqa-tiny")
    options = {"color_agreement": 1.0}
    actions = list(build_source(DataSpec("synthetic_cue", num_samples=12, options=options), recipe, 8))
    for sample in actions:
        color = sample.instruction.split()[2]  # "push the <colour> block to the side the light showed"
        assert color in SIDE_COLORS[sample.metadata["side"]]
    questions = list(build_source(DataSpec("synthetic_cue_vqa", num_samples=12, options=options), recipe, 8))
    # the questions are about the same demos: the same sides, in the same episodes
    first_sides = [s.metadata["side"] for s in actions if s.metadata["step"] == 1]
    assert [s.metadata["side"] for s in questions if s.metadata["step"] == 1] == first_sides
    with pytest.raises(ValueError, match=r"unknown options \['colour'\] of data kind 'synthetic_cue'"):
        build_source(DataSpec("synthetic_cue", num_samples=2, options={"colour": 1}), recipe, 8)
