"""Finding 7: the agent's HTTP edge is guarded (token or client certificates off loopback), JSON
nesting and request memory are bounded, and a huge request never stalls health checks."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from agent.service import AgentService
from agent.settings import AgentSettings, ServerTLS
from agent.store import ModelStore
from sdk import tls
from sdk.errors import ConfigError
from tests.support.mosquitto import free_port
from tests.support.processes import stop_process

AGENT = Path(sys.executable).with_name("edge-agent")
TOKEN = "s3cret-token"
X = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}


@pytest.fixture
def affine(store: ModelStore, make_affine: Callable[..., Path]) -> ModelStore:
    store.install(make_affine("1"))
    return store


# ------------------------------------------------------------------------------ listener guard


def test_a_public_listener_needs_a_token_or_client_certificates(data_dir: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_API_TOKEN"}
    refused = subprocess.run(
        [str(AGENT), "serve", "--data-dir", str(data_dir), "--listen", f"0.0.0.0:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--api-token" in lines[0] and "Traceback" not in refused.stderr
    # server TLS alone is not authentication either
    with pytest.raises(ConfigError, match="client certificates"):
        AgentSettings(
            data_dir=data_dir, host="0.0.0.0", tls=ServerTLS(cert=data_dir / "c", key=data_dir / "k")
        ).check_exposure()


def test_a_public_listener_with_a_token_serves_health_open_and_the_rest_behind_it(
    affine: ModelStore, data_dir: Path, pub_path: Path
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(AGENT),
            "serve",
            "--data-dir",
            str(data_dir),
            "--trust-key",
            str(pub_path),
            "--listen",
            f"0.0.0.0:{port}",
        ],
        env={**os.environ, "EDGE_AGENT_API_TOKEN": TOKEN},
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        assert httpx.get(f"{url}/v2").status_code == 401
        r = httpx.post(f"{url}/v2/models/affine/infer", json={"inputs": [X]})
        assert r.status_code == 401 and "error" in r.json()
        ok = httpx.post(
            f"{url}/v2/models/affine/infer",
            json={"inputs": [X]},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert ok.status_code == 200
    finally:
        stop_process(proc)


def test_every_endpoint_but_health_needs_the_token(
    affine: ModelStore, start_agent: Callable[..., AgentService]
) -> None:
    agent = start_agent(api_token=TOKEN)
    good = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert httpx.get(agent.url + path).status_code == 200
    for method, path in [
        ("GET", "/v2"),
        ("GET", "/metrics"),
        ("GET", "/v2/models/affine"),
        ("GET", "/v2/models/affine/ready"),
        ("POST", "/v2/models/affine/infer"),
        ("GET", "/v2/nothing-here"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = httpx.request(method, agent.url + path, headers=headers, json={"inputs": [X]})
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(agent.url + "/v2", headers=good).status_code == 200
    assert (
        httpx.post(agent.url + "/v2/models/affine/infer", headers=good, json={"inputs": [X]}).status_code
        == 200
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tls.CertPair]:
    ca = tls.ensure_ca(tmp_path / "pki" / "ca")
    other = tls.ensure_ca(tmp_path / "pki" / "other-ca")
    return {
        "ca": ca,
        "server": tls.issue(
            ca, tls.CertPair(tmp_path / "pki" / "s.pem", tmp_path / "pki" / "s.key"), ["127.0.0.1"]
        ),
        "client": tls.issue(
            ca, tls.CertPair(tmp_path / "pki" / "c.pem", tmp_path / "pki" / "c.key"), ["app-1"], client=True
        ),
        "stranger": tls.issue(
            other, tls.CertPair(tmp_path / "pki" / "x.pem", tmp_path / "pki" / "x.key"), ["x"], client=True
        ),
    }


def test_mutual_tls_lets_in_only_clients_with_a_certificate_from_the_ca(
    affine: ModelStore, start_agent: Callable[..., AgentService], pki: dict[str, tls.CertPair]
) -> None:
    agent = start_agent(
        tls=ServerTLS(cert=pki["server"].cert, key=pki["server"].key, client_ca=pki["ca"].cert)
    )
    assert agent.url.startswith("https://")

    def client(cert: tls.CertPair | None) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(pki["ca"].cert))
        if cert is not None:
            ctx.load_cert_chain(str(cert.cert), str(cert.key))
        return httpx.Client(verify=ctx, timeout=10)

    with client(pki["client"]) as c:
        assert c.post(agent.url + "/v2/models/affine/infer", json={"inputs": [X]}).status_code == 200
    for cert in (None, pki["stranger"]):
        with (
            client(cert) as c,
            pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        ):
            c.get(agent.url + "/v2")
    # and a client that does not know the CA refuses the agent
    with httpx.Client(timeout=10) as c, pytest.raises(httpx.ConnectError):
        c.get(agent.url + "/v2/health/live")


# ------------------------------------------------------------------------------ bounded input


def test_deep_json_is_a_4xx_never_a_500(affine: ModelStore, start_agent: Callable[..., AgentService]) -> None:
    agent = start_agent()
    url = agent.url + "/v2/models/affine/infer"
    deep = (
        '{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":'
        + "[" * 200_000
        + "]" * 200_000
        + "}]}"
    )
    nested_data = {"inputs": [{**X, "data": json.loads("[" * 100 + "1" + "]" * 100)}]}
    deep_params = '{"parameters":' + '{"a":' * 50_000 + "1" + "}" * 50_000 + ',"inputs":[]}'
    for body in (deep, json.dumps(nested_data), deep_params, "[" * 5_000_000):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
        assert "error" in r.json()
    assert httpx.get(agent.url + "/v2/health/ready").status_code == 200


def test_a_stalled_body_is_a_408(
    affine: ModelStore, start_agent: Callable[..., AgentService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body's idle timeout (asyncio.timeout on Python 3.11+, wait_for before), through the ASGI
    app directly: a client that announces a body and sends none is cut off."""
    import asyncio

    from agent.http import app as app_module

    monkeypatch.setattr(app_module, "BODY_IDLE_TIMEOUT_S", 0.05)
    agent = start_agent()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v2/models/affine/infer",
        "headers": [(b"content-length", b"100")],
    }
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        await asyncio.sleep(60)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(agent.app(scope, receive, send), 10))
    assert sent[0]["status"] == 408
    assert b"no request body data" in b"".join(m.get("body", b"") for m in sent[1:])  # type: ignore[misc]


