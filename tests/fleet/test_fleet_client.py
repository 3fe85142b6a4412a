"""The sdk's fleet client maps HTTP failures into the sdk error tree (checked at its transport seam)."""

from __future__ import annotations

import httpx
import pytest

from sdk.errors import AuthError, ConflictError, FleetError, NotFoundError
from sdk.fleet_client import FleetClient


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
