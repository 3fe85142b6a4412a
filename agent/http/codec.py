"""Open Inference Protocol v2 REST bodies <-> :mod:`agent.infer_type`, JSON and binary tensors.

The binary tensor extension: the body is a JSON header of ``Inference-Header-Content-Length``
bytes followed by raw tensors, in input order, each sized by its ``parameters.binary_data_size``.
Outputs come back the same way when the request asks for ``binary_data`` (per output) or
``binary_data_output`` (for all).
"""

from __future__ import annotations

import json
import math
import secrets
from typing import Any

import numpy as np

from agent.infer_type import InferRequest, InferResponse, InferTensor, RequestedOutput
from sdk.datatypes import DATATYPES, array_from_wire, array_to_wire, to_numpy_dtype
from sdk.errors import DatatypeError, InvalidInputError, ProtocolError

HEADER_LENGTH = "inference-header-content-length"
#: refuse shapes whose element count alone would be absurd, before allocating anything.
_MAX_ELEMENTS = 1 << 31
#: deepest nesting of a tensor's JSON ``data``; no model input comes near it.
MAX_DATA_NESTING = 32
#: JSON output tensors above this many elements are written in slices of it, so the Python list of
#: all their numbers (some 32 bytes per element) never exists at once.
JSON_SLICE = 1 << 16


def _field(obj: dict[str, Any], key: str, kind: type, where: str, required: bool = True) -> Any:
    """``obj[key]`` checked to be a ``kind`` (str, list or dict); None when absent and not required."""
    value = obj.get(key)
    if value is None:
        if required:
            raise ProtocolError(f"{where} lacks {key!r}")
        return None
    if not isinstance(value, kind):
        raise ProtocolError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _shape(raw: Any, where: str) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise ProtocolError(f"{where}: 'shape' must be a list of integers")
    if any(d < 0 for d in raw):
        raise ProtocolError(f"{where}: 'shape' {raw} has a negative dimension")
    if math.prod(raw) > _MAX_ELEMENTS:
        raise InvalidInputError(f"{where}: shape {raw} is too large")
    return raw


