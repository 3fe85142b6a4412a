"""The sdk's fleet client maps HTTP failures into the sdk error tree (checked at its transport seam)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from fleet import auth
from sdk.errors import AuthError, ConflictError, FleetError, NotFoundError
from sdk.fleet_client import FleetClient
from tests.fleet.live_server import fleet_in_thread


def client_answering(status: int, body: dict) -> FleetClient:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        assert request.url.path.startswith("/api/v1/")
        return httpx.Response(status, json=body)

    return FleetClient("http://fleet.test", "tok", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthError), (403, AuthError), (404, NotFoundError), (409, ConflictError), (500, FleetError)],
)
def test_errors_map_to_the_sdk_tree(status: int, error: type[FleetError]) -> None:
    with pytest.raises(error, match="server says no"):
        client_answering(status, {"error": "server says no"}).rollout("r1")


def test_unreachable_fleet_is_a_fleet_error() -> None:
    with pytest.raises(FleetError, match="cannot reach"):
        FleetClient("http://127.0.0.1:9", "tok", timeout=2).devices()


def test_alert_and_telemetry_calls_against_a_real_fleet(tmp_path: Path) -> None:
    with fleet_in_thread(tmp_path) as (app, url):
        with app.state.fleet.db.session() as s:
            token = auth.create_token(s, "operator")
        with FleetClient(url, token) as client:
            client.register_device("cam-1", profile="x86-server")
            assert client.device_telemetry("cam-1") == []
            with pytest.raises(NotFoundError):
                client.device_telemetry("nobody")
            policy = client.set_alert_policy("ward-3", {"drift_psi": 0.5}, labels={"ward": "3"})
            assert policy["name"] == "ward-3" and policy["thresholds"]["drift_psi"] == 0.5
            assert [p["name"] for p in client.alert_policies()] == ["ward-3"]
            client.delete_alert_policy("ward-3")
            assert client.alert_policies() == []
            assert client.alerts(state="open", device_id="cam-1") == []
            with pytest.raises(FleetError, match="422|state"):
                client.alerts(state="on fire")
