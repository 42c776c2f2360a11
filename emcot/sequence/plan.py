"""Sequence plans: segments, RoPE positions, packing and the modality-switching attention mask.

A sample is an ordered list of :class:`Segment`. The one attention rule (DESIGN §3): query token
*q* may attend key token *k* iff both belong to the same packed sample and either

* *k*'s segment comes earlier and is not a ``noise`` segment, or
* they share a segment and its mode is ``full``/``noise``, or it is ``causal`` and k ≤ q.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch

from emcot.experts.config import EXPERT_NAMES


class Modality(str, Enum):
    """What a segment's tokens are; decides which expert processes them."""

    TEXT = "text"
    VIT = "vit"
    LATENT = "latent"
    STATE = "state"
    ACTION = "action"


class AttnMode(str, Enum):
    """How a segment's tokens attend inside the segment (and whether later tokens may see them)."""

    CAUSAL = "causal"
    FULL = "full"
    NOISE = "noise"


# Segments of past steps (a memory-enabled model's history) carry roles with this prefix; Top-K
# history attention selects among their keys.
HISTORY_ROLE_PREFIX = "history_"

EXPERT_OF_MODALITY = {
    Modality.TEXT: "und",
    Modality.VIT: "und",
    Modality.LATENT: "gen",
    Modality.STATE: "act",
    Modality.ACTION: "act",
}


@dataclass(frozen=True)
class Segment:
    """A run of tokens of one modality and attention mode.

    ``role`` names what the segment holds (``"instruction"``, ``"subgoal_noisy"``, …) so code can
    find segments without counting; ``loss`` marks segments that carry a training loss.
    """

    modality: Modality
    mode: AttnMode
    length: int
    loss: bool = False
    role: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "modality", Modality(self.modality))
        object.__setattr__(self, "mode", AttnMode(self.mode))
        if self.length <= 0:
            raise ValueError(
                f"segment '{self.role or self.modality.value}' has length {self.length}; it must be ≥ 1"
            )

    @property
    def expert(self) -> str:
        """Name of the expert that processes this segment's tokens."""
        return EXPERT_OF_MODALITY[self.modality]

    @property
    def is_history(self) -> bool:
        """Whether the segment holds a past step (a history frame, state or action chunk)."""
        return self.role.startswith(HISTORY_ROLE_PREFIX)


@dataclass
class SequencePlan:
    """An ordered list of segments, possibly from several packed samples."""

    segments: list[Segment] = field(default_factory=list)
    sample_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sample_ids:
            self.sample_ids = [0] * len(self.segments)
        if len(self.sample_ids) != len(self.segments):
            raise ValueError("SequencePlan needs one sample id per segment")

    def append(self, segment: Segment, sample_id: int | None = None) -> None:
        """Add a segment at the end (to the last sample unless told otherwise)."""
        self.segments.append(segment)
        self.sample_ids.append(
            sample_id if sample_id is not None else (self.sample_ids[-1] if self.sample_ids else 0)
        )

    def __len__(self) -> int:
        return sum(s.length for s in self.segments)

    @property
    def num_tokens(self) -> int:
        """Total number of tokens."""
        return len(self)

    def offsets(self) -> list[int]:
        """Start index of every segment."""
        out, pos = [], 0
        for s in self.segments:
            out.append(pos)
            pos += s.length
        return out

    def layout(self, device: torch.device | str | None = None) -> TokenLayout:
        """Per-token descriptors for masks, routing and positions."""
        return TokenLayout.from_segments(self.segments, self.sample_ids, device)

    def positions(self, device: torch.device | str | None = None) -> torch.Tensor:
        """RoPE position of every token (DESIGN §3)."""
        return rope_positions(self.segments, self.sample_ids, device)

    @staticmethod
    def pack(plans: Sequence[SequencePlan]) -> SequencePlan:
        """Concatenate samples into one plan; each input plan becomes its own sample."""
        packed = SequencePlan()
        for sample, plan in enumerate(plans):
            for segment in plan.segments:
                packed.append(segment, sample)
        return packed


