"""The cue task: the side is shown only in the first frame, the expert always solves it, the wrong
edge is a trap, and samples carry their episode's history."""

from __future__ import annotations

import numpy as np

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
