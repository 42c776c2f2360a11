"""Configuration of the understanding-image encoder (SigLIP family, NaViT-style packing)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from emcot.io_utils import POSITIVE, check_fields, dataclass_from_dict

POSITION_MODES = ("table", "interpolate")
HIDDEN_ACTS = ("gelu_pytorch_tanh", "gelu")


@dataclass(frozen=True)
class VisionEncoderConfig:
    """Shape and preprocessing settings of :class:`emcot.tokenizers.vision.VisionEncoder`.

    ``num_layers`` is the depth of the *checkpoint*; with ``drop_last_layer`` the encoder builds
    only the first ``num_layers - 1`` layers (BAGEL/HALO do ``num_hidden_layers -= 1``) and still
    applies the post layernorm to their output.

    ``position_mode``: ``"table"`` indexes a learned ``max_grid × max_grid`` table at
    ``row * max_grid + col`` (BAGEL's "extrapolate" NaViT ids, so an image may use any grid up to
    ``max_grid`` per side); ``"interpolate"`` bilinearly resizes the square table to each image's
    grid (SigLIP2 NaFlex).
    """

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    patch_size: int = 8
    max_grid: int = 16
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    drop_last_layer: bool = True
    position_mode: str = "table"
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_side_px: int = 128
    min_side_px: int = 16

    def __post_init__(self) -> None:
        # Also turns list inputs (e.g. from JSON) into tuples in place.
        check_fields(self, layer_norm_eps=POSITIVE)
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "patch_size", "max_grid"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"VisionEncoderConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"VisionEncoderConfig: num_heads ({self.num_heads}) must divide hidden_size "
                f"({self.hidden_size}); pick a head count such that hidden_size % num_heads == 0."
            )
        if self.drop_last_layer and self.num_layers < 2:
            raise ValueError("VisionEncoderConfig: drop_last_layer needs num_layers >= 2.")
        if self.position_mode not in POSITION_MODES:
            raise ValueError(
                f"VisionEncoderConfig.position_mode must be one of {POSITION_MODES}, got {self.position_mode!r}."
            )
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(
                f"VisionEncoderConfig.hidden_act must be one of {HIDDEN_ACTS}, got {self.hidden_act!r}."
            )
        if any(s <= 0 for s in self.image_std):
            raise ValueError("VisionEncoderConfig.image_std values must be positive.")
        if not self.patch_size <= self.min_side_px <= self.max_side_px:
            raise ValueError(
                "VisionEncoderConfig needs patch_size <= min_side_px <= max_side_px, got "
                f"{self.patch_size}, {self.min_side_px}, {self.max_side_px}."
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @property
    def effective_layers(self) -> int:
        """Number of encoder layers actually built and run."""
        return self.num_layers - 1 if self.drop_last_layer else self.num_layers

    @property
    def patch_dim(self) -> int:
        """Length of one flattened RGB patch, ``3 * patch_size**2``."""
        return 3 * self.patch_size * self.patch_size

    def replace(self, **changes: Any) -> VisionEncoderConfig:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["image_mean"] = list(self.image_mean)
        out["image_std"] = list(self.image_std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisionEncoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise so typos are not silently dropped."""
        return dataclass_from_dict(cls, data, label="unknown keys", where=" for VisionEncoderConfig")

    @classmethod
    def siglip_so400m_14(cls) -> VisionEncoderConfig:
        """SigLIP so400m/14 at up to 980 px with a 70×70 position table, last layer dropped (BAGEL/HALO)."""
        return cls(
            hidden_size=1152,
            intermediate_size=4304,
            num_layers=27,
            num_heads=16,
            patch_size=14,
            max_grid=70,
            drop_last_layer=True,
            position_mode="table",
            max_side_px=980,
            min_side_px=224,
        )

    @classmethod
    def tiny(cls) -> VisionEncoderConfig:
        """A few-thousand-parameter encoder for tests and CPU smoke runs."""
        return cls()
