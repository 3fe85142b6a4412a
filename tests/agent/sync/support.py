"""Real pieces for the sync tests: signed bundles, a Range-capable bundle server, an MQTT probe.

``FakeStore`` is the one seam: a small StorePort for unit tests that still verifies every bundle
with ``sdk.bundle.verify_bundle`` (real signatures and hashes) and can be told to fail a smoke test.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from sdk import messages
from sdk.bundle import verify_bundle
from sdk.credentials import DeviceCredentials
from sdk.errors import ModelStoreError
from sdk.topics import topic

# ------------------------------------------------------------------------------------- bundles


def desired_model(bundle: Path, name: str, version: str, url: str | None = None) -> messages.DesiredModel:
    data = bundle.read_bytes()
    return messages.DesiredModel(
        name=name,
        version=version,
        bundle_url=url or f"/bundles/{bundle.name}",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


# --------------------------------------------------------------------------------- fake store


@dataclass(frozen=True)
class Installed:
    name: str
    version: str
    previous_version: str | None


@dataclass
class FakeStore:
    trusted: list[Any]
    #: (name, version) pairs whose smoke test "fails".
    broken: set[tuple[str, str]] = field(default_factory=set)
    versions: dict[str, set[str]] = field(default_factory=dict)
    active: dict[str, str] = field(default_factory=dict)
    previous: dict[str, str | None] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    listeners: list[Callable[[str], None]] = field(default_factory=list)

    def install(self, bundle_path: Path, *, allow_downgrade: bool = False) -> Installed:
        manifest = verify_bundle(bundle_path, self.trusted).manifest
        self.calls.append(("install", manifest.name, manifest.version))
        if (manifest.name, manifest.version) in self.broken:
            raise ModelStoreError(f"smoke test of {manifest.name} {manifest.version} failed: output differs")
        self.versions.setdefault(manifest.name, set()).add(manifest.version)
        return self._switch(manifest.name, manifest.version)

    def activate(self, name: str, version: str, *, allow_downgrade: bool = False) -> Installed:
        self.calls.append(("activate", name, version))
        if not self.has_version(name, version):
            raise ModelStoreError(f"{name} {version} is not installed")
        return self._switch(name, version)

    def rollback(self, name: str, *, allow_downgrade: bool = False) -> Installed:
        self.calls.append(("rollback", name, self.previous.get(name) or ""))
        target = self.previous.get(name)
        if target is None:
            raise ModelStoreError(f"{name} has no previous version")
        return self._switch(name, target)

    def _switch(self, name: str, version: str) -> Installed:
        before = self.active.get(name)
        if before != version:
            self.previous[name] = before
        self.active[name] = version
        for fn in self.listeners:
            fn(name)
        return Installed(name, version, self.previous.get(name))

    def has_version(self, name: str, version: str) -> bool:
        return version in self.versions.get(name, set())

    def active_versions(self) -> dict[str, str]:
        return dict(self.active)

    def active_profile(self) -> str | None:
        return None

    def install_shadow(self, bundle_path: Path) -> Installed:
        raise ModelStoreError("this fake store keeps no shadows; tests of shadows use the real store")

    def set_shadow(self, name: str, version: str) -> Installed:
        raise ModelStoreError("this fake store keeps no shadows; tests of shadows use the real store")

    def clear_shadow(self, name: str) -> None:
        pass

    def shadow_versions(self) -> dict[str, str]:
        return {}

    def add_listener(self, fn: Callable[[str], None]) -> None:
        self.listeners.append(fn)


class NoStats:
    def telemetry_snapshot(self) -> list[messages.ModelTelemetry]:
        return [messages.ModelTelemetry(name="m", version="1", requests=3, errors=0, latency_ms_p50=1.5)]


# ------------------------------------------------------------------------------ bundle server


class BundleServer:
    """Serves ``root`` over HTTP on loopback with Range support and a bearer token check.

    ``cut_after[name] = n`` makes the next full request for ``name`` send only ``n`` bytes of its
    announced length and then drop the connection (once). ``requests`` records (path, headers).
    """

    def __init__(self, root: Path, token: str) -> None:
        self.root = root
        self.token = token
        self.cut_after: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.ignore_range = False
        #: (bytes, seconds): send the body this many bytes at a time with a pause between.
        self.throttle: tuple[int, float] | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers)))
                if self.headers.get("Authorization") != f"Bearer {server.token}":
                    self._reply(401, b'{"error": "bad token"}')
                    return
                name = self.path.rsplit("/", 1)[-1]
                path = server.root / name
                if not self.path.startswith("/bundles/") or not path.is_file():
                    self._reply(404, b'{"error": "not found"}')
                    return
                data = path.read_bytes()
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self._reply(416, b"")
                        return
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                cut = server.cut_after.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if server.throttle is None:
                    self.wfile.write(body)
                    return
                step, pause = server.throttle
                for i in range(0, len(body), step):
                    self.wfile.write(body[i : i + step])
                    self.wfile.flush()
                    time.sleep(pause)

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that hang up early (size cap, cancelled download) are expected

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=lambda: self._httpd.serve_forever(poll_interval=0.05), daemon=True
        )

    def __enter__(self) -> BundleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# ----------------------------------------------------------------------------------- MQTT probe


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> dict[str, Any]:
        return json.loads(self.payload)


class Probe:
    """A fleet-side MQTT client for tests: publishes desired states, records everything under devices/."""

    def __init__(
        self, host: str, port: int, *, username: str | None = None, password: str | None = None
    ) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        # a persistent session: messages published while the probe reconnects wait for it
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}", clean_session=False
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=1)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._host, self._port = host, port

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        client.subscribe("edgefleet/v1/devices/#", qos=1)
        self._connected.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, msg.payload, msg.retain))

    def __enter__(self) -> Probe:
        self.client.connect(self._host, self._port)
        self.client.loop_start()
        assert self._connected.wait(10), "probe could not connect"
        time.sleep(0.1)  # let the subscription settle
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish_desired(self, device_id: str, desired: messages.DesiredState) -> None:
        self.client.publish(
            topic("desired", device_id), desired.to_bytes(), qos=1, retain=True
        ).wait_for_publish(5)

    def on(self, kind: str, device_id: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic(kind, device_id)]  # type: ignore[arg-type]

    def wait_for(
        self,
        kind: str,
        device_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 15.0,
        *,
        since: int = 0,
    ) -> dict[str, Any]:
        """The newest message of ``kind`` (from index ``since`` on) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in reversed(self.on(kind, device_id)[since:]):
                if m.payload and predicate(m.json()):
                    return m.json()
            time.sleep(0.05)
        seen = [m.payload.decode()[:300] for m in self.on(kind, device_id)[-5:]]
        raise AssertionError(f"no {kind} message of {device_id} matched within {timeout} s; last: {seen}")

    def last(self, kind: str, device_id: str) -> dict[str, Any]:
        found = self.on(kind, device_id)
        assert found, f"no {kind} message of {device_id}"
        return found[-1].json()


