"""Episode annotators: the three-stage VLM annotator and the offline rule-based one.

Both turn an ``EpisodeContext`` (instruction, primitives, a few keyframes) into an
``EpisodeAnnotation``. The VLM annotator asks for (1) a task narrative, (2) the subtask sequence,
(3) each subtask's frame range with a first-person reasoning, and optionally (4) video-QA pairs —
questions asked at a frame whose answer shows only in an earlier keyframe; every reply is validated, an
invalid one is re-asked with the reason attached, and after ``max_reply_attempts`` the episode
is returned as ``status="failed"`` — never accepted silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emcot.training.annotation.annotations import EpisodeAnnotation, SubtaskAnnotation
from emcot.training.annotation.primitives import PrimitiveSegment, primitive_log, primitives_in_range
from emcot.training.annotation.sim_rules import SimRuleAnnotator, SimRuleConfig, SimSignals
from emcot.training.annotation.vlm_backends import BackendError, VLMBackend, VLMRequest
from emcot.training.annotation.vlm_prompts import (
    STAGES,
    ReplyError,
    load_prompt,
    parse_alignment,
    parse_narrative,
    parse_subtasks,
    parse_video_qa,
)


@dataclass
class EpisodeContext:
    """What an annotator knows about one episode."""

    episode_index: int
    instruction: str
    num_frames: int
    fps: float
    primitives: list[PrimitiveSegment]
    keyframes: list[int] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    dataset: str = ""
    # Simulator columns (``sim.*``, see sim_rules) and the raw vectors, for the simulator rules.
    signals: dict[str, np.ndarray] = field(default_factory=dict)
    states: np.ndarray | None = None
    actions: np.ndarray | None = None

    def annotated(
        self,
        plan: str,
        subtasks: list,
        annotator: dict,
        *,
        prompt_versions: dict | None = None,
        attempts: int = 1,
        video_qa: list | None = None,
    ) -> EpisodeAnnotation:
        """A validated successful record for this episode."""
        return EpisodeAnnotation(
            episode_index=self.episode_index,
            num_frames=self.num_frames,
            instruction=self.instruction,
            plan=plan,
            subtasks=subtasks,
            primitives=self.primitives,
            annotator=dict(annotator),
            prompt_versions=dict(prompt_versions or {}),
            attempts=attempts,
            dataset=self.dataset,
            video_qa=list(video_qa or []),
        ).validate()

    def failed(
        self, error: str, annotator: dict, prompt_versions: dict, attempts: int = 1
    ) -> EpisodeAnnotation:
        """A failure record for this episode."""
        return EpisodeAnnotation(
            episode_index=self.episode_index,
            num_frames=self.num_frames,
            instruction=self.instruction,
            status="failed",
            primitives=self.primitives,
            annotator=annotator,
            prompt_versions=prompt_versions,
            error=error,
            attempts=attempts,
            dataset=self.dataset,
        )


@dataclass(frozen=True)
class VLMAnnotatorConfig:
    """Limits and prompt versions of the three-stage annotator. ``video_qa_pairs`` > 0 adds a fourth
    stage asking for up to that many video-QA pairs about the episode's past (0: no such stage)."""

    prompt_version: str = "v1"
    max_reply_attempts: int = 3
    max_reasoning_words: int = 50
    max_narrative_words: int = 120
    max_subtasks: int = 12
    max_subtask_words: int = 12
    system_prompt: str | None = None
    video_qa_pairs: int = 0
    max_answer_words: int = 20

    def __post_init__(self):
        if self.max_reply_attempts < 1 or self.max_reasoning_words < 1:
            raise ValueError("max_reply_attempts and max_reasoning_words must be >= 1.")
        if self.video_qa_pairs < 0 or self.max_answer_words < 1:
            raise ValueError("video_qa_pairs must be >= 0 and max_answer_words >= 1.")


class AnnotationFailure(Exception):
    """A stage that produced no valid reply."""

    def __init__(self, stage: str, reason: str, attempts: int):
        super().__init__(f"stage {stage}: {reason} (after {attempts} attempt(s))")
        self.attempts = attempts


