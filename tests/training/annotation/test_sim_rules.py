"""Annotation from simulator signals: phases on synthetic signal arrays, the rule backend's switch
between simulator rules and primitives, and a written dataset through `emcot annotate` (VLM too)."""

import argparse
import json

import numpy as np
import pytest

from emcot.cli.annotate import add_annotate_arguments, run_annotate
from emcot.eval.envs.metaworld_tasks import TASK_DESCRIPTIONS
from emcot.training.annotation.annotations import read_annotations
from emcot.training.annotation.annotators import (
    EpisodeContext,
    RuleAnnotator,
    RuleAnnotatorConfig,
    VLMAnnotator,
)
from emcot.training.annotation.pipeline import annotate_dataset
from emcot.training.annotation.sim_rules import (
    DEFAULT_FAMILY,
    GRIPPER_COLUMN,
    OBJECT_COLUMN,
    SIM_COLUMNS,
    SIM_PREFIX,
    Phase,
    SimRuleConfig,
    SimSignals,
    aim_sentence,
    parse_aim,
    scene_nouns,
    segment_phases,
    task_family,
)
from emcot.training.data.lerobot import LeRobotDataset
from emcot.training.data.lerobot_writer import EpisodeData, WriterConfig, write_lerobot_dataset

T = 40
PICK_PLACE = "Pick and place a puck to a goal"


def pick_place_episode():
    """A scripted pick-and-place: reach 0-9, close the gripper 10-15, grasped from 16, carried to the goal."""
    t = np.arange(T)
    hand = np.zeros((T, 3))
    hand[:10] = np.linspace([0.0, 0.6, 0.2], [0.0, 0.7, 0.05], 10)  # forward and down
    hand[10:16] = hand[9]
    hand[16:] = np.linspace(hand[9], [0.1, 0.7, 0.25], T - 16)  # up and right
    opening = np.where(t < 10, 1.0, np.maximum(0.4, 1.0 - 0.12 * (t - 9)))
    command = np.where(t < 10, 0.0, 1.0)
    distance = np.where(t < 16, 0.30, 0.30 - (t - 15) * 0.28 / 24)  # half of its move-start value at 29
    objects = np.where(t[:, None] < 16, hand[15], hand)
    columns = {
        GRIPPER_COLUMN: opening,
        SIM_PREFIX + "grasp_success": (t >= 16).astype(float),
        SIM_PREFIX + "near_object": (t >= 9).astype(float),
        SIM_PREFIX + "obj_to_target": distance,
        SIM_PREFIX + "success": (t == T - 1).astype(float),
        OBJECT_COLUMN: objects,
    }
    states = np.concatenate([hand, opening[:, None]], 1).astype(np.float32)
    actions = np.concatenate([np.diff(hand, axis=0, append=hand[-1:]), command[:, None]], 1).astype(
        np.float32
    )
    return {k: np.asarray(v, np.float32) for k, v in columns.items()}, states, actions


def context(columns, states=None, actions=None, instruction=PICK_PLACE):
    return EpisodeContext(
        0, instruction, T, 80.0, [], signals=columns, states=states, actions=actions, dataset="sim"
    )


AIMING = RuleAnnotatorConfig(sim=SimRuleConfig(aim_point=True))


def test_pick_place_phases_subgoals_and_first_person_reasoning():
    annotation = RuleAnnotator(AIMING).annotate(context(*pick_place_episode()))
    assert annotation.annotator["model"] == "sim-rules-v2"
    assert annotation.annotator["phases"] == ["reach", "grasp", "move", "place"]
    assert [(s.text, s.start, s.end) for s in annotation.subtasks] == [
        ("Reach the puck", 0, 9),
        ("Grasp the puck", 10, 15),
        ("Move the puck to the goal", 16, 28),
        ("Place the puck at the goal", 29, 39),
    ]
    for sub in annotation.subtasks:
        assert sub.subgoal_frame == sub.end
        assert " I " in f" {sub.reasoning}" and len(sub.reasoning.split()) <= 50
    reach, grasp, move, place = (s.reasoning for s in annotation.subtasks)
    assert reach.startswith(
        "The puck is on the table in front of me. I first move my gripper down and forward"
    )
    # Each sub-task ends with where the hand is at its last frame, in whole centimetres.
    assert reach.endswith("then grasp it. I aim at x 0 y 70 z 5.")
    assert grasp.endswith("I aim at x 0 y 70 z 5.") and place.endswith("I aim at x 10 y 70 z 25.")
    assert "close my gripper" in grasp and "up and right" in move
    assert annotation.plan.endswith(
        "I will reach the puck, grasp it, move it to the goal and place it at the goal."
    )


