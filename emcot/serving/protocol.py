"""msgpack with numpy arrays: the wire format of openpi's websocket policies, written for emcot.

An array travels as the map ``{b"__ndarray__": True, b"data": raw bytes, b"dtype": arr.dtype.str,
b"shape": shape}`` and a numpy scalar as ``{b"__npgeneric__": True, b"data": x.item(), b"dtype":
...}`` (the keys are bytes). Object, complex and void dtypes never travel: they would need pickle
or are not portable. Decoding checks every array map (its dtype is allowed and its buffer holds
exactly ``prod(shape) * itemsize`` bytes) and returns writable copies, never views of the frame.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

# Kinds that never travel: object (would need pickle), complex and void/structured (not portable).
REFUSED_KINDS = frozenset("OcV")
# numpy refuses more than 64 dimensions; a frame asking for more is malformed, not a big array.
MAX_DIMS = 64

_ARRAY = b"__ndarray__"
_REASONS: dict[type, str] = {
    msgpack.ExtraData: "extra bytes after the first object",
    msgpack.FormatError: "a byte that starts no msgpack object",
    msgpack.StackError: "objects nested too deeply",
}
_SCALAR = b"__npgeneric__"


class ProtocolError(ValueError):
    """A frame that is not valid msgpack-numpy (what the peer sent was wrong, not the server)."""


def _refuse_kind(dtype: np.dtype, what: str) -> None:
    if dtype.kind in REFUSED_KINDS:
        raise ValueError(
            f"{what} of dtype {dtype} cannot be sent: object, complex and void dtypes are refused"
        )


def _encode(obj: Any) -> Any:
    """msgpack's ``default`` hook: numpy arrays and scalars become their maps."""
    if isinstance(obj, np.ndarray):
        _refuse_kind(obj.dtype, "an array")
        return {_ARRAY: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        _refuse_kind(obj.dtype, "a numpy scalar")
        return {_SCALAR: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__} over msgpack-numpy")


def packb(obj: Any) -> bytes:
    """``obj`` (dicts, lists, str, bytes, numbers, numpy arrays and scalars) as one msgpack frame."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def _dtype(value: Any, what: str) -> np.dtype:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: dtype must be a string such as '<f4', got {type(value).__name__}")
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError, SyntaxError):
        raise ProtocolError(f"{what}: {value!r} is not a numpy dtype") from None
    if dtype.kind in REFUSED_KINDS:
        raise ProtocolError(
            f"{what}: dtype {value!r} is refused (object, complex and void dtypes never travel)"
        )
    if dtype.itemsize == 0:
        raise ProtocolError(f"{what}: dtype {value!r} has no size")
    return dtype


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_DIMS:
        raise ProtocolError(f"array map: shape must be a list of at most {MAX_DIMS} sizes, got {value!r:.80}")
    for size in value:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"array map: shape sizes must be whole numbers ≥ 0, got {value!r:.80}")
    return tuple(value)


def _decode_array(obj: dict) -> np.ndarray:
    missing = [key.decode() for key in (b"data", b"dtype", b"shape") if key not in obj]
    if missing:
        raise ProtocolError(f"array map is missing {missing}")
    data, dtype, shape = obj[b"data"], _dtype(obj[b"dtype"], "array map"), _shape(obj[b"shape"])
    if not isinstance(data, bytes):
        raise ProtocolError(f"array map: data must be bytes, got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a huge shape cannot overflow
    if len(data) != expected:
        raise ProtocolError(
            f"array map: shape {list(shape)} of dtype {dtype.str} needs {expected} bytes, the buffer has {len(data)}"
        )
    # A copy: a view would keep the whole frame alive and be read-only.
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _decode_scalar(obj: dict) -> np.generic:
    if b"data" not in obj or b"dtype" not in obj:
        raise ProtocolError("numpy scalar map needs 'data' and 'dtype'")
    dtype, data = _dtype(obj[b"dtype"], "numpy scalar map"), obj[b"data"]
    if not isinstance(data, (bool, int, float, str, bytes)):
        raise ProtocolError(
            f"numpy scalar map: data must be a number, string or bytes, got {type(data).__name__}"
        )
    try:
        return dtype.type(data)
    except (TypeError, ValueError, OverflowError) as err:
        raise ProtocolError(f"numpy scalar map: {data!r:.40} is not a {dtype}: {err}") from None


def _decode(obj: dict) -> Any:
    """msgpack's ``object_hook``: array and scalar maps become numpy objects, other maps stay."""
    if _ARRAY in obj:
        return _decode_array(obj)
    if _SCALAR in obj:
        return _decode_scalar(obj)
    return obj


def _refuse_extension(code: int, data: bytes) -> Any:
    raise ProtocolError(f"malformed msgpack: extension type {code} is not part of msgpack-numpy")


def unpackb(data: bytes) -> Any:
    """One msgpack-numpy frame back into Python and numpy objects; anything malformed raises
    :class:`ProtocolError` (a ``ValueError``) saying what."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected a binary frame, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_decode, ext_hook=_refuse_extension, raw=False)
    except ProtocolError:
        raise
    except (msgpack.UnpackException, ValueError, TypeError) as err:
        # A truncated frame, a map key that is not str/bytes (strict_map_key) and invalid UTF-8
        # raise plain ValueErrors; the three below carry no message of their own.
        reason = _REASONS.get(type(err)) or str(err) or type(err).__name__
        raise ProtocolError(f"malformed msgpack: {reason}") from None
