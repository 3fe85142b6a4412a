"""``edge-fleet``: ``up`` (all in one), ``serve`` (production replica), ``token create|list|revoke``."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sdk.console import run_cli, setup_logging
from sdk.errors import ConfigError

if TYPE_CHECKING:
    from fleet.db.models import Token
    from fleet.settings import FleetSettings

log = logging.getLogger("edge-fleet")


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{flag} {text!r} must be HOST:PORT")
    return host or "127.0.0.1", int(port)


def check_port_free(host: str, port: int, flag: str) -> None:
    """Fail with one line naming the taken port and the flag that changes it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {host}:{port} is already in use; pick another with {flag} HOST:PORT"
                ) from None
            raise ConfigError(f"cannot listen on {host}:{port} ({flag}): {exc.strerror or exc}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-fleet", description="edgefleet fleet service")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="all in one: embedded MQTT broker, SQLite, bundles on local disk")
    up.add_argument("--listen", default="127.0.0.1:8800", help="HTTP HOST:PORT (default 127.0.0.1:8800)")
    up.add_argument("--mqtt-listen", default="127.0.0.1:1883", help="MQTT HOST:PORT (default 127.0.0.1:1883)")
    up.add_argument("--data-dir", type=Path, default=Path.home() / ".edgefleet", help="database and bundles")
    up.add_argument(
        "--trust-key",
        type=Path,
        action="append",
        default=[],
        help="public key (or folder) bundles must be signed with",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="serve https and mqtts with a site CA kept in DATA_DIR/tls (made on first use); "
        "device credentials then carry the CA",
    )
    up.add_argument(
        "--tls-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name or address devices reach this machine by, for the certificate (repeatable)",
    )

    serve = sub.add_parser("serve", help="one stateless replica on PostgreSQL, Mosquitto and shared storage")
    serve.add_argument(
        "--db",
        default=os.environ.get("EDGEFLEET_DB_URL"),
        help="database URL, e.g. postgresql://user@host/edgefleet (default: $EDGEFLEET_DB_URL)",
    )
    serve.add_argument("--broker", default="", help="mqtt[s]://HOST:PORT (omit for an API-only replica)")
    serve.add_argument(
        "--storage",
        required=True,
        help="bundle folder (a shared volume for replicas) or s3://BUCKET/PREFIX "
        "(endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... as for the aws CLI)",
    )
    serve.add_argument("--listen", default="127.0.0.1:8800")
    serve.add_argument("--trust-key", type=Path, action="append", default=[])
    serve.add_argument("--public-url", help="base URL devices download bundles from")
    serve.add_argument("--device-broker-url", help="broker URL handed to devices (default: --broker)")
    serve.add_argument("--broker-username", default=os.environ.get("EDGEFLEET_BROKER_USERNAME"))
    serve.add_argument(
        "--broker-password-env",
        default="EDGEFLEET_BROKER_PASSWORD",
        help="environment variable holding the broker password (never a flag: it shows in ps)",
    )
    serve.add_argument("--broker-ca-file", type=Path)
    serve.add_argument("--mqtt-protocol", choices=["3.1.1", "5"], default="5")
    serve.add_argument(
        "--share-group",
        default="edgefleet",
        help="MQTT v5 shared subscription group for replicas ('' to subscribe normally)",
    )
    serve.add_argument(
        "--broker-accounts",
        choices=["none", "dynsec"],
        default="none",
        help="create device broker accounts with Mosquitto's dynamic security plugin",
    )
    serve.add_argument("--controller-interval", type=float, default=0.5)
    serve.add_argument("--tls-cert", type=Path, help="serve https with this certificate chain (PEM)")
    serve.add_argument("--tls-key", type=Path, help="the private key of --tls-cert (PEM)")
    serve.add_argument(
        "--device-ca-file",
        type=Path,
        help="CA certificate (PEM) handed to devices in their credentials, to verify https and mqtts",
    )
    serve.add_argument(
        "--fleet-key",
        type=Path,
        help="Ed25519 key desired states are signed with (created if missing; replicas share one file)",
    )

    token = sub.add_parser("token", help="API tokens: create, list, revoke (on the database directly)")
    tsub = token.add_subparsers(dest="token_command", required=True)
    create = tsub.add_parser("create", help="create a token and print it (last line)")
    create.add_argument("--role", required=True, choices=["admin", "operator", "viewer", "device"])
    create.add_argument("--name")
    create.add_argument("--device-id", help="for --role device: the registered device the token belongs to")
    create.add_argument(
        "--expires-in",
        type=_duration,
        help="refuse the token after this long: 3600, 90m, 12h, 30d (default: never)",
    )
    listing = tsub.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--device-id")
    listing.add_argument("--active", action="store_true", help="only tokens neither revoked nor expired")
    revoke = tsub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id", help="the id (second part of ef_ID_SECRET, or from `token list`)")
    for tcmd in (create, listing, revoke):
        tcmd.add_argument(
            "--db",
            default=os.environ.get(
                "EDGEFLEET_DB_URL", f"sqlite:///{Path.home() / '.edgefleet' / 'fleet.db'}"
            ),
        )
    return p


