"""LLaVA-style conversation JSON → VQA :class:`EmCoTSample` s (``kind=SampleKind.VQA``).

Each record looks like ``{"id": …, "image": "a.jpg" | ["a.jpg", "b.jpg"] (optional),
"conversations": [{"from": "human", "value": "<image>\\nWhat is …?"}, {"from": "gpt", "value": "…"}, …]}``.
Images go first in the sequence, so ``<image>`` placeholders are removed from the text; human/gpt
turns pair up into (question, answer) turns, and only answers carry the loss. Images are read when
a sample is accessed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from emcot.io_utils import read_json, read_json_lines
from emcot.types import EmCoTSample, Observation, SampleKind

IMAGE_TOKEN = "<image>"
_HUMAN = ("human", "user")
_ASSISTANT = ("gpt", "assistant")


def conversation_turns(conversations: list[dict]) -> list[tuple[str, str]]:
    """Pairs of (question, answer) from alternating human/gpt messages."""
    turns = []
    if len(conversations) % 2:
        raise ValueError("a LLaVA conversation must alternate human and gpt messages in pairs")
    for human, gpt in zip(conversations[::2], conversations[1::2]):
        if human.get("from") not in _HUMAN or gpt.get("from") not in _ASSISTANT:
            raise ValueError(
                f"expected a human message then a gpt message, got {human.get('from')!r} then {gpt.get('from')!r}"
            )
        question = str(human["value"]).replace(IMAGE_TOKEN, "").strip()
        turns.append((question, str(gpt["value"]).strip()))
    return turns


class LlavaVQADataset:
    """Map-style VQA samples from a LLaVA JSON (or JSON-lines) file; ``image_root`` resolves image paths."""

    def __init__(
        self, path: str | Path, image_root: str | Path | None = None, max_samples: int | None = None
    ):
        path = Path(path)
        if not path.is_file():
            raise ValueError(
                f"VQA file {path} does not exist; point the recipe's data path at a LLaVA JSON file"
            )
        records = read_json_lines(path) if path.suffix == ".jsonl" else read_json(path, "VQA file")
        if not isinstance(records, list):
            raise ValueError(f"{path} must hold a JSON list of conversation records")
        self.records = records[:max_samples] if max_samples else records
        self.image_root = Path(image_root) if image_root is not None else path.parent

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[EmCoTSample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i: int) -> EmCoTSample:
        record = self.records[i]
        if "conversations" not in record:
            raise ValueError(f"VQA record {record.get('id', i)} has no 'conversations' list")
        turns = conversation_turns(record["conversations"])
        names = record.get("image") or []
        names = [names] if isinstance(names, str) else list(names)
        images = {
            f"image{k}": np.asarray(Image.open(self.image_root / name).convert("RGB"), dtype=np.uint8)
            for k, name in enumerate(names)
        }
        return EmCoTSample(
            observation=Observation(images),
            instruction=turns[0][0],
            reasoning=turns[0][1],
            kind=SampleKind.VQA,
            metadata={"turns": turns, "id": record.get("id", i)},
        )
