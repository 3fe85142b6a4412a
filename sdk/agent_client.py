"""A small Python client for the agent's Open Inference Protocol v2 REST API.

Tensors go as binary (the binary tensor extension) by default, which is what the agent is fastest
at; ``binary=False`` sends and asks for JSON. HTTP errors are mapped into the :mod:`sdk.errors`
tree in one place (:func:`_raise_for_status`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from sdk.datatypes import array_from_wire, array_to_wire, from_numpy_dtype, to_numpy_dtype
from sdk.errors import EdgeError, InferenceError, InvalidInputError, ModelNotFoundError, OverloadedError

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class InferResult:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = response.json().get("error") or response.text
    except ValueError:
        message = response.text
    status = response.status_code
    error: type[EdgeError] = (
        ModelNotFoundError
        if status == 404
        else OverloadedError
        if status == 503
        else InvalidInputError
        if 400 <= status < 500
        else InferenceError
    )
    raise error(f"agent answered {status}: {message}")


def _model_path(name: str, version: str | None) -> str:
    return f"/v2/models/{name}" + (f"/versions/{version}" if version else "")


class AgentClient:
    def __init__(
        self, base_url: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str) -> httpx.Response:
        try:
            return self._http.get(path)
        except httpx.HTTPError as exc:
            raise InferenceError(f"cannot reach the agent at {self._http.base_url}: {exc}") from None

    def live(self) -> bool:
        return self._get("/v2/health/live").status_code == 200

    def ready(self) -> bool:
        return self._get("/v2/health/ready").status_code == 200

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self._get(_model_path(name, version) + "/ready").status_code == 200

    def server_metadata(self) -> dict[str, Any]:
        r = self._get("/v2")
        _raise_for_status(r)
        return r.json()

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        r = self._get(_model_path(name, version))
        _raise_for_status(r)
        return r.json()

    def infer(
        self,
        name: str,
        inputs: dict[str, np.ndarray],
        *,
        version: str | None = None,
        outputs: list[str] | None = None,
        binary: bool = True,
        request_id: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> InferResult:
        """``parameters`` go in the request's parameters, e.g. ``{"group": "site-a"}`` for bias monitoring."""
        body, header_length = encode_request(
            inputs, outputs=outputs, binary=binary, request_id=request_id, parameters=parameters
        )
        headers = {HEADER_LENGTH: str(header_length)} if header_length is not None else {}
        try:
            r = self._http.post(_model_path(name, version) + "/infer", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise InferenceError(f"cannot reach the agent at {self._http.base_url}: {exc}") from None
        _raise_for_status(r)
        return decode_response(r.content, r.headers.get(HEADER_LENGTH))

    def feedback(self, name: str, labels: dict[str, Any] | list[tuple[str, Any]]) -> dict[str, int]:
        """Ground truth for earlier requests by their request id: ``{id: label}`` or ``[(id, label)]``
        (a label is a class index or a number, or a list with one per row of the request). Returns
        the agent's counts: accepted, unknown, expired, invalid."""
        pairs = labels.items() if isinstance(labels, dict) else labels
        body = {"feedback": [{"id": i, "label": label} for i, label in pairs]}
        try:
            r = self._http.post(_model_path(name, None) + "/feedback", json=body)
        except httpx.HTTPError as exc:
            raise InferenceError(f"cannot reach the agent at {self._http.base_url}: {exc}") from None
        _raise_for_status(r)
        return r.json()


def encode_request(
    inputs: dict[str, np.ndarray],
    *,
    outputs: list[str] | None = None,
    binary: bool = True,
    request_id: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """An infer body and, for binary tensors, the JSON header's length."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = from_numpy_dtype(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = array_to_wire(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
        else:
            entry["data"] = array.reshape(-1).tolist()
        tensors.append(entry)
    doc: dict[str, Any] = {
        "inputs": tensors,
        "parameters": {**(parameters or {}), "binary_data_output": binary},
    }
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    if request_id is not None:
        doc["id"] = request_id
    header = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def decode_response(body: bytes, header_length: str | None) -> InferResult:
    n = int(header_length) if header_length else len(body)
    doc = json.loads(body[:n])
    binary = memoryview(body)[n:]
    offset = 0
    outputs: dict[str, np.ndarray] = {}
    for out in doc["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            outputs[out["name"]] = array_from_wire(
                binary[offset : offset + size], out["datatype"], out["shape"]
            )
            offset += size
        elif out["datatype"] == "BYTES":
            arr = np.empty(len(out["data"]), dtype=object)
            arr[:] = [s.encode("utf-8") for s in out["data"]]
            outputs[out["name"]] = arr.reshape(out["shape"])
        else:
            outputs[out["name"]] = np.asarray(out["data"], dtype=to_numpy_dtype(out["datatype"])).reshape(
                out["shape"]
            )
    return InferResult(
        model_name=doc["model_name"], model_version=doc["model_version"], outputs=outputs, id=doc.get("id")
    )
