"""Text tokenizer interface shared by every implementation: markers, chat framing, metadata file.

The concrete tokenizers live in :mod:`emcot.tokenizers.text` (Hugging Face, Qwen2 format) and
:mod:`emcot.tokenizers.text_sentencepiece` (tiny models); import them from ``emcot.tokenizers.text``.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from emcot.io_utils import read_json

THINK_START = "<|think_start|>"
THINK_END = "<|think_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
ACTION_START = "<|action_start|>"
ACTION_END = "<|action_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

# Every marker the sequence builder needs as a single id, in a fixed order (the order new ids
# are appended in, so two tokenizers built from the same base agree on the added ids).
MARKERS: tuple[str, ...] = (
    THINK_START,
    THINK_END,
    VISION_START,
    VISION_END,
    ACTION_START,
    ACTION_END,
    IM_START,
    IM_END,
    ENDOFTEXT,
)

# Written next to the tokenizer files; records which implementation saved the folder and the
# prompt templates, so a policy folder is self-describing.
METADATA_FILE = "emcot_text_tokenizer.json"

DEFAULT_AGENT_TEMPLATE = (
    f"{IM_START}user\nYou are an embodied agent. Your task is to: {{instruction}}. Plan and act.{IM_END}\n"
    f"{IM_START}assistant\n"
)
DEFAULT_QUESTION_TEMPLATE = f"{IM_START}user\n{{question}}{IM_END}\n{IM_START}assistant\n"


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the marker tokens, which the sequence planner places around each stage; ``eos`` and
    ``pad`` are both ``<|endoftext|>`` (Qwen convention)."""

    think_start: int
    think_end: int
    vision_start: int
    vision_end: int
    action_start: int
    action_end: int
    im_start: int
    im_end: int
    eos: int
    pad: int

    @classmethod
    def from_lookup(cls, lookup: dict[str, int]) -> SpecialTokenIds:
        """Build from a ``marker string -> id`` mapping containing every entry of ``MARKERS``."""
        missing = [m for m in MARKERS if m not in lookup]
        if missing:
            raise ValueError(f"Tokenizer lacks marker tokens {missing}; add them as special tokens.")
        return cls(
            think_start=lookup[THINK_START],
            think_end=lookup[THINK_END],
            vision_start=lookup[VISION_START],
            vision_end=lookup[VISION_END],
            action_start=lookup[ACTION_START],
            action_end=lookup[ACTION_END],
            im_start=lookup[IM_START],
            im_end=lookup[IM_END],
            eos=lookup[ENDOFTEXT],
            pad=lookup[ENDOFTEXT],
        )

    def all_ids(self) -> frozenset[int]:
        """Every marker id (used to skip markers when decoding)."""
        return frozenset(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class PromptTemplate:
    """Chat framing: ``agent`` must contain ``{instruction}``, ``question`` must contain ``{question}``."""

    agent: str = DEFAULT_AGENT_TEMPLATE
    question: str = DEFAULT_QUESTION_TEMPLATE

    def __post_init__(self) -> None:
        if "{instruction}" not in self.agent:
            raise ValueError("PromptTemplate.agent must contain the placeholder '{instruction}'.")
        if "{question}" not in self.question:
            raise ValueError("PromptTemplate.question must contain the placeholder '{question}'.")

    def to_dict(self) -> dict[str, str]:
        """JSON-safe form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptTemplate:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        unknown = set(data) - {"agent", "question"}
        if unknown:
            raise ValueError(
                f"Unknown PromptTemplate keys {sorted(unknown)}; expected 'agent' and 'question'."
            )
        return cls(**data)


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, got {type(text).__name__}.")
    return text


def ids_to_list(ids: object) -> list[int]:
    """Accept a list/tuple of ints, a numpy array or a 1-D torch tensor and return ``list[int]``."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if not isinstance(ids, Sequence) or isinstance(ids, str):
        raise ValueError(f"Token ids must be a sequence of ints, got {type(ids).__name__}.")
    out = list(ids)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in out):
        raise ValueError("Token ids must be a flat sequence of ints (pass one sequence at a time).")
    return out


class TextTokenizer(ABC):
    """Common text tokenizer interface.

    ``encode`` adds no special tokens implicitly, but marker strings inside the text map to their
    single ids. ``len(tokenizer)`` and ``vocab_size`` count added tokens too.
    """

    kind: str = ""
    special: SpecialTokenIds
    template: PromptTemplate

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without implicit special tokens."""

    @abstractmethod
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; markers are dropped when ``skip_special_tokens``."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of ids, added tokens included."""

    @abstractmethod
    def _save_files(self, folder: Path) -> None:
        """Write the implementation's own files into ``folder``."""

    @property
    def vocab_size(self) -> int:
        """Same as ``len(self)``: the full vocabulary including added tokens."""
        return len(self)

    def frame_prompt(self, instruction: str) -> list[int]:
        """Ids of the HALO agent prompt (user turn + opened assistant turn) for ``instruction``."""
        instruction = _check_text(instruction, "instruction")
        return self.encode(self.template.agent.replace("{instruction}", instruction))

    def frame_question(self, question: str) -> list[int]:
        """Ids of a plain chat question (VQA) followed by an opened assistant turn."""
        question = _check_text(question, "question")
        return self.encode(self.template.question.replace("{question}", question))

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Save tokenizer files plus ``emcot_text_tokenizer.json`` (kind and templates) into ``folder``."""
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        self._save_files(path)
        meta = {"kind": self.kind, "template": self.template.to_dict()}
        (path / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def read_metadata(folder: Path) -> dict | None:
    """The metadata saved by :meth:`TextTokenizer.save_pretrained`, or None if the folder has none."""
    path = folder / METADATA_FILE
    if not path.is_file():
        return None
    meta = read_json(path, "tokenizer metadata")
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object; re-save the tokenizer.")
    return meta
