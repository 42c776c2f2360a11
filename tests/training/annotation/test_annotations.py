"""Sidecar annotation schema: validation, round trip, crash-safe appends."""

import json

import pytest

from emcot.training.annotation.annotations import (
    AnnotationWriter,
    EpisodeAnnotation,
    SubtaskAnnotation,
    read_annotations,
)
from emcot.training.annotation.primitives import PrimitiveSegment


def _annotation(index=0, status="ok"):
    if status == "failed":
        return EpisodeAnnotation(index, 10, "lift the cube", status="failed", error="stage subtasks: timeout")
    return EpisodeAnnotation(
        episode_index=index,
        num_frames=10,
        instruction="lift the cube",
        plan="I will grasp the cube and lift it.",
        subtasks=[
            SubtaskAnnotation("Grasp the cube", 0, 5, "I see the cube under my gripper, so I close it.", 5),
            SubtaskAnnotation("Lift the cube", 6, 9, "I hold the cube and raise my arm.", 9),
        ],
        primitives=[PrimitiveSegment("", "grasp", 3, 5)],
        annotator={"backend": "rule", "model": "primitives-v1"},
        prompt_versions={"narrative": "v1"},
    )


def test_round_trip_and_last_line_wins(tmp_path):
    path = tmp_path / "ann.jsonl"
    with AnnotationWriter(path) as writer:
        writer.write(_annotation(0, "failed"))
        writer.write(_annotation(1))
        writer.write(_annotation(0))
    loaded = read_annotations(path)
    assert sorted(loaded) == [0, 1] and loaded[0].status == "ok"
    assert loaded[1].to_dict() == _annotation(1).to_dict()
    assert loaded[1].subtask_index_at(7) == 1
    assert len(path.read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.subtasks.__setitem__(1, SubtaskAnnotation("Lift", 7, 9, "I lift.", 9)), "contiguous"),
        (lambda a: setattr(a, "num_frames", 12), "the episode at 11"),
        (
            lambda a: a.subtasks.__setitem__(1, SubtaskAnnotation("Lift", 6, 9, "I lift.", 2)),
            "outside its range",
        ),
        (lambda a: setattr(a, "status", "maybe"), "status"),
        (lambda a: setattr(a, "subtasks", []), "at least one subtask"),
    ],
)
def test_invalid_annotations_are_rejected(change, message):
    annotation = _annotation()
    change(annotation)
    with pytest.raises(ValueError, match=message):
        annotation.to_dict()


def test_read_rejects_bad_lines_and_drops_torn_tail(tmp_path):
    path = tmp_path / "ann.jsonl"
    good = json.dumps(_annotation(0).to_dict())
    path.write_text(good + "\n" + good[: len(good) // 2])
    with pytest.warns(UserWarning, match="partial last line"):
        assert sorted(read_annotations(path)) == [0]
    # Re-opening for append cuts the torn tail, so the next record starts on its own line.
    with AnnotationWriter(path) as writer:
        writer.write(_annotation(1))
    assert sorted(read_annotations(path)) == [0, 1]
    record = _annotation(2).to_dict()
    record["colour"] = "red"
    path.write_text(good + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=":2: .*unknown fields"):
        read_annotations(path)
    path.write_text("{not json\n" + good + "\n")
    with pytest.raises(ValueError, match=":1 is not valid JSON"):
        read_annotations(path)