def _flatten(data: Any, depth: int = 0) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if depth >= MAX_DATA_NESTING:
        raise ProtocolError(f"'data' is nested deeper than {MAX_DATA_NESTING} levels")
    if all(not isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    for x in data:
        out.extend(_flatten(x, depth + 1))
    return out


def _json_tensor(data: Any, datatype: str, shape: list[int], where: str) -> np.ndarray:
    flat = _flatten(data)
    count = math.prod(shape)
    if len(flat) != count:
        raise InvalidInputError(f"{where}: shape {shape} needs {count} elements, 'data' has {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"{where}: BYTES data must be strings")
        arr = np.empty(count, dtype=object)
        arr[:] = [x.encode("utf-8") for x in flat]
        return arr.reshape(shape)
    if not all(isinstance(x, (int, float)) for x in flat):
        raise ProtocolError(f"{where}: {datatype} data must be numbers")
    try:
        return np.asarray(flat, dtype=to_numpy_dtype(datatype)).reshape(shape)
    except (ValueError, OverflowError, TypeError) as exc:
        raise InvalidInputError(f"{where}: data does not fit {datatype}: {exc}") from None


def decode_request(
    body: bytes | bytearray, header_length: str | None, model: str, version: str | None
) -> InferRequest:
    """Parse an infer body; raises :class:`ProtocolError`/:class:`InvalidInputError` for anything malformed."""
    binary = memoryview(b"")
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(
                f"Inference-Header-Content-Length {header_length!r} is not a number"
            ) from None
        if not 0 < n <= len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length {n} does not fit a body of {len(body)} bytes"
            )
        binary = memoryview(body)[n:]
        body = body[:n]
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("the request body's JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the request body must be a JSON object")
    raw_inputs = _field(doc, "inputs", list, "request")
    params = _field(doc, "parameters", dict, "request", required=False) or {}
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("request 'id' must be a string")

    inputs: list[InferTensor] = []
    offset = 0
    for i, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise ProtocolError(f"inputs[{i}] must be an object")
        name = _field(raw, "name", str, f"inputs[{i}]")
        where = f"input {name!r}"
        datatype = _field(raw, "datatype", str, where)
        if datatype not in DATATYPES:
            raise InvalidInputError(f"{where}: unknown datatype {datatype!r}")
        shape = _shape(raw.get("shape"), where)
        tparams = _field(raw, "parameters", dict, where, required=False) or {}
        size = tparams.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise ProtocolError(f"{where}: binary_data_size {size} runs past the end of the body")
            try:
                data = array_from_wire(binary[offset : offset + size], datatype, shape)
            except DatatypeError as exc:
                raise InvalidInputError(f"{where}: {exc}") from None
            offset += size
        else:
            if "data" not in raw:
                raise ProtocolError(f"{where} has neither 'data' nor binary_data_size")
            data = _json_tensor(raw["data"], datatype, shape, where)
        inputs.append(InferTensor(name=name, datatype=datatype, shape=shape, data=data, parameters=tparams))
    if offset != len(binary):
        raise ProtocolError(f"the body has {len(binary) - offset} bytes of binary data that no input claims")

    outputs = None
    raw_outputs = _field(doc, "outputs", list, "request", required=False)
    if raw_outputs is not None:
        outputs = []
        for i, raw in enumerate(raw_outputs):
            if not isinstance(raw, dict):
                raise ProtocolError(f"outputs[{i}] must be an object")
            oparams = _field(raw, "parameters", dict, f"outputs[{i}]", required=False) or {}
            want = oparams.get("binary_data")
            outputs.append(
                RequestedOutput(
                    _field(raw, "name", str, f"outputs[{i}]"), bool(want) if want is not None else None
                )
            )
    return InferRequest(
        model_name=model,
        model_version=version,
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        parameters=params,
    )


def _json_data(tensor: InferTensor) -> list[Any]:
    flat = tensor.data.reshape(-1)
    if tensor.datatype != "BYTES":
        return flat.tolist()
    try:
        return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in flat]
    except UnicodeDecodeError:
        raise InvalidInputError(
            f"output {tensor.name!r} holds bytes that are not UTF-8; request it with binary_data"
        ) from None


def _json_data_sliced(tensor: InferTensor) -> list[bytes]:
    """``tensor``'s JSON ``data`` array, encoded a slice at a time."""
    flat = tensor.data.reshape(-1)
    parts = [b"["]
    for start in range(0, flat.size, JSON_SLICE):
        if start:
            parts.append(b",")
        piece = _json_data(InferTensor(tensor.name, tensor.datatype, [], flat[start : start + JSON_SLICE]))
        parts.append(json.dumps(piece, separators=(",", ":")).encode("utf-8")[1:-1])
    parts.append(b"]")
    return parts


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    parts, header_length = encode_response_parts(response, request)
    return b"".join(parts), header_length


def encode_response_parts(response: InferResponse, request: InferRequest) -> tuple[list[bytes], int | None]:
    """The response body as parts to send one after the other (a large JSON tensor is never joined
    into one buffer), and the JSON header's length when binary tensors follow it."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    wanted = {o.name: o.binary for o in request.outputs or []}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    # Large JSON tensors are encoded apart and spliced in where a one-off placeholder stands.
    sliced: dict[str, list[bytes]] = {}
    nonce = ""  # drawn when the first large tensor needs a placeholder
    for t in response.outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        binary = wanted.get(t.name)
        if binary if binary is not None else default_binary:
            raw = array_to_wire(t.data, t.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif t.data.size > JSON_SLICE:
            nonce = nonce or secrets.token_hex(8)
            placeholder = f"@{nonce}-{len(sliced)}"
            sliced[json.dumps(placeholder)] = _json_data_sliced(t)
            entry["data"] = placeholder
        else:
            entry["data"] = _json_data(t)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        doc["id"] = response.id
    header = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    parts: list[bytes] = []
    for placeholder, data in sliced.items():
        before, _, header = header.partition(placeholder.encode("utf-8"))
        parts += [before, *data]
    parts.append(header)
    if not blobs:
        return parts, None
    return parts + blobs, sum(len(p) for p in parts)
