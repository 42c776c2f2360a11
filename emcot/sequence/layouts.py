"""One plan builder for training and generation (DESIGN §3: no train/test layout mismatch).

A trace sample is laid out as::

    [vit cam…] [state] [prompt … <|think_start|>] [reasoning … <|think_end|>]
    [<|vision_start|>] [subgoal noisy] [subgoal clean] [subgoal vit] [<|vision_end|>]
    [<|action_start|>] [actions noisy]

``reason`` mode drops the subgoal block, ``reactive`` also the reasoning. Generation calls the
same functions stage by stage, so its final plan equals the teacher-forced one segment by segment.

Two more sample kinds share the pieces: VQA (``[image vit…] [question] [answer <|endoftext|>]…``,
one question/answer pair per turn; with a history, video-QA whose answers carry the role
``video_answer``) and visual generation (``[frame vit…] [frame clean latents…]
[prompt] [<|vision_start|>] [target noisy]``: the noisy target is the same segment a trace's subgoal
uses, so future-frame prediction trains exactly what subgoal imagination runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from emcot.io_utils import parse_choice
from emcot.sequence.plan import AttnMode, Modality, Segment
from emcot.tokenizers.text_base import SpecialTokenIds


class TraceMode(str, Enum):
    """What one control step produces (DESIGN §5); a plain string such as ``"full"`` parses to it."""

    FULL = "full"  # reason → imagine a subgoal → act
    REASON = "reason"  # reason → act
    REACTIVE = "reactive"  # act only

    @classmethod
    def parse(cls, mode: str | TraceMode) -> TraceMode:
        """The mode called ``mode``; a typo names the closest valid choice."""
        return parse_choice(cls, mode, "mode")

    @property
    def reasons(self) -> bool:
        """Whether the step decodes reasoning text (every mode but ``reactive``)."""
        return self is not TraceMode.REACTIVE

    @property
    def imagines(self) -> bool:
        """Whether the step imagines a visual subgoal (``full`` only)."""
        return self is TraceMode.FULL


def text(ids: list[int], role: str, loss: bool = False) -> tuple[Segment, list[int]]:
    """A causal text segment with its token ids."""
    return Segment(Modality.TEXT, AttnMode.CAUSAL, len(ids), loss, role), list(ids)


def observation_segments(vit_lengths: list[int], has_state: bool) -> list[Segment]:
    """One full ViT segment per camera, then the state token."""
    segments = [Segment(Modality.VIT, AttnMode.FULL, n, False, "camera") for n in vit_lengths]
    if has_state:
        segments.append(Segment(Modality.STATE, AttnMode.FULL, 1, False, "state"))
    return segments


def prompt_ids(framed_instruction: list[int], mode: TraceMode, special: SpecialTokenIds) -> list[int]:
    """The instruction in its chat frame, followed by ``<|think_start|>`` when the mode reasons."""
    return list(framed_instruction) + ([special.think_start] if mode.reasons else [])


def reasoning_ids(reasoning: list[int], special: SpecialTokenIds) -> list[int]:
    """Reasoning tokens closed by ``<|think_end|>`` (the model learns to stop)."""
    return list(reasoning) + [special.think_end]


def subgoal_segments(num_latent_tokens: int, vit_copy_tokens: int, loss: bool = True) -> dict[str, Segment]:
    """The subgoal block: noisy latents (flow loss), clean latent copy, optional clean ViT copy."""
    out = {
        "noisy": Segment(Modality.LATENT, AttnMode.NOISE, num_latent_tokens, loss, "subgoal_noisy"),
        "clean": Segment(Modality.LATENT, AttnMode.FULL, num_latent_tokens, False, "subgoal_clean"),
    }
    if vit_copy_tokens:
        out["vit"] = Segment(Modality.VIT, AttnMode.FULL, vit_copy_tokens, False, "subgoal_vit")
    return out


def action_segment(horizon: int, loss: bool = True) -> Segment:
    """The noisy action chunk, one token per step."""
    return Segment(Modality.ACTION, AttnMode.NOISE, horizon, loss, "actions")


@dataclass
class SampleLayout:
    """Segments of one trace sample, each with the text ids it carries (empty for non-text)."""

    segments: list[Segment]
    text_ids: list[list[int]]


def trace_layout(
    *,
    mode: TraceMode | str,
    vit_lengths: list[int],
    has_state: bool,
    framed_instruction: list[int],
    special: SpecialTokenIds,
    reasoning: list[int] | None,
    subgoal_tokens: int,
    subgoal_vit_tokens: int,
    horizon: int,
    text_loss: bool = True,
    history: Sequence[Segment] = (),
) -> SampleLayout:
    """The complete layout of a trace; training uses it whole, generation reaches the same one.

    ``history`` (:func:`emcot.memory.history_segments`) comes first, before the cameras."""
    mode = TraceMode.parse(mode)
    segments: list[Segment] = list(history) + observation_segments(vit_lengths, has_state)
    ids: list[list[int]] = [[] for _ in segments]

    def add(segment: Segment, tokens: list[int] | None = None) -> None:
        segments.append(segment)
        ids.append(tokens or [])

    add(*text(prompt_ids(framed_instruction, mode, special), "prompt"))
    if mode.reasons:
        if reasoning is None:
            raise ValueError(
                f"mode '{mode.value}' needs reasoning text; use mode='reactive' for action-only samples"
            )
        add(*text(reasoning_ids(reasoning, special), "reasoning", loss=text_loss))
    if mode.imagines:
        block = subgoal_segments(subgoal_tokens, subgoal_vit_tokens)
        add(*text([special.vision_start], "vision_start"))
        for segment in block.values():
            add(segment)
        add(*text([special.vision_end, special.action_start], "action_start"))
    else:
        add(*text([special.action_start], "action_start"))
    add(action_segment(horizon))
    return SampleLayout(segments, ids)


def vqa_layout(
    *,
    vit_lengths: list[int],
    turns: list[tuple[list[int], list[int]]],
    special: SpecialTokenIds,
    answer_loss: bool = True,
    history: Sequence[Segment] = (),
) -> SampleLayout:
    """Images, then per turn a framed question (no loss) and its answer closed by EOS (cross-entropy).

    With a ``history`` first (video-QA about past steps), the answers take the role
    ``video_answer``, the ``vqa`` loss term."""
    if not turns:
        raise ValueError("a VQA sample needs at least one (question, answer) turn")
    answer_role = "video_answer" if history else "answer"
    segments = list(history) + [Segment(Modality.VIT, AttnMode.FULL, n, False, "image") for n in vit_lengths]
    ids: list[list[int]] = [[] for _ in segments]
    for question, answer in turns:
        for segment, tokens in (
            text(question, "question"),
            text(list(answer) + [special.eos], answer_role, loss=answer_loss),
        ):
            segments.append(segment)
            ids.append(tokens)
    return SampleLayout(segments, ids)


def generation_layout(
    *,
    vit_lengths: list[int],
    context_latents: int,
    latent_tokens: int,
    framed_prompt: list[int],
    special: SpecialTokenIds,
) -> SampleLayout:
    """Context frames (ViT, then ``context_latents`` clean VAE copies), the prompt, the noisy target.

    Frames carry the role ``camera`` like a trace's observation, so image guidance drops them the
    same way; the target is :func:`subgoal_segments`' noisy segment with the flow loss.
    """
    segments = observation_segments(vit_lengths, has_state=False)
    segments += [
        Segment(Modality.LATENT, AttnMode.FULL, latent_tokens, False, "context_latent")
        for _ in range(context_latents)
    ]
    ids: list[list[int]] = [[] for _ in segments]
    for segment, tokens in (text(framed_prompt, "prompt"), text([special.vision_start], "vision_start")):
        segments.append(segment)
        ids.append(tokens)
    segments.append(subgoal_segments(latent_tokens, 0)["noisy"])
    ids.append([])
    return SampleLayout(segments, ids)
