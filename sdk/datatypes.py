"""Open Inference Protocol v2 datatypes and their numpy equivalents.

BYTES tensors are numpy object arrays of ``bytes``; every other datatype has a fixed-size numpy
dtype, always little-endian on the wire (the binary tensor extension is little-endian).
"""

from __future__ import annotations

import math

import numpy as np

from sdk.errors import DatatypeError

_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_FROM_KIND: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in _TO_NUMPY.items() if name != "BYTES"
}

DATATYPES: tuple[str, ...] = tuple(_TO_NUMPY)

#: ONNX TensorProto element type number -> datatype (for model metadata).
_ONNX_ELEM_TYPE: dict[int, str] = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
}
#: onnxruntime's type strings, e.g. ``tensor(float)``.
_ORT_TYPE: dict[str, str] = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


def to_numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for an Open Inference Protocol datatype name such as ``FP32``."""
    try:
        return _TO_NUMPY[datatype]
    except KeyError:
        raise DatatypeError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


def from_numpy_dtype(dtype: np.dtype | type) -> str:
    """The Open Inference Protocol datatype name for a numpy dtype."""
    dt = np.dtype(dtype)
    if dt.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _FROM_KIND[(dt.kind, dt.itemsize)]
    except KeyError:
        raise DatatypeError(f"numpy dtype {dt} has no Open Inference Protocol datatype") from None


def from_onnx_elem_type(elem_type: int) -> str:
    """Datatype for an ONNX ``TensorProto`` element type number."""
    try:
        return _ONNX_ELEM_TYPE[elem_type]
    except KeyError:
        raise DatatypeError(
            f"ONNX element type {elem_type} has no Open Inference Protocol datatype"
        ) from None


def from_ort_type(type_str: str) -> str:
    """Datatype for an onnxruntime type string such as ``tensor(float)``."""
    try:
        return _ORT_TYPE[type_str]
    except KeyError:
        raise DatatypeError(
            f"onnxruntime type {type_str!r} has no Open Inference Protocol datatype"
        ) from None


def element_size(datatype: str) -> int:
    """Bytes per element in the binary extension; BYTES has no fixed size and raises."""
    if datatype == "BYTES":
        raise DatatypeError("BYTES elements have no fixed size")
    return to_numpy_dtype(datatype).itemsize


def bytes_to_wire(array: np.ndarray) -> bytes:
    """Serialize a BYTES tensor for the binary extension: each element a 4-byte LE length + bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(len(raw).to_bytes(4, "little"))
        parts.append(raw)
    return b"".join(parts)


def bytes_from_wire(raw: bytes | memoryview, count: int | None = None) -> np.ndarray:
    """Parse the binary extension's BYTES layout back into a flat object array."""
    view = memoryview(raw)
    items: list[bytes] = []
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise DatatypeError("BYTES tensor data ends inside a length prefix")
        n = int.from_bytes(view[pos : pos + 4], "little")
        pos += 4
        if pos + n > len(view):
            raise DatatypeError("BYTES tensor element runs past the end of its data")
        items.append(bytes(view[pos : pos + n]))
        pos += n
    if count is not None and len(items) != count:
        raise DatatypeError(f"BYTES tensor holds {len(items)} elements, shape says {count}")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def array_to_wire(array: np.ndarray, datatype: str | None = None) -> bytes:
    """Raw little-endian bytes of a tensor for the binary extension."""
    datatype = datatype or from_numpy_dtype(array.dtype)
    if datatype == "BYTES":
        return bytes_to_wire(array)
    return np.ascontiguousarray(array, dtype=to_numpy_dtype(datatype)).tobytes()


def array_from_wire(raw: bytes | memoryview, datatype: str, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """Build a tensor from binary-extension bytes, checking the byte count against the shape."""
    count = math.prod(shape)  # a Python int: no overflow, and ~20x faster than np.prod on a request
    if any(d < 0 for d in shape):
        raise DatatypeError(f"shape {list(shape)} has a negative dimension")
    if datatype == "BYTES":
        return bytes_from_wire(raw, count).reshape(shape)
    dtype = to_numpy_dtype(datatype)
    if len(raw) != count * dtype.itemsize:
        raise DatatypeError(
            f"{datatype} tensor of shape {list(shape)} needs {count * dtype.itemsize} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)
