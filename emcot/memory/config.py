"""`MemoryConfig`: the optional memory systems of a model (``config.memory``), all off by default.

Two systems of the seeds' documents share it:

- **history memory** — past frames of the primary camera (optionally downsampled: *selective
  spatial-temporal sampling*), past states and past executed action chunks enter the sequence
  before the current observation, at most ``history_length`` steps taken ``history_stride`` policy
  steps apart; with ``top_k`` > 0 every query of every layer attends only to its ``top_k``
  highest-scoring history keys (:func:`emcot.memory.topk_attention`);
- **state-aware latent re-representation** (``state_aware``) — pairwise products of the state
  token with every vision-language token, gated by a learnable mask and pooled, condition the
  action expert through the state token (:class:`emcot.experts.state_aware.StateAwareReRepresentation`).

With every field at its default the model is exactly the one without memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from emcot.io_utils import AT_LEAST_ONE, NON_NEGATIVE, Range, check_fields, dataclass_from_dict


@dataclass
class MemoryConfig:
    """History length/stride/sampling, Top-K retrieval and the state-aware re-representation.

    ``history_image_size``: side in pixels the history frames are resized to (None: processed like
    the current frames). ``history_camera``: the primary view (None: the policy's first camera).
    ``history_states`` / ``history_actions``: whether past states / executed chunks are kept.
    ``top_k``: history keys each query keeps (0: full attention). ``state_aware_rank``: width of the
    pairwise-product latent space of the re-representation.
    """

    history_length: int = 0
    history_stride: int = 1
    history_image_size: int | None = None
    history_camera: str | None = None
    history_states: bool = True
    history_actions: bool = True
    top_k: int = 0
    state_aware: bool = False
    state_aware_rank: int = 32

    def __post_init__(self) -> None:
        check_fields(
            self,
            "memory",
            history_length=NON_NEGATIVE,
            history_stride=AT_LEAST_ONE,
            top_k=NON_NEGATIVE,
            state_aware_rank=AT_LEAST_ONE,
        )
        if self.history_image_size is not None:
            check_fields(self, "memory", history_image_size=Range(ge=1))
        if self.top_k and not self.history_length:
            raise ValueError("memory.top_k selects history keys, so it needs memory.history_length > 0")

    @property
    def uses_history(self) -> bool:
        """Whether past steps enter the sequence."""
        return self.history_length > 0

    def to_dict(self) -> dict:
        """JSON-safe dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MemoryConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        return dataclass_from_dict(cls, data, label="Unknown memory keys")
