"""Stage-1 VQA from demos: answers follow the recorded state, signals and annotation of each frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emcot.training.annotation.annotators import RuleAnnotator
from emcot.training.annotation.pipeline import annotate_dataset
from emcot.training.data.demo_vqa import DemoVQAConfig, DemoVQADataset, Question, vqa_corpus
from emcot.training.data.lerobot import LeRobotDataset
from emcot.training.data.lerobot_writer import EpisodeData, WriterConfig, write_lerobot_dataset
from emcot.types import SampleKind

T = 40
TASKS = ("Pick and place a puck to a goal.", "Reach a goal position.")


def pick_place(seed: int):
    """A scripted Meta-World-like pick-place: reach 0-9, close 10-15, carry from 16; sim.* columns."""
    t = np.arange(T)
    hand = np.zeros((T, 3))
    hand[:10] = np.linspace([-0.2, 0.5, 0.25], [0.0, 0.7, 0.05], 10)
    hand[10:16] = hand[9]
    hand[16:] = np.linspace(hand[9], [0.2, 0.8, 0.25], T - 16)
    hand += 0.01 * seed
    opening = np.where(t < 10, 1.0, np.maximum(0.2, 1.0 - 0.15 * (t - 9)))
    columns = {
        "sim.gripper_opening": opening,
        "sim.grasp_success": (t >= 16).astype(float),
        "sim.near_object": (t >= 9).astype(float),
        "sim.obj_to_target": np.where(t < 16, 0.3, 0.3 - (t - 15) * 0.28 / 24),
        "sim.success": (t == T - 1).astype(float),
        "sim.object_position": np.where(t[:, None] < 16, hand[15], hand),
    }
    states = np.concatenate([hand, opening[:, None]], 1).astype(np.float32)
    actions = np.concatenate([np.diff(hand, axis=0, append=hand[-1:]), (t >= 10)[:, None]], 1)
    y, x = np.mgrid[0:32, 0:32]
    frames = np.asarray(
        [np.stack([(x * 6 + k * 5) % 256, y * 7, np.full_like(x, k * 6)], -1) for k in t], np.uint8
    )
    return (
        {k: np.asarray(v, np.float32) for k, v in columns.items()},
        states,
        actions.astype(np.float32),
        frames,
    )


def mw_like_dataset(root, episodes: int = 2):
    """A Meta-World-shaped LeRobot v3 dataset (``corner2`` camera, 4-d state/action, sim.*) and its rule annotations."""
    data = []
    for i in range(episodes):
        columns, states, actions, frames = pick_place(i)
        data.append(EpisodeData(TASKS[i % 2], states, actions, {"corner2": frames}, columns))
    root = write_lerobot_dataset(root, data, 80, WriterConfig(camera_storage="image"))
    sidecar = root / "annotations.jsonl"
    summary = annotate_dataset(LeRobotDataset(root), RuleAnnotator(), sidecar, progress=False)
    assert summary.ok == episodes
    return root, sidecar


def test_answers_follow_the_state_signals_and_subtask(tmp_path):
    root, sidecar = mw_like_dataset(tmp_path / "mw")
    config = DemoVQAConfig(stride=5, turns=len(Question))
    vqa = DemoVQADataset(LeRobotDataset(root), sidecar, config)
    assert len(vqa) == 2 * (T // 5)
    first, holding = vqa[0], vqa[4]  # frames 0 and 20 of episode 0
    assert first.kind == SampleKind.VQA and list(first.observation.images) == ["corner2"]
    assert first.observation.state is None  # VQA answers must come from the image
    answers = dict(first.metadata["turns"])
    assert answers["What is the task?"] == TASKS[0]
    assert answers["Where is the gripper?"] == "The gripper is high, left and near."
    assert answers["Is the gripper open or closed?"] == "The gripper is open."
    assert answers["Is the robot holding the object?"].startswith("No")
    assert answers["What should the robot do next?"] == "Reach the puck."
    later = dict(holding.metadata["turns"])
    assert later["Is the gripper open or closed?"] == "The gripper is closed."
    assert later["Is the robot holding the object?"].startswith("Yes")
    assert later["What should the robot do next?"] == "Move the puck to the goal."
    assert (first.instruction, first.reasoning) == first.metadata["turns"][0]
    corpus = set(vqa_corpus())
    assert all(q in corpus and (a in corpus or a.endswith(".")) for q, a in first.metadata["turns"])


def test_turns_are_seeded_per_frame_and_unanswerable_questions_are_left_out(tmp_path):
    root, _ = mw_like_dataset(tmp_path / "mw")
    dataset = LeRobotDataset(root)
    a = DemoVQADataset(dataset, None, DemoVQAConfig(turns=2, seed=3))
    b = DemoVQADataset(dataset, None, DemoVQAConfig(turns=2, seed=3))
    assert [s.metadata["turns"] for s in a] == [s.metadata["turns"] for s in b]
    assert all(len(s.metadata["turns"]) == 2 for s in a)
    # Without annotations there is no sub-task to name.
    only_next = DemoVQADataset(dataset, None, DemoVQAConfig(questions=(Question.NEXT_STEP,)))
    with pytest.raises(ValueError, match="answers none"):
        only_next[0]
    with pytest.raises(ValueError, match="questions must be among"):
        DemoVQAConfig(questions=("colour",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="camera"):
        DemoVQADataset(dataset, None, DemoVQAConfig(camera="wrist"))


def test_history_questions_are_answered_from_earlier_frames_and_train_as_video_qa(tmp_path):
    from emcot.synthetic.world import build_synthetic_policy, synthetic_samples
    from emcot.training.collate import SampleCollator

    root, _ = mw_like_dataset(tmp_path / "mw")
    history_only = (Question.START_PLACE, Question.HELD_BEFORE)
    config = DemoVQAConfig(stride=5, turns=2, questions=history_only, history=True)
    vqa = DemoVQADataset(LeRobotDataset(root), None, config)
    later = vqa[5]  # frame 25 of episode 0: anchors 0, 5, …, 20 before it
    assert [int(s.state[0] * 1000) for s in later.history] == [
        int(v * 1000) for v in pick_place(0)[1][0:25:5, 0]
    ]
    assert all(len(s.actions) == 5 for s in later.history)
    answers = dict(later.metadata["turns"])
    assert (
        answers["Where was the gripper when the episode began?"]
        == "At the start the gripper was high, left and near."
    )
    assert answers["Has the robot held the object yet?"].startswith("Yes")
    assert dict(vqa[2].metadata["turns"])["Has the robot held the object yet?"].startswith("No")  # frame 10
    with pytest.raises(ValueError, match="answers none"):
        vqa[0]  # the first frame has no history to ask about
    corpus = set(vqa_corpus())
    assert all(a in corpus for _, a in later.metadata["turns"])
    policy = build_synthetic_policy(synthetic_samples(4), memory={"history_length": 3})
    # the history's states and actions are normalised with the sample's robot statistics
    batch = SampleCollator(policy.processor)([dataclasses.replace(later, robot="synthetic")])
    assert sum(s.role == "history_frame" for s in batch.plan.segments) == 3
    assert batch.vqa_loss_targets.numel() > 0 and batch.text_loss_targets.numel() == 0
    assert not any(s.history for s in DemoVQADataset(LeRobotDataset(root), None, DemoVQAConfig(stride=5)))


def test_vlm_video_qa_pairs_become_history_samples_with_their_evidence_frame(tmp_path):
    from emcot.training.annotation.annotations import AnnotationWriter, VideoQA, read_annotations

    root, sidecar = mw_like_dataset(tmp_path / "mw")
    annotations = read_annotations(sidecar)
    first = annotations[0]
    first.video_qa = [VideoQA("What colour was the first frame's left edge?", "It was dark red.", 23, 3)]
    with AnnotationWriter(sidecar) as writer:
        writer.write(first)
    config = DemoVQAConfig(stride=5, history=True)
    vqa = DemoVQADataset(LeRobotDataset(root), sidecar, config)
    rule_frames = 2 * len(range(0, T, 5))
    assert len(vqa) == rule_frames + 1  # one sample per pair, after the rule anchors
    sample = vqa[rule_frames]
    assert (sample.instruction, sample.reasoning) == (
        "What colour was the first frame's left edge?",
        "It was dark red.",
    )
    assert sample.metadata["frame"] == 23 and sample.kind is SampleKind.VQA
    frames = pick_place(0)[3]
    kept = [next(k for k in range(T) if np.array_equal(frames[k], h.frame)) for h in sample.history]
    assert kept == [0, 3, 5, 10, 15, 20]  # the anchors before frame 23, with the evidence frame among them
    assert [len(h.actions) for h in sample.history] == [3, 2, 5, 5, 5, 3]  # actions until the next one
    np.testing.assert_array_equal(sample.observation.images["corner2"], frames[23])
    # without history the pairs are not asked (their answers need the past)
    assert len(DemoVQADataset(LeRobotDataset(root), sidecar, DemoVQAConfig(stride=5))) == rule_frames
    # a fresh policy's tokenizer learns the pairs' words too
    from emcot.training.data.sources import DataSpec
    from emcot.training.policy_files import fresh_corpus

    spec = DataSpec("lerobot_vqa", path=str(root), options={"annotations": str(sidecar), "history": True})
    corpus = fresh_corpus(LeRobotDataset(root), [spec])
    assert {"What colour was the first frame's left edge?", "It was dark red."} <= set(corpus)