def test_aim_sentences_round_trip_to_the_centimetre():
    hand = np.array([-0.043, 0.6754, 0.0049])
    assert aim_sentence(hand) == "I aim at x -4 y 68 z 0."
    np.testing.assert_allclose(parse_aim("Reach it. " + aim_sentence(hand) + " Then"), [-0.04, 0.68, 0.0])
    assert parse_aim("I aim at x 4 y z 2.") is None and parse_aim("no aim here") is None


def test_aim_points_are_optional_and_survive_the_word_limit():
    episode = pick_place_episode()
    plain = RuleAnnotator().annotate(context(*episode))  # off by default
    assert plain.annotator["model"] == "sim-rules-v1"
    assert plain.subtasks[0].reasoning.endswith("then grasp it.")
    assert not any("aim" in s.reasoning for s in plain.subtasks)
    config = SimRuleConfig(max_reasoning_words=12, aim_point=True)
    short = RuleAnnotator(RuleAnnotatorConfig(sim=config)).annotate(context(*episode))
    for sub in short.subtasks:
        assert len(sub.reasoning.split()) <= 12 and " I aim at x " in sub.reasoning
    assert short.subtasks[0].reasoning.endswith(". I aim at x 0 y 70 z 5.")


def test_contact_phases_start_when_the_object_moves():
    columns, states, actions = pick_place_episode()
    t = np.arange(T)
    columns[OBJECT_COLUMN] = np.where(t[:, None] < 20, 0.0, 0.01 * (t[:, None] - 18)).repeat(3, 1)
    # obj_to_target wobbles early (as Meta-World's lever does); recorded positions take precedence.
    columns[SIM_PREFIX + "obj_to_target"] = np.where(t < 5, 0.2 - 0.01 * t, 0.2).astype(np.float32)
    pieces = [
        (s.text, s.start, s.end)
        for s in RuleAnnotator()
        .annotate(context(columns, states, actions, "Push the puck to a goal"))
        .subtasks
    ]
    assert pieces == [("Reach the puck", 0, 19), ("Push the puck to the goal", 20, 39)]
    # Without positions the approach to the target decides: the first clear drop below the peak.
    del columns[OBJECT_COLUMN]
    columns[SIM_PREFIX + "obj_to_target"] = np.where(t <= 25, 0.2, 0.2 - 0.01 * (t - 25)).astype(np.float32)
    annotation = RuleAnnotator().annotate(context(columns, states, actions, "Open a drawer"))
    assert [(s.text, s.start, s.end) for s in annotation.subtasks] == [
        ("Reach the drawer", 0, 25),
        ("Open the drawer", 26, 39),
    ]
    assert annotation.subtasks[0].reasoning.startswith("The drawer is in front of me.")


def test_missing_events_are_left_out_and_tiny_pieces_merge():
    columns, states, actions = pick_place_episode()
    flat = {k: np.full_like(v, v[0]) for k, v in columns.items()}
    signals = SimSignals.from_columns(flat, states, np.zeros_like(actions))
    phases = (Phase.REACH, Phase.GRASP, Phase.MOVE, Phase.PLACE)
    assert segment_phases(signals, phases) == [(Phase.REACH, 0, T - 1)]
    # The gripper closes two frames before the end: a 2-frame grasp joins the reach.
    late = actions.copy()
    late[:, 3] = np.where(np.arange(T) >= T - 2, 1.0, 0.0)
    signals = SimSignals.from_columns(flat, states, late)
    assert segment_phases(signals, phases) == [(Phase.REACH, 0, T - 1)]
    assert segment_phases(signals, phases, SimRuleConfig(min_subtask_frames=1)) == [
        (Phase.REACH, 0, T - 3),
        (Phase.GRASP, T - 2, T - 1),
    ]


def test_families_and_nouns_cover_the_metaworld_instructions():
    assert task_family(PICK_PLACE).name == "pick-place"
    assert task_family("Rotate the faucet counter-clockwise").name == "open"
    assert task_family("Rotate the faucet clockwise").name == "close"
    assert task_family("Press a button from the top").phases == (Phase.REACH, Phase.PRESS)
    assert task_family("Wave hello") is DEFAULT_FAMILY
    assert scene_nouns(PICK_PLACE) == ("puck", "goal")
    assert scene_nouns("Slide a plate into a cabinet") == ("plate", "cabinet")
    assert scene_nouns("Wave hello") == ("object", "goal")
    families = {task: task_family(text).name for task, text in TASK_DESCRIPTIONS.items()}
    assert DEFAULT_FAMILY.name not in families.values(), families
    assert families["drawer-open-v3"] == "open" and families["push-v3"] == "push"