@dataclass
class TokenLayout:
    """Token-level view of a plan: everything the mask rule and the expert routing need.

    All tensors are 1-D over tokens. ``segment`` indices increase along the sequence, so
    "comes earlier" is a comparison of segment indices. ``history`` marks the tokens of past steps.
    """

    sample: torch.Tensor
    segment: torch.Tensor
    bidirectional: torch.Tensor
    noise: torch.Tensor
    expert: torch.Tensor
    history: torch.Tensor

    @classmethod
    def from_segments(
        cls, segments: Sequence[Segment], sample_ids: Sequence[int], device: torch.device | str | None = None
    ) -> TokenLayout:
        """Expand per-segment attributes to per-token tensors."""
        lengths = torch.tensor([s.length for s in segments], dtype=torch.long)

        def expand(values: list) -> torch.Tensor:
            return torch.repeat_interleave(torch.tensor(values), lengths).to(device)

        return cls(
            sample=expand(list(sample_ids)),
            segment=expand(list(range(len(segments)))),
            bidirectional=expand([s.mode is not AttnMode.CAUSAL for s in segments]),
            noise=expand([s.mode is AttnMode.NOISE for s in segments]),
            expert=expand([EXPERT_NAMES.index(s.expert) for s in segments]),
            history=expand([s.is_history for s in segments]),
        )

    def __len__(self) -> int:
        return self.sample.numel()

    def mask(self, query_start: int = 0, key_drop: torch.Tensor | None = None) -> torch.Tensor:
        """Dense boolean mask ``[L - query_start, L]`` (True = may attend) for queries from ``query_start``.

        ``key_drop`` (bool per token) hides keys from every query but their own segment; it builds
        the unconditional contexts of classifier-free guidance without re-encoding.
        """
        n = len(self)
        q = torch.arange(query_start, n, device=self.sample.device)[:, None]
        k = torch.arange(n, device=self.sample.device)[None, :]
        seg_q, seg_k = self.segment[q], self.segment[k]
        earlier = (seg_k < seg_q) & ~self.noise[k]
        same = (seg_k == seg_q) & (self.bidirectional[q] | (k <= q))
        allowed = (self.sample[q] == self.sample[k]) & (earlier | same)
        if key_drop is not None:
            allowed = allowed & (~key_drop[k] | (seg_k == seg_q))
        return allowed


def _per_segment_sample_ids(n_segments: int, n_tokens: int, lengths: Sequence[int], sample_ids) -> list[int]:
    if sample_ids is None:
        return [0] * n_segments
    sample_ids = [int(s) for s in sample_ids]
    if len(sample_ids) == n_segments:
        return sample_ids
    if len(sample_ids) == n_tokens:
        per_segment, pos = [], 0
        for length in lengths:
            ids = set(sample_ids[pos : pos + length])
            if len(ids) != 1:
                raise ValueError(f"segment starting at token {pos} spans several samples {sorted(ids)}")
            per_segment.append(ids.pop())
            pos += length
        return per_segment
    raise ValueError(
        f"sample_ids has {len(sample_ids)} entries; give one per segment ({n_segments}) or one per token ({n_tokens})"
    )


def build_attention_mask(
    modes: Sequence[str], lengths: Sequence[int], sample_ids: Sequence[int] | None = None
) -> torch.Tensor:
    """The modality-switching mask ``[L, L]`` (True = may attend) for segments given by mode and length.

    ``sample_ids`` assigns each segment (or each token) to a packed sample; tokens of different
    samples never attend to each other.
    """
    if len(modes) != len(lengths):
        raise ValueError(f"got {len(modes)} modes but {len(lengths)} lengths; give one of each per segment")
    try:
        parsed = [AttnMode(m) for m in modes]
    except ValueError as err:
        raise ValueError(f"{err}; attention modes are {[m.value for m in AttnMode]}") from None
    segments = [Segment(Modality.TEXT, mode, int(length)) for mode, length in zip(parsed, lengths)]
    per_segment = _per_segment_sample_ids(len(segments), sum(lengths), lengths, sample_ids)
    return TokenLayout.from_segments(segments, per_segment).mask()


def rope_positions(
    segments: Sequence[Segment],
    sample_ids: Sequence[int] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """RoPE ids: text tokens count up one by one; any other segment takes a single id.

    A ``noise`` segment does not advance the counter, so the clean copy that follows it shares its
    id. The counter restarts at 0 for every packed sample.
    """
    sample_ids = list(sample_ids) if sample_ids is not None else [0] * len(segments)
    out: list[int] = []
    pos, current = 0, None
    for segment, sample in zip(segments, sample_ids):
        if sample != current:
            pos, current = 0, sample
        if segment.modality is Modality.TEXT:
            out.extend(range(pos, pos + segment.length))
            pos += segment.length
        else:
            out.extend([pos] * segment.length)
            if segment.mode is not AttnMode.NOISE:
                pos += 1
    return torch.tensor(out, dtype=torch.long, device=device)
