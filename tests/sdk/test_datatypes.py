"""Open Inference Protocol datatypes <-> numpy, and the binary wire layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sdk.datatypes import (
    DATATYPES,
    array_from_wire,
    array_to_wire,
    bytes_from_wire,
    element_size,
    from_numpy_dtype,
    from_onnx_elem_type,
    from_ort_type,
    to_numpy_dtype,
)
from sdk.errors import DatatypeError
from sdk.tensors import EncodedTensor

NUMERIC = [d for d in DATATYPES if d != "BYTES"]
EXPECTED = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
}


def test_all_protocol_datatypes_are_covered():
    assert set(DATATYPES) == set(EXPECTED) | {"BYTES"}
    for name, size in EXPECTED.items():
        assert element_size(name) == size


@pytest.mark.parametrize("datatype", DATATYPES)
def test_name_round_trip(datatype: str):
    assert from_numpy_dtype(to_numpy_dtype(datatype)) == datatype


@pytest.mark.parametrize("datatype", NUMERIC)
@given(data=st.data())
def test_wire_round_trip(datatype: str, data):
    dtype = to_numpy_dtype(datatype)
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=5))
    arr = data.draw(hnp.arrays(dtype, shape))
    raw = array_to_wire(arr)
    assert len(raw) == arr.size * dtype.itemsize
    back = array_from_wire(raw, datatype, list(shape))
    assert back.dtype == dtype and back.shape == arr.shape
    assert back.tobytes() == np.ascontiguousarray(arr).tobytes()  # bit-exact, NaNs included


@given(st.lists(st.binary(max_size=40), max_size=12))
def test_bytes_round_trip(items):
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    back = array_from_wire(array_to_wire(arr, "BYTES"), "BYTES", [len(items)])
    assert list(back) == items


def test_strings_become_utf8_bytes():
    arr = np.array(["héllo", "x"], dtype=object)
    assert list(bytes_from_wire(array_to_wire(arr))) == ["héllo".encode(), b"x"]


def test_wrong_byte_count_and_bad_bytes_layout():
    with pytest.raises(DatatypeError, match="needs 16 bytes, got 12"):
        array_from_wire(b"\0" * 12, "FP32", [2, 2])
    with pytest.raises(DatatypeError, match="length prefix"):
        bytes_from_wire(b"\x01\0")
    with pytest.raises(DatatypeError, match="past the end"):
        bytes_from_wire(b"\x09\0\0\0abc")
    with pytest.raises(DatatypeError, match="shape says 3"):
        array_from_wire(b"\x01\0\0\0a", "BYTES", [3])
    with pytest.raises(DatatypeError, match="negative"):
        array_from_wire(b"", "FP32", [-1, 0])


def test_unknown_names():
    with pytest.raises(DatatypeError, match="unknown datatype 'FP8'"):
        to_numpy_dtype("FP8")
    with pytest.raises(DatatypeError):
        from_numpy_dtype(np.complex64)
    assert from_onnx_elem_type(1) == "FP32" and from_onnx_elem_type(8) == "BYTES"
    assert from_ort_type("tensor(float16)") == "FP16"
    with pytest.raises(DatatypeError):
        from_ort_type("seq(tensor(float))")


def test_encoded_tensor_round_trip():
    arr = np.arange(6, dtype=np.int64).reshape(2, 3)
    enc = EncodedTensor.from_numpy(arr)
    assert enc.datatype == "INT64" and enc.shape == [2, 3]
    np.testing.assert_array_equal(EncodedTensor.model_validate_json(enc.model_dump_json()).to_numpy(), arr)
