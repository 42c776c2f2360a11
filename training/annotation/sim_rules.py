"""EM-CoT annotation from simulator signals: sub-tasks cut where the simulator says the phase changed.

A dataset collected in simulation (``emcot collect``) keeps, per frame, the gripper opening, the
simulator's judgement of the scene (Meta-World's ``grasp_success``, ``near_object``,
``obj_to_target``, ``success``) and optionally the object's position, in ``sim.*`` columns. The
instruction picks a task family (``TASK_FAMILIES``: reach, pick-place, press, open, close, pull,
turn, push) and with it the phases that apply, e.g. pick-place = reach → grasp → move → place,
press = reach → press. Each phase after the first has a detector of its first frame:

- grasp: the gripper command turns to closing (or the opening starts to shrink);
- move: ``grasp_success`` turns on, else the object starts to move;
- place: the object is within ``place_fraction`` of the distance to its target it had when the move
  began, or the gripper opens again;
- push / press / open / close / pull / turn: the object starts to move (``obj_to_target`` falls
  below its running peak when positions were not recorded).

A phase whose event never happens is left out; pieces shorter than ``min_subtask_frames`` join their
neighbour. Each sub-task gets a first-person reasoning in the style of HALO's traces and, as its
subgoal, its last frame. The signals at frame t are those after the step that action t started.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, check_fields
from emcot.training.annotation.annotations import EpisodeAnnotation, SubtaskAnnotation

if TYPE_CHECKING:  # annotators imports this module; the context is only a type here
    from emcot.training.annotation.annotators import EpisodeContext

SIM_PREFIX = "sim."
# Meta-World ``info`` entries a collected dataset keeps, each as the column SIM_PREFIX + key.
SIM_INFO_KEYS = ("grasp_success", "near_object", "obj_to_target", "success")
GRIPPER_COLUMN = SIM_PREFIX + "gripper_opening"
# Position of the manipulated object (Meta-World obs[4:7]); optional, it sharpens the contact detectors.
OBJECT_COLUMN = SIM_PREFIX + "object_position"
# Position of the task's goal (Meta-World obs[36:39] in the goal-observable envs); optional. The rules
# ignore it; the camera keypoints learn to read it from the frame.
GOAL_COLUMN = SIM_PREFIX + "goal_position"
SIM_COLUMNS = (GRIPPER_COLUMN, *(SIM_PREFIX + key for key in SIM_INFO_KEYS))


class Phase(str, enum.Enum):
    """A sub-task kind."""

    REACH = "reach"
    GRASP = "grasp"
    MOVE = "move"
    PLACE = "place"
    PUSH = "push"
    PRESS = "press"
    OPEN = "open"
    CLOSE = "close"
    PULL = "pull"
    TURN = "turn"


@dataclass(frozen=True)
class TaskFamily:
    """Tasks that share their phases; ``keywords`` are words or phrases matched whole in the instruction."""

    name: str
    keywords: tuple[str, ...]
    phases: tuple[Phase, ...]


# Checked in order; the first family with a keyword in the instruction wins ("counter-clockwise"
# opens before "clockwise" closes).
TASK_FAMILIES = (
    TaskFamily("reach", ("reach",), (Phase.REACH,)),
    TaskFamily(
        "pick-place",
        ("pick", "place", "put", "insert", "assemble", "lift", "take", "hammer", "dunk", "grasp", "unplug"),
        (Phase.REACH, Phase.GRASP, Phase.MOVE, Phase.PLACE),
    ),
    TaskFamily("press", ("press", "button"), (Phase.REACH, Phase.PRESS)),
    TaskFamily("open", ("open", "unlock", "turn on", "counter-clockwise"), (Phase.REACH, Phase.OPEN)),
    TaskFamily("close", ("close", "shut", "lock", "turn off", "clockwise"), (Phase.REACH, Phase.CLOSE)),
    TaskFamily("pull", ("pull", "get", "drag"), (Phase.REACH, Phase.PULL)),
    TaskFamily("turn", ("rotate", "turn", "twist"), (Phase.REACH, Phase.TURN)),
    TaskFamily("push", ("push", "slide", "sweep", "kick", "move"), (Phase.REACH, Phase.PUSH)),
)
# Without a matching word the grasp detectors decide: they leave out what never happens.
DEFAULT_FAMILY = TaskFamily("manipulate", (), (Phase.REACH, Phase.GRASP, Phase.MOVE, Phase.PLACE))

# Nouns an instruction may name, and those that lie loose on the table (the others are fixtures).
_LOOSE: tuple[str, ...] = ("puck", "block", "cube", "nut", "peg", "ball", "basketball", "mug", "cup")
_LOOSE += ("hammer", "stick", "plate", "lid", "cover")
_FIXED = ("drawer", "door", "window", "faucet", "button", "handle", "lever", "dial", "box", "bin", "hole")
_TARGETS = ("goal", "target", "shelf", "basket", "wall", "cabinet", "screw", "coffee machine")
_NOUNS = _LOOSE + _FIXED + _TARGETS


def task_family(instruction: str) -> TaskFamily:
    """The family whose keyword appears in ``instruction`` (``DEFAULT_FAMILY`` when none does)."""
    text = instruction.lower()
    for family in TASK_FAMILIES:
        if any(re.search(rf"\b{re.escape(word)}\b", text) for word in family.keywords):
            return family
    return DEFAULT_FAMILY


def scene_nouns(instruction: str) -> tuple[str, str]:
    """(object, target) named in ``instruction``, in the order they appear; "object"/"goal" by default."""
    text = instruction.lower()
    found = sorted((m.start(), noun) for noun in _NOUNS for m in re.finditer(rf"\b{noun}s?\b", text))
    names = list(dict.fromkeys(noun for _, noun in found))
    return (names[0] if names else "object", names[1] if len(names) > 1 else "goal")


@dataclass(frozen=True)
class SimRuleConfig:
    """Thresholds of the phase detectors (distances in metres, gripper values as recorded)."""

    min_subtask_frames: int = 3
    max_reasoning_words: int = 50
    # A gripper command above this closes the gripper (Meta-World: +1 closes, -1 opens).
    close_command: float = 0.1
    # Without gripper commands, an opening that shrinks by this much in one frame is closing.
    gripper_change: float = 0.01
    # The object has started to approach its target once obj_to_target fell this far below its peak.
    progress_eps: float = 0.005
    # With recorded object positions: the object moved once it is this far from where it rested,
    # measured from frame settle_frames on (objects drop and doors swing after a reset).
    object_motion: float = 0.01
    settle_frames: int = 10
    place_fraction: float = 0.5
    # A hand displacement shorter than this gives no direction word.
    direction_eps: float = 0.02
    # End each sub-task's reasoning with where the hand is when it is done ("I aim at x -4 y 68 z 2."):
    # the place a policy must read from the frame, said in text its action chunk can attend to.
    # Off by default: the bundled policy was trained without it (and with it did no better, README).
    aim_point: bool = False

    def __post_init__(self):
        positive = dict.fromkeys(
            ("gripper_change", "progress_eps", "object_motion", "direction_eps"), POSITIVE
        )
        counts = dict.fromkeys(("min_subtask_frames", "max_reasoning_words"), AT_LEAST_ONE)
        check_fields(
            self,
            "SimRuleConfig",
            settle_frames=NON_NEGATIVE,
            place_fraction=UNIT_INTERVAL,
            **positive,
            **counts,
        )


@dataclass(frozen=True)
class SimSignals:
    """Per-frame simulator signals of one episode, each of length T."""

    opening: np.ndarray
    grasped: np.ndarray
    near: np.ndarray
    obj_to_target: np.ndarray
    success: np.ndarray
    hand: np.ndarray | None = None  # (T, 3) end-effector position
    gripper_command: np.ndarray | None = None
    object_position: np.ndarray | None = None  # (T, 3)

    def __len__(self) -> int:
        return len(self.opening)

    @classmethod
    def from_columns(
        cls,
        columns: dict[str, np.ndarray],
        states: np.ndarray | None = None,
        actions: np.ndarray | None = None,
    ) -> SimSignals | None:
        """Signals from the ``sim.*`` columns (None when one is missing: not a simulator dataset).

        ``states`` (hand x, y, z first) and ``actions`` (gripper command last) are optional. A NaN or
        infinite signal raises a ValueError (it would silently break every threshold).
        """
        if any(name not in columns for name in SIM_COLUMNS):
            return None
        flat = {}
        for name in SIM_COLUMNS:
            values = np.asarray(columns[name], np.float64).reshape(len(columns[name]), -1)[:, 0]
            if not np.isfinite(values).all():
                frame = int(np.flatnonzero(~np.isfinite(values))[0])
                raise ValueError(
                    f"column {name!r} holds {values[frame]} at frame {frame}; fix or drop the episode."
                )
            flat[name] = values
        position = columns.get(OBJECT_COLUMN)
        return cls(
            opening=flat[GRIPPER_COLUMN],
            grasped=flat[SIM_PREFIX + "grasp_success"] > 0.5,
            near=flat[SIM_PREFIX + "near_object"],
            obj_to_target=flat[SIM_PREFIX + "obj_to_target"],
            success=flat[SIM_PREFIX + "success"] > 0.5,
            hand=None if states is None or states.shape[1] < 3 else np.asarray(states[:, :3], np.float64),
            gripper_command=None if actions is None else np.asarray(actions[:, -1], np.float64),
            object_position=None if position is None else np.asarray(position, np.float64),
        )


def _first(flags: np.ndarray, after: int) -> int | None:
    """The first frame after ``after`` where ``flags`` holds."""
    hits = np.flatnonzero(flags[after + 1 :])
    return after + 1 + int(hits[0]) if len(hits) else None


def _rising(flags: np.ndarray) -> np.ndarray:
    """True where ``flags`` turns on (never at frame 0: nothing is known before it)."""
    edges = np.zeros(len(flags), bool)
    edges[1:] = flags[1:] & ~flags[:-1]
    return edges


def _closing(s: SimSignals, config: SimRuleConfig) -> np.ndarray:
    if s.gripper_command is not None:
        return s.gripper_command > config.close_command
    shrink = np.zeros(len(s), bool)
    shrink[1:] = np.diff(s.opening) < -config.gripper_change
    return shrink


def _progress(s: SimSignals, after: int, config: SimRuleConfig) -> int | None:
    """First frame after ``after`` at which the object has moved (its recorded position, measured from
    where it rests once the first ``settle_frames`` are over) or, without positions, approaches its
    target (``obj_to_target`` below its running peak)."""
    moved = np.zeros(len(s), bool)
    if s.object_position is not None:
        ref = min(max(after, config.settle_frames), len(s) - 1)
        shift = np.linalg.norm(s.object_position[ref:] - s.object_position[ref], axis=1)
        moved[ref:] = shift > config.object_motion
    else:
        distance = s.obj_to_target[max(after, 0) :]
        moved[max(after, 0) :] = distance < np.maximum.accumulate(distance) - config.progress_eps
    return _first(moved, after)


def _grasp_start(s: SimSignals, after: int, config: SimRuleConfig) -> int | None:
    start = _first(_rising(_closing(s, config)), after)
    # Near-object flags are 0/1 in Meta-World's grasping tasks; elsewhere the key holds a distance.
    if start is None and set(np.unique(s.near)) <= {0.0, 1.0}:
        start = _first(_rising(s.near > 0.5), after)
    return start


def _move_start(s: SimSignals, after: int, config: SimRuleConfig) -> int | None:
    start = _first(_rising(s.grasped), after)
    return start if start is not None else _progress(s, after, config)


def _place_start(s: SimSignals, after: int, config: SimRuleConfig) -> int | None:
    candidates = []
    # A task whose obj_to_target is (near) zero throughout does not measure the distance at all.
    if s.obj_to_target[after] > config.progress_eps:
        candidates.append(_first(s.obj_to_target <= config.place_fraction * s.obj_to_target[after], after))
    if s.gripper_command is not None:
        candidates.append(_first(_rising(s.gripper_command < -config.close_command), after))
    found = [c for c in candidates if c is not None]
    return min(found) if found else None


# Phase → the detector of its first frame, given the first frame of the phase before.
_Detector = Callable[[SimSignals, int, SimRuleConfig], int | None]
_CONTACT: dict[Phase, _Detector] = dict.fromkeys(
    (Phase.PUSH, Phase.PRESS, Phase.OPEN, Phase.CLOSE, Phase.PULL, Phase.TURN), _progress
)
_DETECTORS: dict[Phase, _Detector] = {
    Phase.GRASP: _grasp_start,
    Phase.MOVE: _move_start,
    Phase.PLACE: _place_start,
}
_DETECTORS |= _CONTACT


def segment_phases(
    signals: SimSignals, phases: tuple[Phase, ...], config: SimRuleConfig | None = None
) -> list[tuple[Phase, int, int]]:
    """(phase, first frame, last frame) covering every frame in order; missing phases left out."""
    config = config or SimRuleConfig()
    starts = [(phases[0], 0)]
    for phase in phases[1:]:
        start = _DETECTORS[phase](signals, starts[-1][1], config)
        if start is not None and start < len(signals):
            starts.append((phase, start))
    ranges = [
        (phase, start, (starts[i + 1][1] - 1) if i + 1 < len(starts) else len(signals) - 1)
        for i, (phase, start) in enumerate(starts)
    ]
    # Pieces shorter than min_subtask_frames join their predecessor (the first one its successor).
    merged: list[tuple[Phase, int, int]] = []
    for phase, lo, hi in ranges:
        if merged and hi - lo + 1 < config.min_subtask_frames:
            merged[-1] = (merged[-1][0], merged[-1][1], hi)
        else:
            merged.append((phase, lo, hi))
    if len(merged) > 1 and merged[0][2] + 1 < config.min_subtask_frames:
        merged[:2] = [(merged[1][0], 0, merged[1][2])]
    return merged


# Per phase: the sub-task text and what I do in it; where things stand when it starts (default: at the object).
_WORDS: dict[Phase, tuple[str, str]] = {
    Phase.REACH: ("Reach the {obj}", "I first move my gripper{dir} to the {obj}"),
    Phase.GRASP: ("Grasp the {obj}", "I close my gripper around it"),
    Phase.MOVE: ("Move the {obj} to the {target}", "I carry it{dir} towards the {target}"),
    Phase.PLACE: ("Place the {obj} at the {target}", "I bring it{dir} onto the {target}"),
    Phase.PUSH: ("Push the {obj} to the {target}", "I push it{dir} towards the {target}"),
    Phase.PRESS: ("Press the {obj}", "I press it{dir} all the way"),
    Phase.OPEN: ("Open the {obj}", "I pull it{dir} to open it"),
    Phase.CLOSE: ("Close the {obj}", "I push it{dir} to close it"),
    Phase.PULL: ("Pull the {obj}", "I pull it{dir}"),
    Phase.TURN: ("Turn the {obj}", "I turn it{dir}"),
}
_SITUATIONS = {
    Phase.REACH: "{scene}",
    Phase.MOVE: "I am holding the {obj}.",
    Phase.PLACE: "The {obj} is close to the {target}.",
    Phase.PUSH: "My gripper is against the {obj}.",
}


def _step(phase: Phase, values: dict[str, str], first: bool = False) -> str:
    """The phase as a step of a plan: "reach the puck" first, "grasp it" after the object is named."""
    text = _WORDS[phase][0].format(**values)
    return text.lower() if first else text.lower().replace(f"the {values['obj']}", "it", 1)


_AXES = (("right", "left"), ("forward", "backward"), ("up", "down"))
# Aim points are written in whole centimetres: about a puck's radius, and two digits per axis.
_CM_PER_M = 100.0
_AIM = re.compile(r"I aim at x (-?\d+) y (-?\d+) z (-?\d+)\.")


def aim_sentence(hand: np.ndarray) -> str:
    """ "I aim at x -4 y 68 z 2.": a hand position (metres) in whole centimetres."""
    x, y, z = (int(round(float(v) * _CM_PER_M)) for v in hand[:3])
    return f"I aim at x {x} y {y} z {z}."


def parse_aim(text: str) -> np.ndarray | None:
    """The first aim point written in ``text``, in metres (None when it names none)."""
    found = _AIM.search(text)
    return None if found is None else np.array([int(v) for v in found.groups()], np.float64) / _CM_PER_M


def _direction(signals: SimSignals, lo: int, hi: int, config: SimRuleConfig) -> str:
    """ " up and forward": the axes carrying at least a fifth of the hand's displacement over lo..hi."""
    if signals.hand is None:
        return ""
    delta = signals.hand[hi] - signals.hand[lo]
    total = float(np.linalg.norm(delta))
    if total < config.direction_eps:
        return ""
    shares = np.abs(delta) / total
    order = np.argsort(-shares, kind="stable")
    return " " + _join([_AXES[i][0 if delta[i] > 0 else 1] for i in order if shares[i] >= 0.2])


