"""msgpack-numpy: round trips, the wire layout openpi reads, refused dtypes, malformed frames."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from emcot.serving.protocol import ProtocolError, packb, unpackb

DTYPES = ["?", "i1", "i2", "<i4", ">i4", "i8", "u1", "u2", "u4", "<u8", "f2", "<f4", ">f4", "f8", "U5", "S3"]
SHAPES = [(), (0,), (3,), (2, 3), (0, 5), (2, 3, 4), (1, 1, 1, 1, 2)]


def _array(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    size = math.prod(shape)
    dt = np.dtype(dtype)
    if dt.kind == "U":
        values = np.array([f"a{i % 100}" for i in range(size)], dtype)
    elif dt.kind == "S":
        values = np.array([f"b{i % 10}".encode() for i in range(size)], dtype)
    else:
        values = (np.arange(size) % 7).astype(dtype)
    return values.reshape(shape)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_arrays_round_trip_with_dtype_shape_and_values(dtype, shape):
    array = _array(dtype, shape)
    back = unpackb(packb({"x": array}))["x"]
    assert back.dtype == array.dtype and back.dtype.str == array.dtype.str  # byte order kept
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable and back.flags.c_contiguous


def test_decoded_arrays_are_writable_copies_and_views_travel_as_their_values():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    for view in (base.T, base[::2, 1::3], np.asfortranarray(base)):
        frame = packb(view)
        back = unpackb(frame)
        np.testing.assert_array_equal(back, view)
        back[...] = -1  # writable, and owns its memory: the frame is untouched
        np.testing.assert_array_equal(unpackb(frame), view)


def test_scalars_and_plain_values_round_trip():
    message = {
        "f32": np.float32(1.5),
        "i64": np.int64(-3),
        "u8": np.uint8(255),
        "flag": np.bool_(True),
        "half": np.float16(0.25),
        "nested": {"list": [1, 2.5, "three", b"four", None, True], "deep": {"a": np.zeros((2, 2), np.uint8)}},
    }
    back = unpackb(packb(message))
    for key in ("f32", "i64", "u8", "flag", "half"):
        assert type(back[key]) is type(message[key]) and back[key] == message[key]
    assert back["nested"]["list"] == [1, 2.5, "three", b"four", None, True]
    np.testing.assert_array_equal(back["nested"]["deep"]["a"], np.zeros((2, 2), np.uint8))
    assert math.isnan(unpackb(packb(np.float64("nan"))))


def test_wire_layout_uses_bytes_keys_like_openpi():
    raw = msgpack.unpackb(packb(np.arange(6, dtype="<f4").reshape(2, 3)))
    assert set(raw) == {b"__ndarray__", b"data", b"dtype", b"shape"}
    assert raw[b"__ndarray__"] is True and raw[b"dtype"] == "<f4" and raw[b"shape"] == [2, 3]
    assert raw[b"data"] == np.arange(6, dtype="<f4").tobytes()
    raw = msgpack.unpackb(packb(np.int16(7)))
    assert raw == {b"__npgeneric__": True, b"data": 7, b"dtype": "<i2"}


@pytest.mark.parametrize(
    "value",
    [
        np.array([object()], dtype=object),
        np.zeros(2, np.complex64),
        np.zeros(2, np.complex128),
        np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")]),
        np.zeros(2, "V4"),
        np.complex64(1 + 2j),
    ],
    ids=["object", "complex64", "complex128", "structured", "void", "complex-scalar"],
)
def test_refuses_to_encode_object_complex_and_void(value):
    with pytest.raises(ValueError, match="object, complex and void dtypes are refused"):
        packb({"x": value})


def test_refuses_to_encode_other_python_objects():
    with pytest.raises(TypeError, match="cannot send a set"):
        packb({"x": {1, 2}})


def _array_map(**fields) -> bytes:
    base = {b"__ndarray__": True, b"data": b"\x00" * 24, b"dtype": "<f4", b"shape": [2, 3]}
    base.update({k.encode(): v for k, v in fields.items()})
    return msgpack.packb({"x": {k: v for k, v in base.items() if v is not ...}})


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (_array_map(data=b"\x00" * 23), r"shape \[2, 3\] of dtype <f4 needs 24 bytes, the buffer has 23"),
        (_array_map(data=b"\x00" * 25), "needs 24 bytes, the buffer has 25"),
        (_array_map(shape=[2**40, 2**40]), "needs .* bytes, the buffer has 24"),
        (_array_map(dtype="|O"), "dtype '|O' is refused"),
        (_array_map(dtype="<c8", data=b"\x00" * 48), "dtype '<c8' is refused"),
        (_array_map(dtype="|V4"), "dtype '|V4' is refused"),
        (_array_map(dtype="i4,i4", data=b"\x00" * 48), "is refused"),
        (_array_map(dtype="float99"), "'float99' is not a numpy dtype"),
        (_array_map(dtype=5), "dtype must be a string"),
        (_array_map(dtype="|S0"), "has no size"),
        (_array_map(shape=[2, -3]), "shape sizes must be whole numbers"),
        (_array_map(shape="2x3"), "shape must be a list"),
        (_array_map(shape=[1] * 65), "at most 64"),
        (_array_map(data="text"), "data must be bytes"),
        (_array_map(data=...), r"missing \['data'\]"),
        (msgpack.packb({b"__npgeneric__": True, b"data": 300, b"dtype": "|u1"}), "is not a uint8"),
        (msgpack.packb({b"__npgeneric__": True, b"data": [1], b"dtype": "<f4"}), "data must be a number"),
        (msgpack.packb({b"__npgeneric__": True, b"data": 1, b"dtype": "|O"}), "is refused"),
        (msgpack.packb({b"__npgeneric__": True, b"data": 1}), "needs 'data' and 'dtype'"),
    ],
)
def test_decoding_validates_array_and_scalar_maps(frame, message):
    with pytest.raises(ProtocolError, match=message):
        unpackb(frame)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"\xc1", "a byte that starts no msgpack object"),
        (packb({"a": np.zeros(4)})[:-3], "incomplete input"),
        (b"", "incomplete input"),
        (b"\x01\x02", "extra bytes"),
        (b"\x81\x01\x02", "not allowed for map key"),
        (b"\xa2\xff\xfe", "can't decode"),
        (b"\x91" * 5000, "nested too deeply"),
        (msgpack.packb(msgpack.ExtType(5, b"a")), "extension type 5"),
        ("a text frame", "expected a binary frame"),
    ],
)
def test_malformed_frames_raise_protocol_errors(frame, message):
    with pytest.raises(ProtocolError, match=message) as info:
        unpackb(frame)
    assert isinstance(info.value, ValueError)


def _message():
    return {
        "actions": np.linspace(0, 1, 32, dtype=np.float32).reshape(8, 4),
        "images": {"head": np.arange(48, dtype=np.uint8).reshape(4, 4, 3)},
        "state": np.array([0.1, -2.0, 3.5], np.float64),
        "scalar": np.float32(2.5),
        "flag": np.bool_(False),
        "prompt": "push",
    }


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in ("actions", "state"):
        assert a[key].dtype == b[key].dtype
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a["images"]["head"], b["images"]["head"])
    assert a["scalar"] == b["scalar"] and a["scalar"].dtype == b["scalar"].dtype
    assert a["flag"] == b["flag"] and a["prompt"] == b["prompt"]


def test_compatible_with_openpi_client_in_both_directions():
    openpi = pytest.importorskip("openpi_client.msgpack_numpy", reason="openpi-client is not installed")
    message = _message()
    _assert_same(openpi.unpackb(packb(message)), message)
    _assert_same(unpackb(openpi.packb(message)), message)
    _assert_same(unpackb(openpi.Packer().pack(message)), message)  # what WebsocketClientPolicy sends
    assert packb(message) == openpi.packb(message)  # byte for byte the same frame
