"""The observation-dict protocol: what a client sends per request, checked before it reaches the policy.

The default form uses the policy's own camera names::

    {"images": {camera: uint8 (H, W, 3)}, "state": float array (state_dim,), "prompt": str}

plus an optional ``"reset": True`` that starts a new episode. Robots that speak another dialect
name their flat keys in a key table, e.g. LIBERO's ``observation/image → images.head``,
``observation/wrist_image → images.wrist``, ``observation/state → state`` (``--obs-map`` on the
command line). Images may come channel-first (3, H, W) and are transposed. Every mistake —
a missing or unexpected key, a wrong dtype or shape, a NaN in the state — is one ValueError
naming the key and what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from emcot.io_utils import check_fields, parse_choice

if TYPE_CHECKING:
    from emcot.policy.policy import EmCoTPolicy


class Target(str, Enum):
    """The fields of the default observation form."""

    IMAGES = "images"
    STATE = "state"
    PROMPT = "prompt"
    RESET = "reset"


@dataclass(frozen=True)
class Slot:
    """Where one value lands in the default form: a field, and for images the camera."""

    target: Target
    camera: str | None = None

    def __str__(self) -> str:
        return f"images.{self.camera}" if self.camera is not None else self.target.value


def parse_slot(text: str, cameras: tuple[str, ...]) -> Slot:
    """``images.<camera>``, ``state``, ``prompt`` or ``reset`` → the :class:`Slot`; a camera the
    policy does not read, or an unknown field, raises a ValueError listing what is valid."""
    field, dot, camera = text.partition(".")
    target = parse_choice(Target, field, "observation target")
    if target is Target.IMAGES:
        if not dot or camera not in cameras:
            choices = [f"images.{c}" for c in cameras]
            raise ValueError(
                f"observation target {text!r} names no camera of this policy; choose one of {choices}"
            )
        return Slot(target, camera)
    if dot:
        raise ValueError(f"observation target {text!r}: only 'images.<camera>' takes a sub-key")
    return Slot(target)


# ---------------------------------------------------------------------------------------------
# Per-field checks: (value, the key it came under, the spec) → the value the session takes.


def _image(value: Any, key: str, spec: ObservationSpec) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ValueError(
            f"observation key {key!r} must be a uint8 image array (H, W, 3), got {type(value).__name__}"
        )
    if value.dtype != np.uint8:
        raise ValueError(
            f"observation key {key!r} must have dtype uint8 (0..255), got {value.dtype}; "
            "convert float images in [0, 1] with (255 * image).astype(np.uint8)"
        )
    if value.ndim == 3 and value.shape[-1] != 3 and value.shape[0] == 3:
        value = np.ascontiguousarray(value.transpose(1, 2, 0))  # channel-first (ALOHA-style) → HWC
    if value.ndim != 3 or value.shape[-1] != 3 or 0 in value.shape:
        raise ValueError(f"observation key {key!r} must have shape (H, W, 3) or (3, H, W), got {value.shape}")
    return value


def _state(value: Any, key: str, spec: ObservationSpec) -> np.ndarray | None:
    if spec.state_dim == 0:
        if value is None:
            return None
        raise ValueError(f"this policy takes no state (state_dim 0); drop observation key {key!r}")
    if isinstance(value, (list, tuple)):
        value = np.asarray(value) if all(isinstance(v, (int, float)) for v in value) else None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf":
        raise ValueError(
            f"observation key {key!r} must be a float array of shape ({spec.state_dim},), "
            f"got {getattr(value, 'dtype', type(value).__name__)}"
        )
    if value.shape != (spec.state_dim,):
        raise ValueError(f"observation key {key!r} must have shape ({spec.state_dim},), got {value.shape}")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, refused below
        state = value.astype(np.float32)
    if not np.isfinite(state).all():
        raise ValueError(f"observation key {key!r} contains NaN or infinite values: {value.tolist()}")
    return state


def _prompt(value: Any, key: str, spec: ObservationSpec) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"observation key {key!r} must be a non-empty string (the instruction), got {value!r:.60}"
        )
    return value


def _reset(value: Any, key: str, spec: ObservationSpec) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"observation key {key!r} must be true or false, got {value!r:.60}")
    return bool(value)


_CHECKS: dict[Target, Callable[[Any, str, ObservationSpec], Any]] = {
    Target.IMAGES: _image,
    Target.STATE: _state,
    Target.PROMPT: _prompt,
    Target.RESET: _reset,
}
DEFAULT_KEYS = tuple(target.value for target in Target)


@dataclass(frozen=True)
class ObservationSpec:
    """What a policy takes (its cameras and state size) and the flat keys a client may use instead.

    ``key_map``: ``(flat key, target)`` pairs, the target being ``images.<camera>``, ``state``,
    ``prompt`` or ``reset``. The default form is always accepted too.
    """

    cameras: tuple[str, ...]
    state_dim: int
    key_map: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_fields(self, "ObservationSpec")
        if not self.cameras:
            raise ValueError("ObservationSpec.cameras: a policy reads at least one camera")
        self.slots  # noqa: B018 - builds (and so checks) the key table now, not at the first request

    @classmethod
    def from_policy(cls, policy: EmCoTPolicy, key_map: tuple[tuple[str, str], ...] = ()) -> ObservationSpec:
        """The spec of an :class:`~emcot.policy.policy.EmCoTPolicy` (its cameras and state size)."""
        return cls(tuple(policy.cameras), int(policy.config.action.state_dim), tuple(key_map))

    @cached_property
    def slots(self) -> dict[str, Slot]:
        """The key table: flat key → slot (a ValueError for a clash or an unknown target)."""
        slots: dict[str, Slot] = {}
        for key, target in self.key_map:
            if not key or key in DEFAULT_KEYS:
                raise ValueError(
                    f"observation map: {key!r} cannot be a flat key (the default keys are {DEFAULT_KEYS})"
                )
            if key in slots:
                raise ValueError(f"observation map: flat key {key!r} is mapped twice")
            slot = parse_slot(target, self.cameras)
            if slot in slots.values():
                raise ValueError(f"observation map: two flat keys map to {slot}")
            slots[key] = slot
        return slots

    @cached_property
    def expected(self) -> str:
        """What a request should hold, as the tail of every error message."""
        cameras = ", ".join(f"{c!r}: uint8 (H, W, 3)" for c in self.cameras)
        state = f", 'state': float ({self.state_dim},)" if self.state_dim else ""
        text = f"expected {{'images': {{{cameras}}}{state}, 'prompt': str}} (and optionally 'reset': bool)"
        if self.slots:
            flat = ", ".join(f"{key!r} → {slot}" for key, slot in self.slots.items())
            text += f", or the flat keys {flat}"
        return text

    def describe(self) -> dict[str, Any]:
        """The observation part of the server metadata (plain types, msgpack-ready)."""
        return {
            "observation": {
                "images": {camera: "uint8 (H, W, 3) or (3, H, W)" for camera in self.cameras},
                "state": f"float32 ({self.state_dim},)" if self.state_dim else None,
                "prompt": "str (needed on a connection's first request and with reset)",
                "reset": "bool, optional: start a new episode",
            },
            "observation_keys": [key for key in DEFAULT_KEYS if key != "state" or self.state_dim],
            "key_map": {key: str(slot) for key, slot in self.slots.items()},
        }

    def read(self, message: Any) -> dict[str, Any]:
        """A decoded request → the default form ``PolicySession.infer`` takes, every value checked."""
        if not isinstance(message, Mapping):
            raise ValueError(f"an observation must be a map of keys to values, got {type(message).__name__}")
        values: dict[Slot, tuple[str, Any]] = {}
        unexpected = []
        for key, value in message.items():
            if not isinstance(key, str):
                raise ValueError(f"observation keys must be strings, got {key!r:.60}")
            if key in self.slots:
                self._put(values, self.slots[key], key, value)
            elif key == Target.IMAGES.value:
                self._put_images(values, value)
            elif key in DEFAULT_KEYS:
                self._put(values, Slot(Target(key)), key, value)
            else:
                unexpected.append(key)
        if unexpected:
            raise ValueError(f"unexpected observation key(s) {unexpected}; {self.expected}")
        self._check_complete(values, message)
        out: dict[str, Any] = {"images": {}}
        for slot, (_, value) in values.items():
            if slot.camera is not None:
                out["images"][slot.camera] = value
            elif value is not None:
                out[slot.target.value] = value
        return out

    def _put(self, values: dict[Slot, tuple[str, Any]], slot: Slot, key: str, value: Any) -> None:
        if slot in values:
            raise ValueError(f"observation {slot} is given twice: as {values[slot][0]!r} and as {key!r}")
        values[slot] = (key, _CHECKS[slot.target](value, key, self))

    def _put_images(self, values: dict[Slot, tuple[str, Any]], images: Any) -> None:
        if not isinstance(images, Mapping):
            raise ValueError(f"observation key 'images' must map camera names to images; {self.expected}")
        for camera, image in images.items():
            if camera not in self.cameras:
                raise ValueError(
                    f"unknown camera {camera!r} in 'images': this policy reads {list(self.cameras)}"
                )
            self._put(values, Slot(Target.IMAGES, camera), f"images.{camera}", image)

    def _check_complete(self, values: dict[Slot, tuple[str, Any]], message: Mapping) -> None:
        flat = {slot: key for key, slot in self.slots.items()}
        for camera in self.cameras:
            slot = Slot(Target.IMAGES, camera)
            if slot in values:
                continue
            if "images" in message:
                where = f"camera {camera!r} in 'images'"
            elif slot in flat and any(s.camera is not None for s in values):
                where = f"observation key {flat[slot]!r} (camera {camera!r})"
            elif slot in flat:
                where = f"observation key 'images' (or {flat[slot]!r} for camera {camera!r})"
            else:
                where = "observation key 'images'"
            raise ValueError(f"{where} missing; {self.expected}")
        if self.state_dim and Slot(Target.STATE) not in values:
            raise ValueError(f"observation key 'state' missing; {self.expected}")
