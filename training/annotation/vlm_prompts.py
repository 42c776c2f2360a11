"""Versioned prompt files for the annotation stages (three, plus the optional video-QA one), and
strict parsing of the replies.

Prompts live in ``training/annotation/prompts/<stage>_<version>.txt`` and use ``$name`` placeholders
(``string.Template``), so the JSON examples inside them need no escaping. Every reply is parsed
into a typed value or rejected with a ``ReplyError`` that says what was wrong; the annotator
sends that reason back to the model when it retries.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from importlib import resources

from emcot.training.annotation.annotations import SubtaskAnnotation, VideoQA

STAGES = ("narrative", "subtasks", "alignment", "video_qa")


class ReplyError(ValueError):
    """A model reply that is not valid JSON or breaks the stage's schema or limits."""


@dataclass(frozen=True)
class PromptTemplate:
    """One stage's prompt text at one version."""

    stage: str
    version: str
    text: str

    def render(self, **values) -> str:
        """Fill the ``$placeholders``; a missing value is a ValueError naming it."""
        try:
            return string.Template(self.text).substitute(**{k: str(v) for k, v in values.items()})
        except KeyError as exc:
            raise ValueError(f"Prompt {self.stage}_{self.version} needs the value {exc.args[0]!r}.") from exc


def load_prompt(stage: str, version: str = "v1") -> PromptTemplate:
    """Load ``prompts/<stage>_<version>.txt`` from the installed package."""
    if stage not in STAGES:
        raise ValueError(f"Unknown annotation stage {stage!r}; stages are {STAGES}.")
    resource = resources.files("emcot.training.annotation") / "prompts" / f"{stage}_{version}.txt"
    if not resource.is_file():
        raise ValueError(
            f"No prompt file prompts/{stage}_{version}.txt; available versions are listed in that folder."
        )
    return PromptTemplate(stage, version, resource.read_text(encoding="utf-8"))


def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())


def extract_json(reply: str):
    """The first JSON value in ``reply``, tolerating code fences and text around it."""
    text = re.sub(r"```[a-zA-Z]*", "", reply).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            return decoder.raw_decode(text, match.start())[0]
        except json.JSONDecodeError:
            continue
    raise ReplyError("the reply contains no valid JSON object")


def _object_with(reply: str, key: str, kind: type):
    data = extract_json(reply)
    if not isinstance(data, dict) or key not in data:
        raise ReplyError(f'the reply must be a JSON object with the key "{key}"')
    if not isinstance(data[key], kind):
        raise ReplyError(f'"{key}" must be a {kind.__name__}')
    return data[key]


def parse_narrative(reply: str, max_words: int = 120) -> str:
    """Stage 1: ``{"narrative": str}`` with a non-empty text of at most ``max_words`` words."""
    narrative = _object_with(reply, "narrative", str).strip()
    if not narrative:
        raise ReplyError("the narrative is empty")
    if word_count(narrative) > max_words:
        raise ReplyError(f"the narrative has {word_count(narrative)} words; the limit is {max_words}")
    return narrative


def parse_subtasks(reply: str, max_subtasks: int = 12, max_words: int = 12) -> list[str]:
    """Stage 2: ``{"subtasks": [str, ...]}``, 1..max_subtasks distinct short phrases."""
    items = _object_with(reply, "subtasks", list)
    if not 1 <= len(items) <= max_subtasks:
        raise ReplyError(f"give between 1 and {max_subtasks} subtasks, not {len(items)}")
    subtasks = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise ReplyError(f"subtask {i + 1} must be a non-empty string")
        if word_count(item) > max_words:
            raise ReplyError(f"subtask {i + 1} has {word_count(item)} words; the limit is {max_words}")
        subtasks.append(item.strip())
    if len({s.lower() for s in subtasks}) != len(subtasks):
        raise ReplyError("the subtasks must be distinct")
    return subtasks


