"""``create_app(settings)``: the one place the fleet is assembled (database, storage, broker, controller)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from fleet.acks import Acknowledger
from fleet.alerts.rules import Limits
from fleet.alerts.webhook import AlertWebhook
from fleet.api.body_limits import BodyLimits
from fleet.api.docs import add_docs
from fleet.api.responses import ERROR_RESPONSES
from fleet.api.routes import alerts, audit, bundles, devices, rollouts, tokens
from fleet.context import FleetContext
from fleet.db.session import Database, migrate
from fleet.ingest import Ingest
from fleet.limits import IngestLimits
from fleet.metrics import FleetMetrics
from fleet.mqtt.client import FleetMqtt
from fleet.mqtt.dynsec import RESPONSE, DynamicSecurity
from fleet.retention import Retention
from fleet.rollout.controller import RolloutController
from fleet.rollout.desired import Publisher
from fleet.settings import FleetSettings
from fleet.storage import open_storage
from sdk import __version__, keys
from sdk.errors import EdgeError

log = logging.getLogger(__name__)
DASHBOARD = Path(__file__).with_name("dashboard")


def load_fleet_key(path: Path) -> keys.Ed25519PrivateKey:
    """The fleet's desired-state signing key, created (mode 0600) on first start.

    Written aside and hard-linked into place, which fails if the file exists: replicas starting at
    once on a shared folder all end up with the one key that got there first.
    """
    if not path.exists():
        aside = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        keys.save_keypair(keys.generate_key(), aside)
        try:
            os.link(aside, path)
            os.replace(aside.with_name(aside.name + ".pub"), path.with_name(path.name + ".pub"))
            log.info("created the fleet's desired-state signing key %s", path)
        except FileExistsError:
            pass  # another replica created it first
        finally:
            aside.unlink(missing_ok=True)
            aside.with_name(aside.name + ".pub").unlink(missing_ok=True)
    return keys.load_private_key(path)


def build_context(settings: FleetSettings, publisher: Publisher | None = None) -> FleetContext:
    db = Database(settings.db_url)
    migrate(db.engine)
    return FleetContext(
        settings=settings,
        db=db,
        storage=open_storage(
            settings.storage,
            multipart_mb=settings.storage_multipart_mb,
            staging_dir=settings.staging_dir,
            presign_s=settings.storage_presign_s,
        ),
        trusted_keys=keys.load_trusted_keys(settings.trust_keys),
        metrics=FleetMetrics(db, max_alert_series=settings.alert_metrics_max_series),
        publisher=publisher,
        fleet_key=load_fleet_key(settings.fleet_key_file) if settings.fleet_key_file else None,
    )


def _on_broker_connect(ctx: FleetContext) -> None:
    if isinstance(ctx.accounts, DynamicSecurity) and ctx.mqtt is not None:
        # The fleet's own rights on device topics come from a dynsec role it creates itself.
        try:
            ctx.accounts.ensure_fleet_role()
        except EdgeError as exc:
            log.error("cannot set up the fleet's broker role: %s", exc)
        ctx.mqtt.resubscribe()
    if ctx.controller is not None:
        ctx.controller.request_republish()


def _start_background(ctx: FleetContext) -> Ingest | None:
    s = ctx.settings
    ingest = None
    if s.alert_webhook_url:
        ctx.webhook = AlertWebhook(
            s.alert_webhook_url,
            ctx.metrics,
            base_url=s.base_url(),
            timeout_s=s.alert_webhook_timeout_s,
            max_queue=s.alert_webhook_queue,
            attempts=s.alert_webhook_attempts,
        )
        ctx.webhook.start()
    if s.broker_url and ctx.publisher is None:
        ctx.mqtt = FleetMqtt(
            s.broker_url,
            username=s.broker_username,
            password=s.broker_password,
            ca_file=str(s.broker_ca_file) if s.broker_ca_file else None,
            protocol=s.mqtt_protocol,
            share_group=s.share_group,
            on_connect=lambda: _on_broker_connect(ctx),
            control_topics=(RESPONSE,) if s.broker_accounts == "dynsec" else (),
            # dropped before ingest reads them: counted beside ingest's own rejections
            on_drop=lambda reason: ctx.metrics.ingest_rejected.labels(reason).inc(),
        )
        if s.broker_accounts == "dynsec":
            ctx.accounts = DynamicSecurity(ctx.mqtt, s.broker_username)
        ingest = Ingest(
            ctx.db,
            ctx.mqtt.inbox,
            ctx.metrics,
            batch=s.ingest_batch,
            max_wait_s=s.ingest_max_wait_s,
            limits=IngestLimits.from_settings(s),
            alert_limits=Limits.defaults(s),
            on_alerts=ctx.webhook.notify if ctx.webhook is not None else None,
        )
        ingest.on_stored = Acknowledger(ctx.mqtt.publish).committed
        ingest.start()
        ctx.mqtt.start()
    ctx.controller = RolloutController(
        ctx.db,
        ctx.publish_desired,
        s.base_url(),
        lease_s=s.controller_lease_s,
        retention_s=s.telemetry_retention_s,
        retention=Retention.from_settings(s),
        # signed states are re-signed (a fresh expiry) well before they expire
        refresh_s=s.desired_validity_s / 2 if ctx.fleet_key is not None else 0.0,
    )
    if s.controller_interval_s > 0:
        ctx.controller.start(s.controller_interval_s)
    return ingest


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EdgeError)
    async def edge_error(_request: Request, exc: EdgeError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def _body_limit(settings: FleetSettings) -> Callable[[Scope], int]:
    """Bundle uploads may be as large as a bundle (plus its multipart framing); anything else is JSON."""
    upload = int(settings.max_bundle_mb * 1024 * 1024) + 1024 * 1024
    other = int(settings.max_request_kb * 1024)

    def limit(scope: Scope) -> int:
        is_upload = scope.get("method") == "POST" and scope.get("path", "").rstrip("/") == "/api/v1/bundles"
        return upload if is_upload else other

    return limit


def create_app(
    settings: FleetSettings, *, publisher: Publisher | None = None, context: FleetContext | None = None
) -> FastAPI:
    """The fleet's ASGI app. ``publisher`` replaces the broker (a seam for unit tests);
    ``context`` is one built beforehand (the CLI does, so bad settings fail before the server starts)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = context or build_context(settings, publisher)
        app.state.fleet = ctx
        ingest = _start_background(ctx)
        try:
            yield
        finally:
            if ctx.controller is not None:
                ctx.controller.stop()
            if ctx.mqtt is not None:
                ctx.mqtt.stop()
            if ingest is not None:
                ingest.stop()
            if ctx.webhook is not None:
                ctx.webhook.stop()
            ctx.db.dispose()

    app = FastAPI(
        title="edge-fleet",
        version=__version__,
        description="Devices, bundles and staged rollouts of edgefleet. Every call needs `Authorization: Bearer TOKEN`.",
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        # /docs is served by fleet.api.docs with local assets; ReDoc would load from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    _error_handlers(app)
    app.add_middleware(BodyLimits, limit=_body_limit(settings), idle_timeout_s=settings.body_idle_timeout_s)
    add_docs(app, "/api/v1/openapi.json")
    for module in (devices, bundles, rollouts, tokens, audit, alerts):
        app.include_router(module.router, prefix="/api/v1", responses=ERROR_RESPONSES)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        ctx: FleetContext = request.app.state.fleet
        return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD / "index.html", media_type="text/html")

    @app.get("/dashboard/{name}", include_in_schema=False)
    def dashboard_asset(name: str) -> FileResponse:
        if name not in ("app.js", "alerts.js", "charts.js", "style.css"):
            raise StarletteHTTPException(404, f"no dashboard file {name}")
        return FileResponse(DASHBOARD / name)

    return app
