"""The listening socket (named errors for a taken port, TCP_NODELAY on every connection) and the sync
side at start-up."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest

from agent.service import AgentService, bind
from agent.settings import AgentSettings, SyncSettings
from sdk.credentials import DeviceCredentials
from sdk.errors import ConfigError


def test_listening_socket_lets_asyncio_disable_nagle() -> None:
    # asyncio sets TCP_NODELAY on accepted sockets only when proto is TCP; without it each response
    # waits ~40 ms for a delayed ACK between its header and body writes.
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_taken_port_is_named() -> None:
    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}.*--listen"):
            bind("127.0.0.1", port)
    finally:
        sock.close()


# ------------------------------------------------------------------- the sync side at start-up


def _sync_settings(tmp_path: Path, device_id: str, credentials: DeviceCredentials) -> AgentSettings:
    path = credentials.save(tmp_path / "credentials.json")
    return AgentSettings(
        data_dir=tmp_path / "data",
        port=0,
        sync=SyncSettings(
            fleet_url="http://127.0.0.1:9",
            broker_url="mqtt://127.0.0.1:9",
            device_id=device_id,
            credentials_file=path,
        ),
    )


def _credentials(device_id: str, **kw: str) -> DeviceCredentials:
    return DeviceCredentials(device_id=device_id, token="t", mqtt_username=device_id, mqtt_password="p", **kw)


def test_credentials_of_another_device_or_a_bad_ca_fail_the_start_before_serving(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds the credentials of device 'dev-b', not 'dev-a'"):
        AgentService(_sync_settings(tmp_path, "dev-a", _credentials("dev-b"))).start_background()
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load the CA"):
        AgentService(
            _sync_settings(tmp_path, "dev-a", _credentials("dev-a", ca_file="ca.pem"))
        ).start_background()


def test_the_sync_side_starts_after_the_server_and_its_failure_stops_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its imports are off the path to ready; an agent whose sync cannot start still stops with the
    error (here: a build without the sync side), as before."""
    monkeypatch.setitem(sys.modules, "agent.sync", None)  # `import agent.sync` now fails
    service = AgentService(_sync_settings(tmp_path, "dev-a", _credentials("dev-a")))
    service.prepare()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            service.serve()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    [error] = failure
    assert isinstance(error, ConfigError) and "fleet sync is not available" in str(error)
