"""``edge-convert``: convert a model for a hardware profile, and the bundle/key/profile helpers.

``edge-convert MODEL --profile NAME`` converts; ``keygen``, ``profiles``, ``inspect`` and
``distill`` are subcommands. Heavy imports (torch, onnx) happen only inside the convert and
distill paths, so the helpers answer fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sdk.console import run_cli, setup_logging

PROG = "edge-convert"
SUBCOMMANDS = ("keygen", "profiles", "inspect", "distill")


def _emit_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _keygen(argv: Sequence[str]) -> int:
    from sdk import keys

    p = argparse.ArgumentParser(
        prog=f"{PROG} keygen", description="Write an Ed25519 signing key and PATH.pub."
    )
    p.add_argument("path", type=Path, help="where to write the private key (mode 0600)")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.add_argument("--json", action="store_true", help="print a JSON object on stdout")
    args = p.parse_args(argv)
    key = keys.generate_key()
    priv, pub = keys.save_keypair(key, args.path, overwrite=args.force)
    if args.json:
        _emit_json({"private_key": str(priv), "public_key": str(pub), "key_id": keys.key_id(key)})
    else:
        sys.stdout.write(f"private key: {priv}\npublic key:  {pub}\nkey id:      {keys.key_id(key)}\n")
    return 0


def _profiles(argv: Sequence[str]) -> int:
    from sdk.profiles import load_all_profiles

    p = argparse.ArgumentParser(prog=f"{PROG} profiles", description="List the hardware profiles.")
    p.add_argument("--json", action="store_true", help="print a JSON array on stdout")
    args = p.parse_args(argv)
    profiles = load_all_profiles()
    if args.json:
        _emit_json([pr.model_dump(mode="json") for pr in profiles])
        return 0
    rows = [("NAME", "CLASS", "RUNTIME", "PRECISION", "SCHEME", "PROVIDERS")]
    rows += [
        (
            pr.name,
            pr.accelerator,
            pr.runtime,
            pr.precision,
            pr.quantization.scheme,
            " > ".join(pr.execution_providers) or "-",
        )
        for pr in profiles
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    return 0


def _inspect(argv: Sequence[str]) -> int:
    from sdk import keys
    from sdk.bundle import verify_bundle
    from sdk.errors import BundleError

    p = argparse.ArgumentParser(
        prog=f"{PROG} inspect", description="Print a bundle's manifest and verify it."
    )
    p.add_argument("bundle", type=Path)
    p.add_argument(
        "--trust-key",
        action="append",
        default=None,
        metavar="PUB",
        help="public key file or folder of *.pub files the signer must be among (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object on stdout")
    args = p.parse_args(argv)
    trusted = keys.load_trusted_keys(args.trust_key) if args.trust_key else None
    try:
        result = verify_bundle(args.bundle, trusted)
    except BundleError as exc:
        if args.json:
            _emit_json({"bundle": str(args.bundle), "verified": False, "error": str(exc)})
        raise
    manifest = json.loads(result.manifest_bytes)
    if args.json:
        _emit_json(
            {
                "bundle": str(args.bundle),
                "verified": True,
                "signer": result.signer,
                "trusted": result.trusted,
                "manifest": manifest,
            }
        )
        return 0
    m = result.manifest
    lines = [
        f"bundle:    {args.bundle}",
        f"model:     {m.name} {m.version} for {m.profile} ({m.runtime}, {m.precision})",
        f"created:   {m.created}",
        f"source:    {m.source.format} sha256 {m.source.sha256[:16]}…",
    ]
    for name, entry in m.files.items():
        lines.append(f"file:      {name} {entry.size} bytes sha256 {entry.sha256[:16]}…")
    for t in m.inputs:
        lines.append(f"input:     {t.name} {t.datatype} {t.shape}")
    for t in m.outputs:
        lines.append(f"output:    {t.name} {t.datatype} {t.shape}")
    met = m.metrics
    if met.size_bytes:
        lines.append(f"size:      {met.size_bytes.source} -> {met.size_bytes.converted} bytes")
    if met.latency_ms:
        lines.append(
            f"latency:   {met.latency_ms.source:.3f} -> {met.latency_ms.converted:.3f} ms"
            f" ({met.latency_ms.statistic}, host-measured)"
        )
    if met.fidelity:
        lines.append(f"fidelity:  {met.fidelity.model_dump(exclude_none=True)}")
    if met.accuracy:
        lines.append(
            f"accuracy:  {met.accuracy.metric} {met.accuracy.source:.4f} -> {met.accuracy.converted:.4f}"
        )
    trust = "trusted" if result.trusted else "signature valid; signer not checked (no --trust-key given)"
    lines.append(f"verified:  yes, signer key {result.signer} ({trust})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _convert(argv: Sequence[str]) -> int:
    from converter.convert_cli import convert_main

    return convert_main(argv)


def _distill(argv: Sequence[str]) -> int:
    from converter.distill_cli import distill_main

    return distill_main(argv)


_HELP = f"""usage: {PROG} MODEL --profile NAME|PATH [options]   convert a model into a signed bundle
       {PROG} keygen PATH                        write an Ed25519 signing key and PATH.pub
       {PROG} profiles [--json]                  list hardware profiles
       {PROG} inspect BUNDLE [--json]            print a bundle's manifest and verify it
       {PROG} distill ...                        train a smaller student from a teacher

'{PROG} MODEL --help' lists every convert option.
"""


def _main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_HELP)
        return 0 if argv else 2
    setup_logging()
    command, rest = argv[0], list(argv[1:])
    handlers = {"keygen": _keygen, "profiles": _profiles, "inspect": _inspect, "distill": _distill}
    if command in handlers:
        return handlers[command](rest)
    return _convert(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