def test_the_rule_backend_falls_back_to_primitives_and_checks_signals():
    columns, states, actions = pick_place_episode()
    assert RuleAnnotator().annotate(context({}, states, actions)).annotator["model"] == "primitives-v1"
    partial = {k: v for k, v in columns.items() if k != SIM_PREFIX + "success"}
    assert RuleAnnotator().annotate(context(partial, states, actions)).annotator["model"] == "primitives-v1"
    off = RuleAnnotator(RuleAnnotatorConfig(use_sim_signals=False))
    assert off.annotate(context(columns, states, actions)).annotator["model"] == "primitives-v1"
    columns[SIM_PREFIX + "obj_to_target"][7] = np.nan
    with pytest.raises(ValueError, match=r"sim.obj_to_target.*frame 7"):
        RuleAnnotator().annotate(context(columns, states, actions))
    with pytest.raises(ValueError, match="place_fraction"):
        SimRuleConfig(place_fraction=1.5)


def _dataset(root):
    columns, states, actions = pick_place_episode()
    frames = np.zeros((T, 16, 16, 3), np.uint8)
    frames[:, :, :8] = np.arange(T, dtype=np.uint8)[:, None, None, None] * 5
    episodes = [EpisodeData(PICK_PLACE, states, actions, {"corner2": frames}, columns) for _ in range(2)]
    return write_lerobot_dataset(root, episodes, 80, WriterConfig(camera_storage="image")), columns


def test_sim_columns_travel_through_the_dataset_to_emcot_annotate(tmp_path, capsys):
    root, columns = _dataset(tmp_path / "sim")
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["features"][OBJECT_COLUMN]["shape"] == [3] and info["features"][GRIPPER_COLUMN]["shape"] == [
        1
    ]
    episode = LeRobotDataset(root).episode(1)
    read = episode.columns(SIM_PREFIX)
    assert sorted(read) == sorted((*SIM_COLUMNS, OBJECT_COLUMN))
    for key, values in columns.items():
        np.testing.assert_array_equal(read[key], values.reshape(T, -1))
    parser = argparse.ArgumentParser()
    add_annotate_arguments(parser)
    out = tmp_path / "ann.jsonl"
    assert (
        run_annotate(parser.parse_args([str(root), "--backend", "rule", "--out", str(out), "--no-progress"]))
        == 0
    )
    annotations = read_annotations(out)
    assert sorted(annotations) == [0, 1]
    assert [s.end for s in annotations[1].subtasks] == [9, 15, 28, 39]
    assert annotations[1].annotator["model"] == "sim-rules-v1"
    assert "aim" not in annotations[1].subtasks[0].reasoning
    aiming = tmp_path / "aim.jsonl"
    argv = [str(root), "--backend", "rule", "--out", str(aiming), "--aim-points", "--no-progress"]
    assert run_annotate(parser.parse_args(argv)) == 0
    assert read_annotations(aiming)[1].annotator["model"] == "sim-rules-v2"
    assert read_annotations(aiming)[1].subtasks[0].reasoning.endswith("I aim at x 0 y 70 z 5.")


class _ScriptedVLM:
    name, model = "scripted", "scripted-vlm"

    def __init__(self):
        self.images: list[int] = []

    def complete(self, request):
        self.images.append(len(request.images))
        stage = len(self.images) % 3
        if stage == 1:
            return json.dumps({"narrative": "I reach the puck, grasp it and carry it to the goal."})
        if stage == 2:
            return json.dumps({"subtasks": ["Grasp the puck", "Carry the puck"]})
        segments = [
            {
                "subtask": "Grasp the puck",
                "start": 0,
                "end": 15,
                "reasoning": "I close my gripper on the puck.",
            },
            {"subtask": "Carry the puck", "start": 16, "end": T - 1, "reasoning": "I carry it to the goal."},
        ]
        return json.dumps({"segments": segments})


def test_a_vlm_backend_still_annotates_a_simulator_dataset(tmp_path):
    root, _ = _dataset(tmp_path / "sim")
    backend = _ScriptedVLM()
    summary = annotate_dataset(
        LeRobotDataset(root), VLMAnnotator(backend), tmp_path / "vlm.jsonl", progress=False
    )
    assert summary.ok == 2 and summary.failed == 0
    assert backend.images and all(n == 8 for n in backend.images)
    assert [s.text for s in read_annotations(tmp_path / "vlm.jsonl")[0].subtasks] == [
        "Grasp the puck",
        "Carry the puck",
    ]