def _normalise(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def parse_alignment(
    reply: str, subtasks: list[str], num_frames: int, max_words: int = 50
) -> list[SubtaskAnnotation]:
    """Stage 3: one segment per subtask, in order, contiguous over ``0..num_frames-1``.

    Each segment is ``{"subtask", "start", "end", "reasoning"}``; the reasoning must be
    non-empty and at most ``max_words`` words. The subgoal frame is the segment's last frame.
    """
    segments = _object_with(reply, "segments", list)
    if len(segments) != len(subtasks):
        raise ReplyError(f"give exactly {len(subtasks)} segments, one per subtask, not {len(segments)}")
    out, expected_start = [], 0
    for i, (segment, subtask) in enumerate(zip(segments, subtasks)):
        if not isinstance(segment, dict) or not {"subtask", "start", "end", "reasoning"} <= set(segment):
            raise ReplyError(
                f'segment {i + 1} must be an object with "subtask", "start", "end" and "reasoning"'
            )
        if not isinstance(segment["subtask"], str) or _normalise(segment["subtask"]) != _normalise(subtask):
            raise ReplyError(f'segment {i + 1} must be the subtask "{subtask}", in plan order')
        start, end = segment["start"], segment["end"]
        if (
            isinstance(start, bool)
            or isinstance(end, bool)
            or not isinstance(start, int)
            or not isinstance(end, int)
        ):
            raise ReplyError(f"segment {i + 1}: start and end must be integer frame numbers")
        if start != expected_start:
            raise ReplyError(
                f"segment {i + 1} must start at frame {expected_start} (no gaps or overlaps), not {start}"
            )
        if not start <= end <= num_frames - 1:
            raise ReplyError(
                f"segment {i + 1}: end {end} must lie between {start} and the last frame {num_frames - 1}"
            )
        reasoning = segment["reasoning"]
        if not isinstance(reasoning, str) or not reasoning.strip():
            raise ReplyError(f"segment {i + 1} needs a non-empty reasoning")
        if word_count(reasoning) > max_words:
            raise ReplyError(
                f"segment {i + 1} reasoning has {word_count(reasoning)} words; the limit is {max_words}"
            )
        out.append(SubtaskAnnotation(subtask, start, end, reasoning.strip(), end))
        expected_start = end + 1
    if expected_start != num_frames:
        raise ReplyError(
            f"the last segment must end at the last frame {num_frames - 1}, not {expected_start - 1}"
        )
    return out


def parse_video_qa(
    reply: str, keyframes: list[int], num_frames: int, max_pairs: int = 4, max_words: int = 20
) -> list[VideoQA]:
    """Video-QA stage: ``{"pairs": [{"question", "answer", "asked_at", "evidence"}, ...]}``, 1..max_pairs
    distinct questions ending in "?", short answers, ``evidence`` a shown frame before ``asked_at``
    and ``asked_at`` a frame of the recording."""
    items = _object_with(reply, "pairs", list)
    if not 1 <= len(items) <= max_pairs:
        raise ReplyError(f"give between 1 and {max_pairs} pairs, not {len(items)}")
    pairs, seen = [], set()
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not {"question", "answer", "asked_at", "evidence"} <= set(item):
            raise ReplyError(
                f'pair {i} must be an object with "question", "answer", "asked_at" and "evidence"'
            )
        question, answer, asked, evidence = (item[k] for k in ("question", "answer", "asked_at", "evidence"))
        if not isinstance(question, str) or not question.strip().endswith("?"):
            raise ReplyError(f'pair {i}: the question must be a string ending with "?"')
        if not isinstance(answer, str) or not answer.strip():
            raise ReplyError(f"pair {i} needs a non-empty answer")
        if word_count(answer) > max_words:
            raise ReplyError(f"pair {i} answer has {word_count(answer)} words; the limit is {max_words}")
        if any(isinstance(x, bool) or not isinstance(x, int) for x in (asked, evidence)):
            raise ReplyError(f"pair {i}: asked_at and evidence must be integer frame numbers")
        if evidence not in keyframes:
            raise ReplyError(f"pair {i}: evidence {evidence} must be one of the frames shown, {keyframes}")
        if not evidence < asked <= num_frames - 1:
            raise ReplyError(
                f"pair {i}: asked_at {asked} must come after evidence {evidence} and by the last frame {num_frames - 1}"
            )
        if _normalise(question) in seen:
            raise ReplyError("the questions must be distinct")
        seen.add(_normalise(question))
        pairs.append(VideoQA(question.strip(), answer.strip(), asked, evidence))
    return pairs
