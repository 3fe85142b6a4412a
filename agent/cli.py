"""``edge-agent``: install bundles offline, serve them over the Open Inference Protocol, show status.

Only argparse is imported at module level: ``edge-agent --help`` answers before numpy, pydantic or
onnxruntime are loaded. Every command runs through :func:`sdk.console.run_cli`, so an
:class:`~sdk.errors.EdgeError` becomes one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "edge-agent"


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _model_batching(value: str) -> tuple[str, tuple[int, float]]:
    name, sep, rest = value.partition("=")
    size, _, delay = rest.partition(":")
    try:
        if not (name and sep):
            raise ValueError
        return name, (int(size), float(delay) if delay else 2.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=SIZE or NAME=SIZE:DELAY_MS") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="edgefleet device agent: serve signed model bundles."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, keys: bool = True) -> None:
        p.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help="the agent's model store")
        if keys:
            p.add_argument(
                "--trust-key",
                type=Path,
                action="append",
                default=[],
                metavar="PUB",
                help="public key whose bundles are trusted (repeatable; also <data-dir>/trusted-keys/)",
            )

    p = sub.add_parser("install", help="verify, smoke test and activate a bundle (offline install)")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    common(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="activate it even if it is older than the newest version this device has activated",
    )
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("serve", help="serve the active models over the Open Inference Protocol v2")
    common(p)
    p.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8700),
        metavar="HOST:PORT",
        help="address to serve HTTP on (default 127.0.0.1:8700)",
    )
    p.add_argument(
        "--fleet-url", metavar="URL", help="edge-fleet base URL (with --broker, --device-id, --credentials)"
    )
    p.add_argument("--broker", metavar="URL", help="MQTT broker, mqtt[s]://HOST:PORT")
    p.add_argument("--device-id", metavar="ID", help="this device's id in the fleet")
    p.add_argument(
        "--credentials", type=Path, metavar="FILE", help="device credentials file from registration"
    )
    p.add_argument(
        "--telemetry-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between telemetry messages (default 10)",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=64.0,
        metavar="MIB",
        help="largest request body accepted (default 64 MiB)",
    )
    p.add_argument(
        "--max-json-mb",
        type=float,
        default=8.0,
        metavar="MIB",
        help="largest JSON request (or JSON header of a binary one) accepted (default 8 MiB; "
        "parsed JSON takes 10-20 times its size in memory: send large tensors as binary data)",
    )
    p.add_argument(
        "--api-token",
        default=os.environ.get("EDGE_AGENT_API_TOKEN"),
        metavar="TOKEN",
        help="require Authorization: Bearer TOKEN on every endpoint but /v2/health/* "
        "(default: $EDGE_AGENT_API_TOKEN, which keeps it out of the process list)",
    )
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate chain")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="require a client certificate signed by this CA (mutual TLS)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=4,
        metavar="N",
        help="model executions at once, per model (default 4)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        metavar="N",
        default=64,
        help="requests that may wait per model before new ones get 503 (default 64)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=0,
        metavar="N",
        help="dynamic batching: rows per execution (default 0: off)",
    )
    p.add_argument(
        "--max-queue-delay-ms",
        type=float,
        metavar="MS",
        default=2.0,
        help="dynamic batching: longest wait for a batch to fill (default 2 ms)",
    )
    p.add_argument(
        "--model-batching",
        type=_model_batching,
        action="append",
        default=[],
        metavar="NAME=SIZE[:MS]",
        help="batching for one model, overriding --max-batch-size/--max-queue-delay-ms (repeatable)",
    )
    p.add_argument(
        "--threads", type=int, metavar="N", help="intra-op threads per model (default: the profile's)"
    )
    p.add_argument(
        "--inline-below-ms",
        type=float,
        metavar="MS",
        default=0.3,
        help="models faster than this run on the server's event loop, skipping a thread hop (default 0.3); "
        "while one client is connected and no other request is in flight, models up to 10 ms do too (0: never)",
    )
    p.add_argument(
        "--no-session-cache",
        dest="session_cache",
        action="store_false",
        help="do not keep ONNX Runtime's optimised copy of each model (it makes starts faster; "
        "it takes two to four times the model's size on disk)",
    )
    p.add_argument(
        "--no-monitoring",
        dest="monitoring",
        action="store_false",
        help="turn model monitoring off (feedback, accuracy, bias, data quality; drift stays)",
    )
    p.add_argument(
        "--monitor-min-samples",
        type=int,
        metavar="K",
        default=20,
        help="monitoring figures leave the device only over at least K samples; smaller groups are suppressed (default 20)",
    )
    p.add_argument(
        "--monitor-window",
        type=float,
        metavar="SECONDS",
        default=3600.0,
        help="rolling window of the monitoring figures (default 3600)",
    )
    p.add_argument(
        "--shadow-share",
        type=float,
        metavar="SHARE",
        default=0.1,
        help="share of live requests mirrored to a shadow version under evaluation (default 0.1)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="show installed and active versions and the last failure")
    common(p, keys=False)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=cmd_status)
    return parser


def cmd_install(args: argparse.Namespace) -> int:
    import json

    from agent.settings import AgentSettings
    from agent.store import ModelStore
    from sdk.keys import load_trusted_keys

    settings = AgentSettings(data_dir=args.data_dir, trust_keys=args.trust_key)
    store = ModelStore(settings.data_dir, load_trusted_keys(settings.trusted_key_paths()))
    # An operator installing by hand overrides the loop guard.
    # A downgrade only when the operator says so: a bundle that is validly signed but old is the
    # classic rollback attack.
    result = store.install(args.bundle, force=True, allow_downgrade=args.allow_downgrade)
    if args.json:
        sys.stdout.write(
            json.dumps(
                {"name": result.name, "version": result.version, "previous_version": result.previous_version}
            )
            + "\n"
        )
    else:
        sys.stdout.write(
            f"installed {result.name} {result.version} (previous: {result.previous_version or 'none'})\n"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # Start-up is mostly imports (~470 modules) racing the model loads (agent.preload). The cyclic
    # collector's passes over the growing heap took ~10 % of that time; run_forever freezes what
    # start-up built and turns the collector back on once the models are loaded.
    gc.disable()
    # numpy's OpenBLAS starts a thread per core that busy-waits after start, taking a core's worth
    # of CPU from the model loads on a small device; the agent does no BLAS work of its own.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # pydantic looks for plugins by reading the entry points of every installed distribution when
    # the first model is built: ~10-15 ms of the manifest schema's import in the 170-package
    # development environment (more with more packages). The agent uses none; a user who sets the
    # variable (even to "") keeps their choice.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    # Before the ~200 ms of imports below: start building the sessions of the models that are
    # unchanged since their last verification. They serve nothing until the store has verified them
    # (agent.early explains why that is safe); a version changed on disk does not load early.
    from agent.early import start_early
    from agent.session_cache import SessionCache

    early = start_early(args.data_dir, SessionCache(args.data_dir) if args.session_cache else None)
    from agent.service import run_forever
    from agent.settings import AgentSettings, ServerTLS, SyncSettings
    from sdk.errors import ConfigError

    sync_flags = {
        "--fleet-url": args.fleet_url,
        "--broker": args.broker,
        "--device-id": args.device_id,
        "--credentials": args.credentials,
    }
    given = [k for k, v in sync_flags.items() if v]
    if given and len(given) != len(sync_flags):
        missing = [k for k in sync_flags if k not in given]
        raise ConfigError(f"fleet sync needs {', '.join(sync_flags)}; missing {', '.join(missing)}")
    sync = None
    if given:
        sync = SyncSettings(
            fleet_url=args.fleet_url,
            broker_url=args.broker,
            device_id=args.device_id,
            credentials_file=args.credentials,
            telemetry_interval_s=args.telemetry_interval,
        )
    tls = None
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("HTTPS needs both --tls-cert and --tls-key")
        for path in (args.tls_cert, args.tls_key, args.tls_client_ca):
            if path is not None and not path.is_file():
                raise ConfigError(f"{path} does not exist")
        tls = ServerTLS(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)
    host, port = args.listen
    settings = AgentSettings(
        data_dir=args.data_dir,
        trust_keys=args.trust_key,
        host=host,
        port=port,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_json_bytes=int(args.max_json_mb * 1024 * 1024),
        api_token=args.api_token or None,
        tls=tls,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        threads=args.threads,
        inline_below_ms=args.inline_below_ms,
        model_batching=dict(args.model_batching),
        sync=sync,
        session_cache=args.session_cache,
        monitoring=args.monitoring,
        monitor_min_samples=args.monitor_min_samples,
        monitor_window_s=args.monitor_window,
        shadow_share=args.shadow_share,
    )
    run_forever(settings, early)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from agent.store import ModelStore
    from sdk.errors import ConfigError

    if not (args.data_dir / "models").is_dir():
        raise ConfigError(f"{args.data_dir} is not an agent data dir (no models/ folder)")
    status = ModelStore(args.data_dir, [], recover=False).status()
    if args.json:
        sys.stdout.write(json.dumps(status, indent=1) + "\n")
        return 0
    lines = [f"data dir: {status['data_dir']}"]
    models = status["models"]
    assert isinstance(models, dict)
    if not models:
        lines.append("no models installed")
    for name, m in models.items():
        lines.append(
            f"{name}: active {m['active'] or '-'}, previous {m['previous'] or '-'},"
            f" installed {', '.join(m['installed']) or '-'}"
            + (f", shadow {m['shadow']}" if m.get("shadow") else "")
        )
        if m["last_error"]:
            lines.append(f"  last update failed: {m['last_error']}")
    update = status["update"]
    assert isinstance(update, dict)
    if update["state"] not in ("idle", "failed"):
        lines.append(f"update in progress: {update['state']} {update['model']} {update['version']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # Parse first: --help and usage errors exit here, before anything heavy is imported.
    args = build_parser().parse_args(argv)
    from sdk.console import run_cli, setup_logging

    setup_logging(args.verbose)
    return run_cli(PROG, lambda _argv: args.func(args), [])


if __name__ == "__main__":
    sys.exit(main())