def _join(words: list[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


class SimRuleAnnotator:
    """Rule annotator for simulator datasets: phases from ``sim.*`` signals, HALO-style reasoning."""

    def __init__(self, config: SimRuleConfig | None = None):
        self.config = config or SimRuleConfig()
        # v2 writes aim points; v1 is the same text without them.
        self.info = {"backend": "rule", "model": "sim-rules-v2" if self.config.aim_point else "sim-rules-v1"}

    def _reasoning(self, values: dict[str, str], phase: Phase, next_phase: Phase | None, aim: str) -> str:
        situation = _SITUATIONS.get(phase, "My gripper is at the {obj}.").format(**values)
        then = (
            f", then {_step(next_phase, values)}" if next_phase is not None else ", and then the task is done"
        )
        sentence = f"{situation} {_WORDS[phase][1].format(**values)}{then}."
        words = sentence.split()
        # The aim point is kept whole: it is the part of the text that depends on the scene.
        budget = self.config.max_reasoning_words - len(aim.split())
        if len(words) > budget:
            sentence = " ".join(words[:budget]).rstrip(",.") + "."
        return f"{sentence} {aim}" if aim else sentence

    def annotate(self, context: EpisodeContext, signals: SimSignals) -> EpisodeAnnotation:
        """Cut the episode at the detected phase changes and write each piece's reasoning."""
        if len(signals) != context.num_frames:
            raise ValueError(
                f"episode {context.episode_index}: {len(signals)} frames of sim signals, {context.num_frames} frames."
            )
        family = task_family(context.instruction)
        obj, target = scene_nouns(context.instruction)
        where = "on the table in front of me" if obj in _LOOSE or obj == "object" else "in front of me"
        values = {"obj": obj, "target": target, "scene": f"The {obj} is {where}."}
        pieces = segment_phases(signals, family.phases, self.config)
        subtasks = []
        for i, (phase, start, end) in enumerate(pieces):
            values["dir"] = _direction(signals, start, end, self.config)
            following = pieces[i + 1][0] if i + 1 < len(pieces) else None
            text = _WORDS[phase][0].format(**values)
            aim = (
                aim_sentence(signals.hand[end]) if self.config.aim_point and signals.hand is not None else ""
            )
            subtasks.append(
                SubtaskAnnotation(text, start, end, self._reasoning(values, phase, following, aim), end)
            )
        steps = [_step(phase, values, first=i == 0) for i, (phase, _, _) in enumerate(pieces)]
        plan = f"{values['scene']} To {context.instruction.rstrip('.').lower()}, I will {_join(steps)}."
        phases = [p.value for p, _, _ in pieces]
        return context.annotated(plan, subtasks, dict(self.info) | {"family": family.name, "phases": phases})
