"""`GenerationOptions`: the per-call knobs of one control step; a policy saves its defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, check_fields, check_value
from emcot.sequence.layouts import TraceMode

GUIDANCE_OPTIONS = ("text_guidance", "image_guidance", "action_text_guidance", "action_image_guidance")


@dataclass
class GenerationOptions:
    """Per-call knobs of :meth:`EmCoTPolicy.generate_trace`; defaults are saved with the policy.

    ``mode`` also takes its name (``"full"``, ``"reason"``, ``"reactive"``). Steps and guidance
    scales left None take the model config's ``subgoal_sampler`` (``text_guidance``,
    ``image_guidance``) and ``action_sampler`` (``action_text_guidance``, ``action_image_guidance``,
    ``action_noise_scale``: the starting noise's scale, 0 for a deterministic chunk).
    """

    mode: TraceMode = TraceMode.FULL
    max_reasoning_tokens: int = 96
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    subgoal_steps: int | None = None
    action_steps: int | None = None
    text_guidance: float | None = None
    image_guidance: float | None = None
    action_text_guidance: float | None = None
    action_image_guidance: float | None = None
    action_noise_scale: float | None = None
    robot: str | None = None

    def __post_init__(self) -> None:
        # The mode is parsed first (it is the first field, so its errors come first as they would in
        # check_fields), because check_fields would refuse its name before it becomes a TraceMode.
        self.mode = TraceMode.parse(check_value("mode", self.mode, str))
        # Checked here, by the option's name, so a bad value fails before any compute is spent
        # (NaN/inf included: they would pass a `value < 0` check and give NaN actions).
        check_fields(
            self,
            "",
            max_reasoning_tokens=AT_LEAST_ONE,
            temperature=POSITIVE,
            top_k=AT_LEAST_ONE,
            top_p=Range(gt=0, le=1),
            subgoal_steps=AT_LEAST_ONE,
            action_steps=AT_LEAST_ONE,
            action_noise_scale=NON_NEGATIVE,
            **dict.fromkeys(GUIDANCE_OPTIONS, NON_NEGATIVE),
        )

    def replace(self, **changes: Any) -> GenerationOptions:
        """A copy with some options changed; unknown names raise."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown generation options {unknown}; known options are {sorted(known)}")
        return dataclasses.replace(self, **changes)