# --------------------------------------------------------------------------------- devices


def acl_text() -> str:
    from sdk.topics import acl_pattern

    return f"user fleet\ntopic readwrite edgefleet/v1/#\n\n{acl_pattern()}\n"


def write_credentials(
    path: Path,
    device_id: str,
    password: str,
    token: str,
    ca_file: Path | None = None,
    fleet_key: str | None = None,
) -> Path:
    return DeviceCredentials(
        device_id=device_id,
        token=token,
        mqtt_username=device_id,
        mqtt_password=password,
        ca_file=str(ca_file) if ca_file else None,
        fleet_key=fleet_key,
    ).save(path)


@contextmanager
def running(service: Any) -> Iterator[Any]:
    service.start()
    try:
        yield service
    finally:
        service.stop()


def start_device_process(config: Any, trusted_key: Path, workdir: Path) -> subprocess.Popen:
    """Run a SyncService in its own process (tests/agent/sync/device_main.py) and wait until it started."""
    raw = {k: str(v) if isinstance(v, Path) else v for k, v in vars(config).items()}
    raw["trusted_key"] = str(trusted_key)
    (workdir / "device.json").write_text(json.dumps(raw))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.agent.sync.device_main", str(workdir / "device.json")],
        cwd=Path(__file__).parents[3],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
    return proc


def kill_9_and_expect_offline(proc: subprocess.Popen, probe: Probe, device_id: str) -> None:
    """SIGKILL the device process: no goodbye, so the broker must publish its last will."""
    seen = len(probe.on("status", device_id))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    probe.wait_for("status", device_id, lambda s: s["state"] == "offline", timeout=10, since=seen)


@contextmanager
def reaped(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Make sure a device process is gone when the test ends, whatever happened."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