def test_body_caps_hold_without_a_content_length(
    affine: ModelStore, start_agent: Callable[..., AgentService]
) -> None:
    agent = start_agent(max_body_bytes=4 * 2**20, max_json_bytes=2**20)
    url = agent.url + "/v2/models/affine/infer"

    def chunks(total: int) -> Iterator[bytes]:
        for _ in range(total // 65536):
            yield b" " * 65536

    # chunked transfer: the cap is enforced as the bytes arrive, JSON's lower one first
    r = httpx.post(url, content=chunks(3 * 2**20), timeout=30)
    assert r.status_code == 413 and "JSON" in r.json()["error"]
    r = httpx.post(
        url, content=chunks(8 * 2**20), headers={"inference-header-content-length": "10"}, timeout=30
    )
    assert r.status_code == 413 and "4194304" in r.json()["error"]
    assert httpx.get(agent.url + "/v2/health/ready").status_code == 200


def _json_body(mib: float) -> bytes:
    rows = int(mib * 1024 * 1024 / 41.5)  # about 10.4 characters per number, 4 numbers a row
    data = np.random.default_rng(0).standard_normal(rows * 4).round(6).tolist()
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": data}]})
    return body.encode()


@pytest.fixture
def served(affine: ModelStore, data_dir: Path, pub_path: Path) -> Iterator[Callable[..., tuple[str, int]]]:
    procs: list[subprocess.Popen] = []

    def serve(*extra: str) -> tuple[str, int]:
        port = free_port()
        proc = subprocess.Popen(
            [
                str(AGENT),
                "serve",
                "--data-dir",
                str(data_dir),
                "--trust-key",
                str(pub_path),
                "--listen",
                f"127.0.0.1:{port}",
                *extra,
            ],
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    return url, proc.pid
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("the agent did not get ready")

    yield serve
    for proc in procs:
        stop_process(proc)


def _health_during(
    url: str, pid: int, send: Callable[[], httpx.Response]
) -> tuple[httpx.Response, list[float], int]:
    """Send a request in a thread while health is polled; the big answer, each health latency, peak RSS."""
    result: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: result.append(send()))

    agent = psutil.Process(pid)

    def rss() -> int:  # the agent and its request parser process
        return sum(p.memory_info().rss for p in [agent, *agent.children(recursive=True)])

    base, base_main = rss(), agent.memory_info().rss
    peak, peak_main = base, base_main
    waits: list[float] = []
    sender.start()
    with httpx.Client(timeout=30) as c:
        while sender.is_alive():
            t0 = time.monotonic()
            assert c.get(f"{url}/v2/health/ready").status_code == 200
            waits.append(time.monotonic() - t0)
            peak, peak_main = max(peak, rss()), max(peak_main, agent.memory_info().rss)
            time.sleep(0.05)
    sender.join()
    print(
        f"RSS growth: agent {(peak_main - base_main) / 2**20:.0f} MiB, with its parser {(peak - base) / 2**20:.0f} MiB"
    )
    return result[0], waits, peak - base, peak_main - base_main


def test_a_46_mib_json_body_never_stalls_health_and_memory_stays_bounded(
    served: Callable[..., tuple[str, int]],
) -> None:
    body = _json_body(46)
    assert 45 * 2**20 < len(body) < 48 * 2**20
    infer = "/v2/models/affine/infer"

    # defaults: refused from its Content-Length, before it is read
    url, pid = served()
    r, waits, _, _ = _health_during(url, pid, lambda: httpx.post(url + infer, content=body, timeout=120))
    assert r.status_code == 413 and "binary" in r.json()["error"]

    # allowed in: parsed off the event loop, one large body at a time
    url, pid = served("--max-json-mb", "64")
    senders = [lambda: httpx.post(url + infer, content=body, timeout=300) for _ in range(2)]
    answers: list[httpx.Response] = []
    second = threading.Thread(target=lambda: answers.append(senders[1]()))
    second.start()
    r, waits, grown, grown_agent = _health_during(url, pid, senders[0])
    second.join()
    assert r.status_code == 200 and answers[0].status_code == 200
    assert len(r.json()["outputs"][0]["data"]) == len(json.loads(body)["inputs"][0]["data"])
    # generous bounds: health answered throughout, and two concurrent requests cost about one
    assert len(waits) >= 3 and max(waits) < 5.0, f"health waited up to {max(waits):.1f} s"
    # the finding: one such request took the agent to 830 MiB; here two at once stay well under
    assert grown_agent < 400 * 2**20, f"the agent grew {grown_agent / 2**20:.0f} MiB"
    assert grown < 800 * 2**20, f"the agent and its parser grew {grown / 2**20:.0f} MiB"
