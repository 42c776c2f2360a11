"""Per-expert transformer geometry."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from emcot.io_utils import POSITIVE, check_fields, dataclass_from_dict

EXPERT_NAMES = ("und", "gen", "act")
"""The three experts: understanding/text, subgoal generation, action."""


@dataclass
class ExpertConfig:
    """Geometry of one expert's transformer stack.

    All experts of a model share one attention, so hidden size, depth, head count, KV-head count
    and head dimension must agree across experts; MLP width, norm epsilon, biases and QK-norm may
    differ.
    """

    hidden_size: int = 1536
    num_layers: int = 28
    num_heads: int = 12
    num_kv_heads: int = 2
    head_dim: int | None = None
    intermediate_size: int = 8960
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = True
    o_bias: bool = False
    qk_norm: bool = False

    def __post_init__(self) -> None:
        check_fields(self, rms_norm_eps=POSITIVE)
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"num_heads={self.num_heads} does not divide hidden_size={self.hidden_size}; "
                    "choose a divisor or set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_heads
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"ExpertConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}; "
                "grouped-query attention needs a whole number of query heads per KV head"
            )

    @property
    def head_size(self) -> int:
        """The per-head dimension: ``head_dim`` as given, or ``hidden_size // num_heads``.

        ``__post_init__`` fills ``head_dim`` in, so this is ``head_dim`` with the ``None`` gone.
        """
        if self.head_dim is None:
            return self.hidden_size // self.num_heads
        return self.head_dim

    @property
    def attention_signature(self) -> tuple[int, int, int, int, int]:
        """What every expert sharing one attention must agree on."""
        return (self.hidden_size, self.num_layers, self.num_heads, self.num_kv_heads, self.head_size)

    def to_dict(self) -> dict:
        """JSON-safe dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ExpertConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a clear error."""
        return dataclass_from_dict(cls, data)
