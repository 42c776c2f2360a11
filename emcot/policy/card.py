"""A policy's card: what it was trained on and how to evaluate it, saved beside its weights.

``policy_card.json`` records the benchmark a policy belongs to (e.g. ``metaworld``), its task
list and evaluation protocol, how it was trained (recipes, steps, data), and one real observation
(``example_observation.png`` plus state and instruction) so that a demo can show a trace without
the simulator. ``emcot eval`` reads the card's tasks when ``--tasks`` is not given, so a policy is
evaluated on what it was trained for.

API:
- ``ExampleObservation(image, instruction, state, task)`` — ``image`` is a file name in the folder.
- ``PolicyCard(benchmark, tasks, camera, resolution, evaluation, training, example)``;
  ``save(folder, example_image=None)``, ``PolicyCard.load(folder) -> PolicyCard | None``,
  ``example_image(folder) -> uint8 image`` (``EmCoTPolicy.example()`` pairs it with the state).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emcot.io_utils import dataclass_from_dict, read_json

CARD_FILE = "policy_card.json"


@dataclass(frozen=True)
class ExampleObservation:
    """One real observation shipped with the policy: image file, instruction, state, task."""

    image: str
    instruction: str
    state: tuple[float, ...] | None = None
    task: str | None = None

    def __post_init__(self) -> None:
        if self.state is not None:  # JSON reads it back as a list
            object.__setattr__(self, "state", tuple(float(x) for x in self.state))


@dataclass(frozen=True)
class PolicyCard:
    """The benchmark, tasks and protocol a policy was trained and is evaluated under."""

    benchmark: str
    tasks: tuple[str, ...]
    camera: str
    resolution: int
    evaluation: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    example: ExampleObservation | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("a policy card lists at least one task")
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if isinstance(self.example, dict):
            object.__setattr__(self, "example", dataclass_from_dict(ExampleObservation, self.example))

    def save(self, folder: str | Path, example_image: np.ndarray | None = None) -> Path:
        """Write ``policy_card.json`` (and the example image, when given) into ``folder``."""
        folder = Path(folder)
        if example_image is not None:
            if self.example is None:
                raise ValueError("an example image needs the card's example entry (its file name)")
            Image.fromarray(np.asarray(example_image, np.uint8)).save(folder / self.example.image)
        path = folder / CARD_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> PolicyCard | None:
        """The card of a policy folder, or None when it has none."""
        path = Path(folder) / CARD_FILE
        if not path.is_file():
            return None
        return dataclass_from_dict(cls, read_json(path, "policy card"), where=f" in {path}")

    def example_image(self, folder: str | Path) -> np.ndarray:
        """The shipped example observation's image (uint8 H×W×3) from the policy ``folder``."""
        if self.example is None:
            raise ValueError(f"the policy card in {folder} has no example observation")
        return np.asarray(Image.open(Path(folder) / self.example.image).convert("RGB"))
