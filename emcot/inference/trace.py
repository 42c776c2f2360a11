"""`Trace`: what one control step produced, and the events `stream_trace` yields on the way."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from emcot.io_utils import read_json
from emcot.sequence.plan import SequencePlan
from emcot.types import Observation

if TYPE_CHECKING:
    from emcot.inference.state import TraceState


@dataclass
class Trace:
    """Reasoning text, visual subgoal (or None) and an action chunk in robot units, with stage timings.

    A generated trace also keeps what a caller needs of its :class:`TraceState`: ``layout``, every
    segment of the step in order with its noise segments (the teacher-forced training layout), and
    ``subgoal_latents [1, n, d]``, the denoised subgoal before decoding. :meth:`save` writes neither,
    so a loaded trace has None for both.
    """

    reasoning: str
    subgoal: Image.Image | None
    actions: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    mode: str = "full"
    instruction: str = ""
    layout: SequencePlan | None = field(default=None, repr=False, compare=False)
    subgoal_latents: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def save(self, folder: str | Path, observation: Observation | None = None) -> Path:
        """Write ``reasoning.txt``, ``subgoal.png`` (if any) and ``trace.json`` into ``folder``;
        with the ``observation`` the trace was made from, also ``observation_<camera>.png`` per
        camera (named in ``trace.json``'s ``observations``, with its ``state``), for the viewer."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "reasoning.txt").write_text(self.reasoning + "\n")
        if self.subgoal is not None:
            self.subgoal.save(folder / "subgoal.png")
        seen: dict[str, str] = {}
        if observation is not None:
            for camera, image in observation.images.items():
                seen[camera] = f"observation_{re.sub(r'[^A-Za-z0-9_.-]', '_', camera)}.png"
                Image.fromarray(np.asarray(image, np.uint8)).save(folder / seen[camera])
        payload = {
            "instruction": self.instruction,
            "mode": self.mode,
            "reasoning": self.reasoning,
            "actions": np.asarray(self.actions).tolist(),
            "timings": self.timings,
            "subgoal": "subgoal.png" if self.subgoal is not None else None,
        }
        if observation is not None:
            state = observation.state
            payload["observations"] = seen
            payload["state"] = None if state is None else np.asarray(state, np.float32).tolist()
        (folder / "trace.json").write_text(json.dumps(payload, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Trace:
        """Read a trace written by :meth:`save`."""
        path = Path(folder) / "trace.json"
        data = read_json(path, "trace file")
        missing = sorted({"reasoning", "subgoal", "actions", "timings", "mode", "instruction"} - set(data))
        if missing:
            raise ValueError(f"trace file {path} lacks the fields {missing}; was it written by Trace.save?")
        subgoal = None
        if data["subgoal"]:
            try:
                subgoal = Image.open(path.parent / data["subgoal"]).convert("RGB")
            except (OSError, ValueError) as err:
                raise ValueError(f"cannot read the subgoal image of {path}: {err}") from None
        return cls(
            reasoning=data["reasoning"],
            subgoal=subgoal,
            actions=np.asarray(data["actions"], dtype=np.float32),
            timings=data["timings"],
            mode=data["mode"],
            instruction=data["instruction"],
        )


@dataclass
class TraceEvent:
    """One streamed piece: ``kind`` is ``"reasoning"`` (``text`` holds the new characters),
    ``"subgoal"`` (``image``), ``"actions"`` (``actions``) or ``"done"`` (``trace``, and ``state``:
    the finished :class:`TraceState`, cache included)."""

    kind: str
    text: str = ""
    image: Image.Image | None = None
    actions: np.ndarray | None = None
    trace: Trace | None = None
    state: TraceState | None = None