class VLMAnnotator:
    """Narrative → subtasks → aligned reasoning (→ video-QA pairs), through any ``VLMBackend``."""

    def __init__(self, backend: VLMBackend, config: VLMAnnotatorConfig | None = None):
        self.backend = backend
        self.config = config or VLMAnnotatorConfig()
        stages = [s for s in STAGES if s != "video_qa" or self.config.video_qa_pairs]
        self.prompts = {s: load_prompt(s, self.config.prompt_version) for s in stages}

    @property
    def info(self) -> dict:
        """Annotator identity stored with every annotation."""
        return {"backend": self.backend.name, "model": self.backend.model}

    @property
    def prompt_versions(self) -> dict:
        """Prompt version per stage."""
        return {stage: prompt.version for stage, prompt in self.prompts.items()}

    def _ask(self, stage: str, context: EpisodeContext, parse, **values):
        frame_list = "\n".join(f"image {i + 1}: frame {f}" for i, f in enumerate(context.keyframes))
        prompt = self.prompts[stage].render(
            instruction=context.instruction,
            num_frames=context.num_frames,
            last_frame=context.num_frames - 1,
            fps=f"{context.fps:g}",
            frame_list=frame_list or "(no images)",
            primitive_log=primitive_log(context.primitives) or "(no motion recorded)",
            **values,
        )
        feedback = ""
        for attempt in range(1, self.config.max_reply_attempts + 1):
            request = VLMRequest(prompt + feedback, list(context.images), self.config.system_prompt)
            try:
                reply = self.backend.complete(request)
            except BackendError as exc:
                raise AnnotationFailure(stage, str(exc), attempt) from exc
            try:
                return parse(reply), attempt
            except ReplyError as exc:
                reason = str(exc)
                feedback = (
                    f"\n\nYour previous answer was rejected: {reason}. Answer again with the JSON only."
                )
        raise AnnotationFailure(stage, f"invalid reply: {reason}", self.config.max_reply_attempts)

    def annotate(self, context: EpisodeContext) -> EpisodeAnnotation:
        """Run the three stages; a stage without a valid reply gives a failed annotation."""
        cfg, attempts = self.config, 0
        try:
            narrative, n = self._ask(
                "narrative",
                context,
                lambda r: parse_narrative(r, cfg.max_narrative_words),
                max_words=cfg.max_narrative_words,
            )
            attempts += n
            subtasks, n = self._ask(
                "subtasks",
                context,
                lambda r: parse_subtasks(r, cfg.max_subtasks, cfg.max_subtask_words),
                narrative=narrative,
                max_subtasks=cfg.max_subtasks,
                max_subtask_words=cfg.max_subtask_words,
            )
            attempts += n
            segments, n = self._ask(
                "alignment",
                context,
                lambda r: parse_alignment(r, subtasks, context.num_frames, cfg.max_reasoning_words),
                subtask_list="\n".join(f"{i + 1}. {s}" for i, s in enumerate(subtasks)),
                max_words=cfg.max_reasoning_words,
            )
            attempts += n
            video_qa: list = []
            if cfg.video_qa_pairs:
                video_qa, n = self._ask(
                    "video_qa",
                    context,
                    lambda r: parse_video_qa(
                        r, context.keyframes, context.num_frames, cfg.video_qa_pairs, cfg.max_answer_words
                    ),
                    max_pairs=cfg.video_qa_pairs,
                    max_words=cfg.max_answer_words,
                )
                attempts += n
        except AnnotationFailure as exc:
            return context.failed(str(exc), self.info, self.prompt_versions, attempts + exc.attempts)
        return context.annotated(
            narrative,
            segments,
            self.info,
            prompt_versions=self.prompt_versions,
            attempts=attempts,
            video_qa=video_qa,
        )


@dataclass(frozen=True)
class RuleAnnotatorConfig:
    """The rule-based annotator cuts a subtask after every grasp or release; tiny pieces are merged.

    An episode that carries simulator signals (``sim.*`` columns) is cut by the simulator rules
    (``sim``) instead, unless ``use_sim_signals`` is off.
    """

    min_subtask_frames: int = 3
    max_reasoning_words: int = 50
    use_sim_signals: bool = True
    sim: SimRuleConfig = field(default_factory=SimRuleConfig)


