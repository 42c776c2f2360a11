"""Stage-1 VQA from robot demos: questions about a frame answered from the recorded state and signals.

HALO's stage 1 keeps the understanding expert grounded with VQA; scripted demos have no captions,
but what they record answers simple questions about each frame exactly: the gripper's place
(coarse words from the state's xyz within the workspace the dataset covers), whether it is open,
what the task is, and — from the simulator's ``sim.*`` columns — whether the object is held, the
gripper is near it or the task is done. With an annotation sidecar the current sub-task answers
"what should the robot do next?". A sample shows one camera frame (VQA samples carry no state, so
the answer has to be read from the image) and asks ``turns`` of the questions that frame can answer.

With ``history`` on, every sample also carries the episode's earlier anchors (frame, state and the
actions recorded until the next anchor) and the video-QA questions about them join in: where the
gripper was when the episode began, and whether the object has been held yet (``sim.grasp_success``
at any earlier frame). Their answers need the history, and form the ``vqa`` loss term. An
annotation sidecar written with the VLM's video-QA stage (``emcot annotate --video-qa N``) adds one
sample per pair, asked at its frame, with the pair's evidence frame among the history anchors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, check_fields
from emcot.training.annotation.annotations import EpisodeAnnotation, read_annotations
from emcot.training.data.lerobot import LeRobotDataset, LeRobotEpisode
from emcot.types import EmCoTSample, HistoryStep, Observation, SampleKind

SIM = "sim."
# Meta-World's hand xyz: x runs left → right, y away from the robot's base, z up.
_AXIS_WORDS = (("left", "centre", "right"), ("near", "middle", "far"), ("low", "middle-height", "high"))


class Question(str, Enum):
    """The questions a demo frame can answer (each answered by one function of :class:`FrameFacts`)."""

    GRIPPER_PLACE = "gripper_place"
    GRIPPER_OPEN = "gripper_open"
    TASK = "task"
    NEXT_STEP = "next_step"
    HOLDING = "holding"
    NEAR_OBJECT = "near_object"
    DONE = "done"
    START_PLACE = "start_place"  # video-QA: needs the history
    HELD_BEFORE = "held_before"  # video-QA: needs the history


@dataclass(frozen=True)
class FrameFacts:
    """What the recording says about one frame: xyz in [0, 1] of the workspace, opening, signals,
    sub-task; with a history, the place at the episode's first frame and whether the object was held
    at any frame so far."""

    instruction: str
    place: np.ndarray | None
    open: bool | None
    signals: dict[str, float]
    subtask: str | None
    start_place: np.ndarray | None = None
    held_before: bool | None = None


def _place_words(place: np.ndarray) -> list[str]:
    return [names[min(2, int(v * 3))] for names, v in zip(_AXIS_WORDS, place)]


def _place(facts: FrameFacts) -> str | None:
    if facts.place is None:
        return None
    words = _place_words(facts.place)
    return f"The gripper is {words[2]}, {words[0]} and {words[1]}."


def _start_place(facts: FrameFacts) -> str | None:
    if facts.start_place is None:
        return None
    words = _place_words(facts.start_place)
    return f"At the start the gripper was {words[2]}, {words[0]} and {words[1]}."


# The sim column (without the prefix) each yes/no question reads.
_SIGNALS = {Question.HOLDING: "grasp_success", Question.NEAR_OBJECT: "near_object", Question.DONE: "success"}


def _flag(key: str, yes: str, no: str) -> Callable[[FrameFacts], str | None]:
    def answer(facts: FrameFacts) -> str | None:
        value = facts.signals.get(SIM + key)
        return None if value is None else (yes if value > 0.5 else no)

    return answer


QUESTIONS: dict[Question, tuple[str, Callable[[FrameFacts], str | None]]] = {
    Question.GRIPPER_PLACE: ("Where is the gripper?", _place),
    Question.GRIPPER_OPEN: (
        "Is the gripper open or closed?",
        lambda f: None if f.open is None else f"The gripper is {'open' if f.open else 'closed'}.",
    ),
    Question.TASK: ("What is the task?", lambda f: f.instruction),
    Question.NEXT_STEP: (
        "What should the robot do next?",
        lambda f: f.subtask and f"{f.subtask.rstrip('.')}.",
    ),
    Question.HOLDING: (
        "Is the robot holding the object?",
        _flag(
            _SIGNALS[Question.HOLDING], "Yes, the object is in the gripper.", "No, the gripper holds nothing."
        ),
    ),
    Question.NEAR_OBJECT: (
        "Is the gripper near the object?",
        _flag(
            _SIGNALS[Question.NEAR_OBJECT],
            "Yes, the gripper is at the object.",
            "No, the gripper is away from the object.",
        ),
    ),
    Question.DONE: (
        "Is the task done?",
        _flag(_SIGNALS[Question.DONE], "Yes, the task is done.", "No, the task is not done yet."),
    ),
    Question.START_PLACE: ("Where was the gripper when the episode began?", _start_place),
    Question.HELD_BEFORE: (
        "Has the robot held the object yet?",
        lambda f: (
            None
            if f.held_before is None
            else ("Yes, it has held the object." if f.held_before else "No, it has not held the object yet.")
        ),
    ),
}


def vqa_corpus() -> list[str]:
    """Every question and fixed answer text (for training a tokenizer that covers this data)."""
    texts = [q for q, _ in QUESTIONS.values()]
    texts += [
        f"The gripper is {z}, {x} and {y}."
        for z in _AXIS_WORDS[2]
        for x in _AXIS_WORDS[0]
        for y in _AXIS_WORDS[1]
    ]
    texts += [
        f"At the start the gripper was {z}, {x} and {y}."
        for z in _AXIS_WORDS[2]
        for x in _AXIS_WORDS[0]
        for y in _AXIS_WORDS[1]
    ]
    texts += ["Yes, it has held the object.", "No, it has not held the object yet."]
    texts += ["The gripper is open.", "The gripper is closed."]
    for question in (Question.HOLDING, Question.NEAR_OBJECT, Question.DONE):
        answer = QUESTIONS[question][1]
        texts += [
            answer(FrameFacts("", None, None, {SIM + _SIGNALS[question]: v}, None)) or "" for v in (0.0, 1.0)
        ]
    return [t for t in texts if t]


@dataclass(frozen=True)
class DemoVQAConfig:
    """Which frames become samples and which questions they ask.

    Anchors are every ``stride`` frames; each asks ``turns`` questions drawn (seeded per frame) from
    ``questions`` that the frame can answer. ``workspace_low``/``workspace_high`` bound the xyz that
    the place words divide into thirds (None: the dataset's ``observation.state`` min/max);
    the gripper counts as open above ``open_above`` (None: the middle of the opening's range).
    ``history``: attach the earlier anchors and ask the video-QA questions too.
    """

    camera: str | None = None
    stride: int = 8
    turns: int = 2
    questions: tuple[Question, ...] = tuple(Question)
    seed: int = 0
    workspace_low: tuple[float, float, float] | None = None
    workspace_high: tuple[float, float, float] | None = None
    open_above: float | None = None
    history: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "questions", tuple(Question(q) for q in self.questions))
        except ValueError:
            raise ValueError(
                f"DemoVQAConfig.questions must be among {[q.value for q in Question]}, got {list(self.questions)}"
            ) from None
        if not self.questions:
            raise ValueError("DemoVQAConfig.questions is empty; list at least one question")
        check_fields(self, "DemoVQAConfig", stride=AT_LEAST_ONE, turns=AT_LEAST_ONE, seed=NON_NEGATIVE)


class DemoVQADataset:
    """Map-style VQA samples (``kind=SampleKind.VQA``) over the frames of a LeRobot dataset's demos.

    Episodes are decoded lazily and the last one is kept, so reading in order decodes each once.
    """

    def __init__(
        self,
        dataset: LeRobotDataset,
        annotations: str | Path | dict[int, EpisodeAnnotation] | None = None,
        config: DemoVQAConfig | None = None,
    ) -> None:
        self.dataset = dataset
        self.config = config or DemoVQAConfig()
        if isinstance(annotations, (str, Path)):
            annotations = read_annotations(annotations)
        self.annotations = annotations or {}
        camera = self.config.camera or next(iter(dataset.cameras), None)
        if camera is None or camera not in dataset.cameras:
            raise ValueError(f"camera {camera!r} is not in the dataset's cameras {sorted(dataset.cameras)}")
        self.camera: str = camera
        self._low, self._span, self._open = self._workspace()
        # (episode, frame, None) asks the rule questions; (episode, frame, k) the annotation's k-th video-QA pair
        self.index: list[tuple[int, int, int | None]] = [
            (episode, t, None)
            for episode in dataset.episode_indices
            for t in range(0, dataset.record(episode).length, self.config.stride)
        ]
        if self.config.history:
            self.index += [
                (episode, qa.asked_at, k)
                for episode in dataset.episode_indices
                for k, qa in enumerate(self._video_qa(episode, dataset.record(episode).length))
            ]

    def _video_qa(self, episode: int, length: int) -> list:
        annotation = self.annotations.get(episode)
        if annotation is None or annotation.status != "ok" or annotation.num_frames != length:
            return []
        return annotation.video_qa

    def _workspace(self) -> tuple[np.ndarray | None, np.ndarray | None, float | None]:
        """xyz origin and extent of the place words and the open threshold, from the config or the stats."""
        cfg, stats = self.config, self.dataset.stats.get(self.dataset.state_key or "", {})
        low = cfg.workspace_low or (tuple(stats["min"][:3]) if "min" in stats else None)
        high = cfg.workspace_high or (tuple(stats["max"][:3]) if "max" in stats else None)
        if low is None or high is None:
            return None, None, cfg.open_above
        lo = np.asarray(low, np.float64)
        span = np.maximum(np.asarray(high, np.float64) - lo, 1e-6)
        threshold = cfg.open_above
        if threshold is None and "min" in stats and len(stats["min"]) > 3:
            threshold = float(stats["min"][3] + stats["max"][3]) / 2
        return lo, span, threshold

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[EmCoTSample]:
        return (self[i] for i in range(len(self)))

    def facts(self, episode: LeRobotEpisode, t: int) -> FrameFacts:
        """What the recording says about frame ``t`` of ``episode``."""
        state = None if episode.states is None else episode.states[t]
        place = opening = None
        if state is not None and self._low is not None and self._span is not None and len(state) >= 3:
            place = np.clip((state[:3] - self._low) / self._span, 0.0, 1.0)
        if state is not None and self._open is not None and len(state) > 3:
            opening = bool(state[3] > self._open)
        signals = {k: float(v[t].reshape(-1)[0]) for k, v in episode.columns(SIM).items()}
        annotation = self.annotations.get(episode.episode_index)
        subtask = None
        if annotation is not None and annotation.status == "ok" and annotation.num_frames == len(episode):
            subtask = annotation.subtasks[annotation.subtask_index_at(t)].text
        start_place = held_before = None
        if self.config.history and t > 0:
            start_place = self.facts(episode, 0).place
            held = episode.columns(SIM).get(SIM + _SIGNALS[Question.HOLDING])
            held_before = None if held is None else bool((np.asarray(held[: t + 1]) > 0.5).any())
        return FrameFacts(episode.instruction, place, opening, signals, subtask, start_place, held_before)

    def history(
        self, episode: LeRobotEpisode, t: int, extra: tuple[int, ...] = ()
    ) -> tuple[HistoryStep, ...]:
        """The anchors before frame ``t`` (every ``stride`` frames, plus the ``extra`` frames), oldest
        first, each with the actions recorded until the next one."""
        frames = episode.images(self.camera)
        anchors = sorted(set(range(0, t, self.config.stride)) | {a for a in extra if a < t})
        return tuple(
            HistoryStep(
                frames[a],
                None if episode.states is None else episode.states[a],
                None if episode.actions is None else episode.actions[a:end],
            )
            for a, end in zip(anchors, anchors[1:] + [t], strict=True)
        )

    def __getitem__(self, i: int) -> EmCoTSample:
        episode_index, t, pair = self.index[i]
        episode = self.dataset.episode(episode_index)
        if pair is not None:
            qa = self._video_qa(episode_index, len(episode))[pair]
            return EmCoTSample(
                observation=Observation({self.camera: episode.images(self.camera)[t]}),
                instruction=qa.question,
                reasoning=qa.answer,
                robot=self.dataset.name,
                kind=SampleKind.VQA,
                metadata={"turns": [(qa.question, qa.answer)], "episode": episode_index, "frame": t},
                history=self.history(episode, t, extra=(qa.evidence,)),
            )
        facts = self.facts(episode, t)
        answered = [(QUESTIONS[q][0], QUESTIONS[q][1](facts)) for q in self.config.questions]
        turns = [(q, a) for q, a in answered if a]
        if not turns:
            raise ValueError(
                f"frame {t} of episode {episode_index} answers none of {[q.value for q in self.config.questions]}; "
                "add 'task' to DemoVQAConfig.questions"
            )
        rng = np.random.default_rng([self.config.seed, episode_index, t])
        picked = [turns[k] for k in rng.permutation(len(turns))[: self.config.turns]]
        return EmCoTSample(
            observation=Observation({self.camera: episode.images(self.camera)[t]}),
            instruction=picked[0][0],
            reasoning=picked[0][1],
            robot=self.dataset.name,
            kind=SampleKind.VQA,
            metadata={"turns": picked, "episode": episode_index, "frame": t},
            history=self.history(episode, t) if self.config.history else (),
        )
