"""A small client for the edge-fleet REST API (``/api/v1``), on httpx.

Errors come back as the sdk's tree: 401/403 → :class:`AuthError`, 404 → :class:`NotFoundError`,
409 → :class:`ConflictError`, any other failure → :class:`FleetError`, each with the server's
``{"error": ...}`` text. ``transport=`` is the seam for tests (``httpx.MockTransport``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from sdk.credentials import DeviceCredentials
from sdk.errors import AuthError, ConflictError, FleetError, NotFoundError

_BY_STATUS: dict[int, type[FleetError]] = {
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
}


class FleetClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FleetError(f"cannot reach the fleet at {self._http.base_url}: {exc}") from None
        if r.status_code >= 400:
            try:
                message = r.json().get("error") or r.text
            except ValueError:
                message = r.text
            raise _BY_STATUS.get(r.status_code, FleetError)(f"{method} {path}: {r.status_code}: {message}")
        return r.json() if r.content else None

    # ------------------------------------------------------------------------------ devices

    def register_device(
        self,
        device_id: str | None = None,
        *,
        labels: dict[str, str] | None = None,
        profile: str | None = None,
    ) -> DeviceCredentials:
        body = {"device_id": device_id, "labels": labels or {}, "profile": profile}
        return DeviceCredentials.model_validate(self._call("POST", "/devices", json=body))

    def devices(
        self, *, labels: dict[str, str] | None = None, profile: str | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"label": [f"{k}={v}" for k, v in (labels or {}).items()]}
        if profile:
            params["profile"] = profile
        return self._call("GET", "/devices", params=params)

    def device(self, device_id: str) -> dict[str, Any]:
        return self._call("GET", f"/devices/{device_id}")

    def device_health(self, device_id: str, window_s: float = 300.0) -> dict[str, Any]:
        return self._call("GET", f"/devices/{device_id}/health", params={"window_s": window_s})

    def delete_device(self, device_id: str) -> None:
        """Decommission: the device's tokens are revoked and its broker account removed."""
        self._call("DELETE", f"/devices/{device_id}")

    # ------------------------------------------------------------------------------ bundles

    def upload_bundle(self, path: str | Path) -> dict[str, Any]:
        path = Path(path)
        with open(path, "rb") as f:
            return self._call("POST", "/bundles", files={"file": (path.name, f, "application/octet-stream")})

    def bundles(self) -> list[dict[str, Any]]:
        return self._call("GET", "/bundles")

    # ----------------------------------------------------------------------------- rollouts

    def create_rollout(
        self,
        bundle_id: str,
        *,
        selector: dict[str, Any] | None = None,
        strategy: dict[str, Any] | None = None,
        gates: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"bundle_id": bundle_id}
        for name, value in (("selector", selector), ("strategy", strategy), ("gates", gates)):
            if value is not None:
                body[name] = value
        return self._call("POST", "/rollouts", json=body)

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return self._call("GET", f"/rollouts/{rollout_id}")

    def rollouts(self) -> list[dict[str, Any]]:
        return self._call("GET", "/rollouts")

    def pause(self, rollout_id: str) -> dict[str, Any]:
        return self._call("POST", f"/rollouts/{rollout_id}/pause")

    def resume(self, rollout_id: str) -> dict[str, Any]:
        return self._call("POST", f"/rollouts/{rollout_id}/resume")

    def rollback(self, rollout_id: str) -> dict[str, Any]:
        return self._call("POST", f"/rollouts/{rollout_id}/rollback")

    def device_telemetry(
        self, device_id: str, window_s: float = 3600.0, limit: int = 500
    ) -> list[dict[str, Any]]:
        """The device's telemetry samples of the last ``window_s`` seconds, oldest first."""
        return self._call(
            "GET", f"/devices/{device_id}/telemetry", params={"window_s": window_s, "limit": limit}
        )

    # -------------------------------------------------------------------------- alerts

    def alerts(
        self,
        *,
        state: str | None = None,
        rule: str | None = None,
        device_id: str | None = None,
        model: str | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Alerts, newest first; ``state`` is pending, firing, resolved or open (pending and firing)."""
        params = {"state": state, "rule": rule, "device_id": device_id, "model": model, "limit": limit}
        return self._call("GET", "/alerts", params={k: v for k, v in params.items() if v is not None})

    def alert_policies(self) -> list[dict[str, Any]]:
        return self._call("GET", "/alerts/policies")

    def set_alert_policy(
        self,
        name: str,
        thresholds: dict[str, Any],
        *,
        labels: dict[str, str] | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Create or replace the thresholds for the devices whose labels include ``labels`` (and ``model``)."""
        selector: dict[str, Any] = {"labels": labels or {}, "model": model}
        return self._call(
            "PUT", f"/alerts/policies/{name}", json={"selector": selector, "thresholds": thresholds}
        )

    def delete_alert_policy(self, name: str) -> None:
        self._call("DELETE", f"/alerts/policies/{name}")

    # -------------------------------------------------------------------------- tokens, audit

    def tokens(self, *, device_id: str | None = None, include_revoked: bool = True) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"include_revoked": include_revoked}
        if device_id is not None:
            params["device_id"] = device_id
        return self._call("GET", "/tokens", params=params)

    def create_token(
        self,
        role: str,
        *,
        name: str | None = None,
        device_id: str | None = None,
        expires_in: float | None = None,
    ) -> dict[str, Any]:
        """A new token; its plaintext (``token``) is in this answer only."""
        body = {"role": role, "name": name, "device_id": device_id, "expires_in": expires_in}
        return self._call("POST", "/tokens", json={k: v for k, v in body.items() if v is not None})

    def revoke_token(self, token_id: str) -> None:
        self._call("DELETE", f"/tokens/{token_id}")

    def audit(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """One page of the audit log, newest first: ``{"entries": [...], "next_before_id": ...}``."""
        params = {
            "since": since,
            "until": until,
            "actor": actor,
            "action": action,
            "target": target,
            "before_id": before_id,
            "limit": limit,
        }
        return self._call("GET", "/audit", params={k: v for k, v in params.items() if v is not None})