def _to_first_person(sentence: str) -> str:
    # "move the left gripper up" -> "moving my left gripper up"; the verbs are the primitives' own.
    verb, _, rest = sentence.partition(" ")
    gerund = {"move": "moving", "close": "closing", "open": "opening", "keep": "keeping"}.get(verb, verb)
    return f"{gerund} {rest.replace('the ', 'my ', 1)}"


class RuleAnnotator:
    """Offline annotator: subtasks and reasoning written from the primitives and the instruction."""

    def __init__(self, config: RuleAnnotatorConfig | None = None):
        self.config = config or RuleAnnotatorConfig()
        self._sim = SimRuleAnnotator(self.config.sim)

    info = {"backend": "rule", "model": "primitives-v1"}
    prompt_versions: dict = {}

    def _cuts(self, context: EpisodeContext) -> list[tuple[int, int]]:
        last = context.num_frames - 1
        ends = sorted({p.end for p in context.primitives if p.kind in ("grasp", "release") and p.end < last})
        ranges, start = [], 0
        for end in ends + [last]:
            ranges.append((start, end))
            start = end + 1
        # Pieces shorter than min_subtask_frames join their predecessor (the first one its successor).
        merged: list[tuple[int, int]] = []
        for lo, hi in ranges:
            if merged and hi - lo + 1 < self.config.min_subtask_frames:
                merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        if len(merged) > 1 and merged[0][1] + 1 < self.config.min_subtask_frames:
            merged[:2] = [(0, merged[1][1])]
        return merged

    @staticmethod
    def _subtask_text(events: list[PrimitiveSegment], instruction: str, alone: bool) -> str:
        kinds = [p.kind for p in events]
        if "grasp" in kinds and "release" in kinds:
            return "Hand over or reposition the object"
        if "grasp" in kinds:
            return "Reach and grasp the object"
        if "release" in kinds:
            return "Place and release the object"
        if "move" in kinds:
            return "Move the arm into position"
        # A still stretch is the whole task only when nothing else happens in the episode.
        return instruction[0].upper() + instruction[1:] if alone else "Hold still and check the result"

    def _reasoning(
        self, context: EpisodeContext, text: str, events: list[PrimitiveSegment], last: bool
    ) -> str:
        motions = list(dict.fromkeys(_to_first_person(p.sentence()) for p in events)) or [
            "keeping my arms still"
        ]
        motion = ", then ".join(motions[:3])
        goal = context.instruction.rstrip(".")
        why = "to finish the task" if last else "as the next step"
        sentence = f"My goal is to {goal[0].lower() + goal[1:]}. I {text[0].lower() + text[1:]} {why}, so I am {motion}."
        words = sentence.split()
        if len(words) > self.config.max_reasoning_words:
            sentence = " ".join(words[: self.config.max_reasoning_words]).rstrip(",.") + "."
        return sentence

    def annotate(self, context: EpisodeContext) -> EpisodeAnnotation:
        """Cut at gripper events, name each piece from its primitives, write a first-person reasoning.

        With simulator signals in the context, the simulator rules cut and write instead.
        """
        if self.config.use_sim_signals:
            signals = SimSignals.from_columns(context.signals, context.states, context.actions)
            if signals is not None:
                return self._sim.annotate(context, signals)
        ranges = self._cuts(context)
        subtasks = []
        for i, (start, end) in enumerate(ranges):
            events = primitives_in_range(context.primitives, start, end)
            text = self._subtask_text(events, context.instruction, len(ranges) == 1)
            reasoning = self._reasoning(context, text, events, i == len(ranges) - 1)
            subtasks.append(SubtaskAnnotation(text, start, end, reasoning, end))
        steps = "; ".join(f"{i + 1}) {s.text.lower()}" for i, s in enumerate(subtasks))
        plan = f"To {context.instruction.rstrip('.').lower()}, I will {steps}."
        return context.annotated(plan, subtasks, self.info, prompt_versions=self.prompt_versions)