#: request line and headers of one request (uvicorn answers a longer head with 400 and closes)
MAX_HEAD_BYTES = 64 * 1024


def _serve_app(settings: FleetSettings, host: str, port: int) -> None:
    import uvicorn

    from fleet.app import build_context, create_app

    # Built here, not in the server's start-up, so bad settings are one line from run_cli.
    context = build_context(settings)
    if context.fleet_key is None:
        log.warning(
            "serving without --fleet-key: desired states are not signed, so devices cannot tell them"
            " from forged ones (see docs/security.md)"
        )
    app = create_app(settings, context=context)
    ssl_options = {}
    if settings.tls_cert is not None:
        ssl_options = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: only from proxies named here.
    proxies = settings.trusted_proxies.strip()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        # h11, not httptools: with httptools uvicorn keeps any number of header bytes (a 180 MB
        # header stream grew a server by 87 MB, measured on the agent), so one device or client
        # could exhaust the fleet's memory; h11 refuses a request head past this size.
        http="h11",
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
        **ssl_options,
    )


def _site_tls(data: Path, hosts: list[str]) -> tuple[Path, Path, Path]:
    """The site CA of ``data`` (made once, reused after) and a server certificate for ``hosts``."""
    from sdk import tls

    folder = data / "tls"
    ca = tls.ensure_ca(folder)
    server = tls.issue(
        ca, tls.CertPair(folder / "server.pem", folder / "server.key"), tls.server_names(hosts)
    )
    return ca.cert, server.cert, server.key


def cmd_up(args: argparse.Namespace) -> int:
    from fleet import auth
    from fleet.db.session import Database, migrate
    from fleet.mqtt.broker import BrokerAuthority, EmbeddedBroker
    from fleet.settings import FleetSettings

    host, port = _host_port(args.listen, "--listen")
    mhost, mport = _host_port(args.mqtt_listen, "--mqtt-listen")
    check_port_free(host, port, "--listen")
    check_port_free(mhost, mport, "--mqtt-listen")
    data: Path = args.data_dir
    data.mkdir(parents=True, exist_ok=True)
    trust = list(args.trust_key)
    if (data / "trusted-keys").is_dir():
        trust.append(data / "trusted-keys")
    admin_password = secrets.token_urlsafe(24)
    broker_host = "127.0.0.1" if mhost in ("0.0.0.0", "") else mhost
    ca_file = cert = key = None
    if args.tls:
        ca_file, cert, key = _site_tls(data, [host, mhost, *args.tls_host])
    mqtt_scheme = "mqtts" if args.tls else "mqtt"
    settings = FleetSettings(
        db_url=f"sqlite:///{data / 'fleet.db'}",
        storage=str(data / "bundles"),
        broker_url=f"{mqtt_scheme}://{broker_host}:{mport}",
        broker_ca_file=ca_file,
        tls_cert=cert,
        tls_key=key,
        device_ca_file=ca_file,
        broker_username="edge-fleet",
        broker_password=admin_password,
        mqtt_protocol="3.1.1",
        broker_accounts="db",
        listen_host=host,
        listen_port=port,
        trust_keys=trust,
        fleet_key_file=data / "fleet-key",
    )
    db = Database(settings.db_url)
    migrate(db.engine)
    token_file = data / "admin-token"
    with db.session() as s:
        token, created = auth.kept_admin_token(s, token_file)
    broker = EmbeddedBroker(
        mhost,
        mport,
        BrokerAuthority(db, "edge-fleet", admin_password),
        tls=(cert, key) if cert is not None and key is not None else None,
    )
    broker.start()
    base = settings.base_url()
    sys.stdout.write(
        f"edge-fleet is up\n"
        f"  dashboard  {base}/\n"
        f"  API        {base}/api/v1   (OpenAPI: {base}/docs)\n"
        f"  MQTT       {mqtt_scheme}://{broker_host}:{mport}   (embedded amqtt, MQTT 3.1.1)\n"
        + (f"  site CA    {ca_file}   (devices get it in their credentials)\n" if ca_file else "")
        + f"  data       {data}\n"
        f"  trusted signing keys: {len(trust) or 'none (bundle uploads are refused; use --trust-key)'}\n"
        f"  fleet key  {data / 'fleet-key'} (signs desired states; devices pin it at registration)\n"
        f"  admin token file {token_file} ({'new' if created else 'kept from an earlier start'}, mode 0600)\n"
        f"admin token:\n{token}\n"
    )
    sys.stdout.flush()
    try:
        _serve_app(settings, host, port)
    finally:
        broker.stop()
        db.dispose()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from fleet.settings import FleetSettings

    if not args.db:
        raise ConfigError("serve needs --db URL (or EDGEFLEET_DB_URL)")
    host, port = _host_port(args.listen, "--listen")
    check_port_free(host, port, "--listen")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("https needs both --tls-cert and --tls-key")
    settings = FleetSettings(
        db_url=args.db,
        broker_url=args.broker,
        broker_username=args.broker_username,
        broker_password=os.environ.get(args.broker_password_env),
        broker_ca_file=args.broker_ca_file,
        mqtt_protocol=args.mqtt_protocol,
        share_group=(args.share_group or None) if args.mqtt_protocol == "5" else None,
        broker_accounts=args.broker_accounts,
        storage=args.storage,
        trust_keys=args.trust_key,
        listen_host=host,
        listen_port=port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        device_ca_file=args.device_ca_file,
        public_url=args.public_url,
        device_broker_url=args.device_broker_url,
        controller_interval_s=args.controller_interval,
        fleet_key_file=args.fleet_key,
    )
    if host in ("0.0.0.0", "::") and not args.public_url:
        log.warning(
            "listening on %s without --public-url: devices are told to download bundles from %s",
            host,
            settings.base_url(),
        )
    _serve_app(settings, host, port)
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """Seconds from ``3600``, ``90m``, ``12h`` or ``30d``."""
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 3600, 90m, 12h or 30d") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than zero")
    return seconds


