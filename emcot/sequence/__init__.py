"""Sequences: segments and plans, the attention rule, RoPE positions, and the layout builders."""

from emcot.sequence.plan import (
    AttnMode,
    Modality,
    Segment,
    SequencePlan,
    TokenLayout,
    build_attention_mask,
    rope_positions,
)

__all__ = [
    "AttnMode",
    "Modality",
    "Segment",
    "SequencePlan",
    "TokenLayout",
    "build_attention_mask",
    "rope_positions",
]
