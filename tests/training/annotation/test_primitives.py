"""Rule-based primitive extraction on scripted trajectories."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from emcot.training.annotation.primitives import (
    ArmSpec,
    PrimitiveConfig,
    PrimitiveSegment,
    extract_primitives,
    primitive_log,
)

_spec = importlib.util.spec_from_file_location(
    "lerobot_fixtures", Path(__file__).parents[1] / "lerobot_fixtures.py"
)
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

ARM = ArmSpec("", (0, 1, 2), 3)


def test_scripted_single_arm():
    segments = extract_primitives(fixtures.scripted_states(), [ARM])
    got = [(s.kind, s.start, s.end, s.direction) for s in segments]
    assert got == [
        ("idle", 0, 3, ()),
        ("move", 4, 9, ("down", "forward")),
        ("grasp", 10, 12, ()),
        ("move", 13, 17, ("up",)),
        ("release", 18, 19, ()),
        ("idle", 20, 23, ()),
    ]
    assert [s.sentence() for s in segments] == [
        "keep the arm still",
        "move the gripper down and forward",
        "close the gripper",
        "move the gripper up",
        "open the gripper",
        "keep the arm still",
    ]
    assert "frames 4-9: move the gripper down and forward" in primitive_log(segments)


def test_two_arms_and_sentences():
    left = fixtures.scripted_states()
    right = np.repeat(left[:1], len(left), axis=0)  # the right arm never moves
    right[15:, 0] += np.linspace(0.05, 0.4, len(left) - 15)  # then slides right
    states = np.concatenate([left, right], axis=1)
    arms = [ArmSpec.parse("left:0,1,2:3"), ArmSpec.parse("right:4-6:7")]
    segments = extract_primitives(states, arms)
    right_segments = [s for s in segments if s.arm == "right"]
    assert [(s.kind, s.start, s.end) for s in right_segments] == [("idle", 0, 14), ("move", 15, 23)]
    assert right_segments[1].sentence() == "move the right gripper right"
    assert any(s.sentence() == "close the left gripper" for s in segments)
    assert (
        PrimitiveSegment("left", "move", 0, 3, ("up", "forward")).sentence()
        == "move the left gripper up and forward"
    )


def test_thresholds_are_configurable():
    states = fixtures.scripted_states(scale=0.02)  # slow: 2 % of the speeds and gripper changes
    default = extract_primitives(states, [ARM])
    assert {s.kind for s in default} == {"idle"}
    sensitive = extract_primitives(states, [ARM], PrimitiveConfig(idle_speed=0.0005, gripper_change=0.0005))
    assert [s.kind for s in sensitive] == ["idle", "move", "grasp", "move", "release", "idle"]
    # A direction share above 0.6 drops "forward" (0.55 of the displacement) from the first move.
    strict = extract_primitives(fixtures.scripted_states(), [ARM], PrimitiveConfig(direction_share=0.6))
    assert strict[1].direction == ("down",)


def test_short_pauses_do_not_split_a_move_and_joint_inputs():
    states = np.zeros((12, 3), dtype=np.float32)
    states[1:5, 0] = np.cumsum(np.full(4, 0.05))
    states[5:7, 0] = states[4, 0]  # a 2-frame pause, shorter than min_idle_frames
    states[7:, 0] = states[4, 0] + np.cumsum(np.full(5, 0.05))
    joint_arm = ArmSpec("left", (0, 1, 2), None, kind="joint")
    segments = extract_primitives(states, [joint_arm])
    assert [(s.kind, s.start, s.end) for s in segments] == [("move", 0, 11)]
    assert segments[0].sentence() == "move the left arm"


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 position indices"):
        ArmSpec("left", (0, 1))
    with pytest.raises(ValueError, match="NAME"):
        ArmSpec.parse("left")
    with pytest.raises(ValueError, match="state index"):
        extract_primitives(np.zeros((5, 3)), [ARM])
    with pytest.raises(ValueError, match="direction_share"):
        PrimitiveConfig(direction_share=0)