def cmd_token(args: argparse.Namespace) -> int:
    """``token create|list|revoke`` on the database directly (each change is in the audit log)."""
    from fleet import audit, auth
    from fleet.db.session import Database, migrate

    actor = audit.Actor.local(f"edge-fleet token {args.token_command}")
    db = Database(args.db)
    migrate(db.engine)
    try:
        with db.session() as s:
            if args.token_command == "create":
                if args.role == "device" and not args.device_id:
                    raise ConfigError("--role device needs --device-id")
                expires_at = time.time() + args.expires_in if args.expires_in else None
                token = auth.issue(
                    s, args.role, device_id=args.device_id, name=args.name, expires_at=expires_at
                )
                created = auth.token_id_of(token)
                audit.record(
                    s, actor, audit.Action.TOKEN_CREATE, created, role=args.role, device_id=args.device_id
                )
            elif args.token_command == "revoke":
                gone = auth.revoke(s, args.token_id)
                audit.record(
                    s, actor, audit.Action.TOKEN_REVOKE, gone.id, role=gone.role, device_id=gone.device_id
                )
            else:
                tokens = auth.list_tokens(
                    s, device_id=args.device_id, include_revoked=not args.active, limit=None
                )
    finally:
        db.dispose()
    if args.token_command == "create":
        sys.stderr.write(f"created a {args.role} token; it is shown only once:\n")
        sys.stdout.write(token + "\n")
    elif args.token_command == "revoke":
        sys.stdout.write(f"revoked token {args.token_id}\n")
    else:
        _print_tokens(tokens, active_only=args.active)
    return 0


def _print_tokens(tokens: Sequence[Token], *, active_only: bool) -> None:
    now = time.time()
    rows = [("ID", "ROLE", "DEVICE", "NAME", "CREATED", "EXPIRES", "STATE")]
    for t in tokens:
        expired = t.expires_at is not None and t.expires_at <= now
        if active_only and expired:
            continue
        state = "revoked" if t.revoked else "expired" if expired else "active"
        rows.append(
            (t.id, t.role, t.device_id or "-", t.name or "-", _utc(t.created_at), _utc(t.expires_at), state)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def _utc(t: float | None) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else "never"


def _main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.verbose < 2:
        # Their INFO lines (plugin set-up, session state changes) drown what an operator needs.
        for noisy in ("alembic", "transitions", "amqtt", "uvicorn.access", "botocore", "boto3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "up":
        return cmd_up(args)
    if args.command == "serve":
        return cmd_serve(args)
    return cmd_token(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("edge-fleet", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
