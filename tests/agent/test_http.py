"""The Open Inference Protocol v2 over a real uvicorn server on loopback, driven by tritonclient.http."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from agent.service import AgentService
from agent.store import ModelStore
from sdk import keys
from tests.agent.models import strings_bundle


@pytest.fixture
def agent(
    store: ModelStore,
    make_affine: Callable[..., Path],
    tmp_path: Path,
    key: keys.Ed25519PrivateKey,
    start_agent: Callable[..., AgentService],
) -> AgentService:
    store.install(make_affine("1"))
    store.install(strings_bundle(tmp_path / "src", key))
    return start_agent(max_body_bytes=64 * 1024)


@pytest.fixture
def client(agent: AgentService) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{agent.port}")


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("affine")
    assert client.is_model_ready("affine", "1")
    assert not client.is_model_ready("affine", "9")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "edgefleet-agent" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("affine", "1")
    assert model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in model["outputs"]] == ["y", "z"]


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_infer_json_and_binary(
    client: triton.InferenceServerClient, binary_in: bool, binary_out: bool
) -> None:
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    inp = triton.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outputs = [
        triton.InferRequestedOutput("y", binary_data=binary_out),
        triton.InferRequestedOutput("z", binary_data=binary_out),
    ]
    result = client.infer("affine", [inp], outputs=outputs, model_version="1", request_id="r-7")
    np.testing.assert_allclose(result.as_numpy("y"), x * 2 + 1, rtol=1e-6)
    assert result.as_numpy("z").tolist() == np.argmax(x * 2 + 1, axis=1).tolist()
    response = result.get_response()
    assert response["model_version"] == "1" and response["id"] == "r-7"
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary_out


def test_infer_without_outputs_defaults_to_binary(client: triton.InferenceServerClient) -> None:
    inp = triton.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), np.float32))
    result = client.infer("affine", [inp])
    assert result.as_numpy("y").tolist() == [[1.0] * 4]
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_tensors(client: triton.InferenceServerClient, binary: bool) -> None:
    text = np.array([b"edge", "fl\u00e9et".encode(), b""], dtype=object)
    inp = triton.InferInput("text", [3], "BYTES")
    inp.set_data_from_numpy(text, binary_data=binary)
    result = client.infer("strings", [inp], outputs=[triton.InferRequestedOutput("echo", binary_data=binary)])
    echoed = [x if isinstance(x, bytes) else x.encode() for x in result.as_numpy("echo").tolist()]
    assert echoed == text.tolist()


def _error(client: triton.InferenceServerClient, model: str, inp: triton.InferInput, **kw: object) -> str:
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [inp], **kw)  # type: ignore[arg-type]
    return str(info.value)


def test_errors_through_tritonclient(client: triton.InferenceServerClient) -> None:
    good = triton.InferInput("x", [1, 4], "FP32")
    good.set_data_from_numpy(np.zeros((1, 4), np.float32))
    assert "unknown model" in _error(client, "nope", good)
    assert "not being served" in _error(client, "affine", good, model_version="7")
    wrong_name = triton.InferInput("q", [1, 4], "FP32")
    wrong_name.set_data_from_numpy(np.zeros((1, 4), np.float32))
    assert "has no input 'q'" in _error(client, "affine", wrong_name)
    wrong_shape = triton.InferInput("x", [1, 5], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 5), np.float32))
    assert "expects [-1, 4]" in _error(client, "affine", wrong_shape)
    wrong_type = triton.InferInput("x", [1, 4], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 4), np.float64))
    assert "expects FP32" in _error(client, "affine", wrong_type)


def _post(
    agent: AgentService,
    body: bytes,
    headers: dict[str, str] | None = None,
    path: str = "/v2/models/affine/infer",
) -> httpx.Response:
    return httpx.post(agent.url + path, content=body, headers=headers or {}, timeout=10)


def _assert_error(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert text in response.json()["error"]


def test_bad_requests_get_4xx_with_error(agent: AgentService) -> None:
    x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    _assert_error(_post(agent, b"{not json"), 400, "not valid JSON")
    _assert_error(_post(agent, b"[]"), 400, "JSON object")
    _assert_error(
        _post(agent, json.dumps({"inputs": [{**x, "data": [1, 2, 3]}]}).encode()), 400, "needs 4 elements"
    )
    _assert_error(
        _post(agent, json.dumps({"inputs": [{**x, "datatype": "FP99"}]}).encode()), 400, "unknown datatype"
    )
    _assert_error(
        _post(agent, json.dumps({"inputs": [x], "outputs": [{"name": "w"}]}).encode()),
        400,
        "has no output 'w'",
    )
    _assert_error(_post(agent, json.dumps({"inputs": []}).encode()), 400, "needs input(s) x")
    _assert_error(_post(agent, b"{}", path="/v2/models/ghost/infer"), 404, "unknown model")
    # binary extension: a header length that does not fit, a tensor size that does not match
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 12}}
            ]
        }
    ).encode()
    _assert_error(
        _post(agent, header + bytes(12), {"Inference-Header-Content-Length": "999"}), 400, "does not fit"
    )
    _assert_error(
        _post(agent, header + bytes(12), {"Inference-Header-Content-Length": "x1"}), 400, "not a number"
    )
    _assert_error(
        _post(agent, header + bytes(12), {"Inference-Header-Content-Length": str(len(header))}),
        400,
        "needs 16 bytes",
    )
    header16 = header.replace(b'"binary_data_size": 12', b'"binary_data_size": 16')
    _assert_error(
        _post(agent, header16 + bytes(20), {"Inference-Header-Content-Length": str(len(header16))}),
        400,
        "no input claims",
    )
    # the body cap (64 KiB in this fixture)
    big = json.dumps({"inputs": [{**x, "shape": [5000, 4], "data": [0.5] * 20000}]}).encode()
    _assert_error(_post(agent, big), 413, "at most 65536")
    assert httpx.get(agent.url + "/v2/health/live").status_code == 200


def test_unknown_routes_and_methods(agent: AgentService) -> None:
    assert httpx.get(agent.url + "/v3").status_code == 404
    assert httpx.get(agent.url + "/v2/models/affine/infer").status_code == 405
    assert httpx.get(agent.url + "/v2/models/ghost").status_code == 404
    assert "error" in httpx.get(agent.url + "/v2/models/ghost").json()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
_tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "y", "text", ""]),
        "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "FP16", "BOOL", "nope"]),
        "shape": st.lists(st.integers(-2, 6), max_size=3),
    },
    optional={
        "data": _json_values,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "binary_data", "x"]), st.integers(-5, 40) | _json_values
        ),
    },
)
_body = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(_tensor, max_size=3) | _json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["y", "z", "q"])}), max_size=2),
        "parameters": st.dictionaries(st.sampled_from(["binary_data_output"]), _json_values),
        "id": _json_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    doc=_body,
    tail=st.binary(max_size=48),
    header_len=st.none() | st.integers(-3, 400),
    model=st.sampled_from(["affine", "strings", "ghost"]),
)
def test_fuzzed_infer_never_takes_the_agent_down(
    agent: AgentService, doc: object, tail: bytes, header_len: int | None, model: str
) -> None:
    head = json.dumps(doc).encode()
    headers = {} if header_len is None else {"Inference-Header-Content-Length": str(header_len)}
    response = _post(
        agent, head + tail if header_len is not None else head, headers, path=f"/v2/models/{model}/infer"
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)
    assert httpx.get(agent.url + "/v2/health/live").status_code == 200
