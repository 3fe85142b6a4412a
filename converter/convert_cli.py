"""``edge-convert MODEL --profile NAME|PATH [options]``: the command line of the conversion pipeline.

With ``--json`` stdout carries exactly one JSON object (``bundle``, ``manifest``, ``report``); every
human line, progress included, goes to stderr through logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from converter import budget, memory
from converter.calibration import parse_input_overrides
from converter.context import Options
from converter.pipeline import ConvertRequest, convert
from sdk.errors import ConfigError

log = logging.getLogger("converter")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one ConfigError line like every other input error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see edge-convert --profile x --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="edge-convert", description="Convert a model into a signed bundle for a hardware profile."
    )
    p.add_argument("model", help=".onnx, TorchScript, torch.export .pt2 file, or package.module:factory")
    p.add_argument(
        "--profile", required=True, help="profile name (edge-convert profiles) or path to a YAML file"
    )
    p.add_argument("--output", type=Path, default=Path("."), help="folder for the bundle and report.html")
    p.add_argument("--name", help="bundle name (default: the model file's stem)")
    p.add_argument("--version", default="1", help="bundle version (default: 1)")
    p.add_argument("--calibration", type=Path, help=".npz with one array per input (+ optional labels)")
    p.add_argument(
        "--eval", type=Path, help=".npz to measure fidelity/accuracy on (default: calibration data)"
    )
    p.add_argument("--input", action="append", default=[], metavar="NAME:SHAPE", help="fix an input shape")
    p.add_argument("--prune", type=float, metavar="AMOUNT", help="share of weights/channels to prune (0-1)")
    p.add_argument("--prune-structured", action="store_true", help="remove whole channels")
    p.add_argument("--max-accuracy-drop", type=float, default=0.01, help="with labels: largest allowed drop")
    p.add_argument("--sign-key", help="Ed25519 private key (else $EDGEFLEET_SIGN_KEY, else a per-user key)")
    p.add_argument(
        "--budget",
        type=float,
        default=budget.DEFAULT_SECONDS,
        metavar="SECONDS",
        help=f"time bound of the whole conversion (default {budget.DEFAULT_SECONDS:g}); when it runs out the"
        " best candidate measured so far ships and the report lists what was not tried",
    )
    p.add_argument(
        "--max-memory",
        type=float,
        metavar="MB",
        help=f"cap on the conversion's resident memory (default: the smaller of {memory.DEFAULT_LIMIT_MB} MB"
        " and half the memory available); steps that would pass it are cut short and reported",
    )
    p.add_argument(
        "--speedup",
        type=float,
        metavar="X",
        help="prune whole channels in steps, recovering fidelity by distillation from the source on the"
        " --calibration inputs, until the host latency is 1/X of the source's (or the best point that"
        " keeps the profile's fidelity bar); then quantize as usual",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --speedup's training (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


class _QuietThirdParty(logging.Filter):
    """onnxruntime's quantization tool logs chatter on the root logger; keep only its errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= logging.ERROR


def convert_main(argv: Sequence[str]) -> int:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietThirdParty())
    args = _parser().parse_args(list(argv))
    if args.prune is not None and not 0 <= args.prune < 1:
        raise ConfigError(f"--prune {args.prune}: give a share between 0 and 1")
    if args.speedup is not None and not 1 < args.speedup <= 100:
        raise ConfigError(f"--speedup {args.speedup:g}: give a factor above 1, such as 2")
    if args.speedup is not None and (args.prune is not None or args.prune_structured):
        raise ConfigError("give --speedup (pruning with recovery, in steps) or --prune, not both")
    if args.budget <= 0:
        raise ConfigError("--budget must be positive")
    if args.max_memory is not None and args.max_memory < memory.MIN_LIMIT_MB:
        raise ConfigError(f"--max-memory {args.max_memory:g}: give at least {memory.MIN_LIMIT_MB} MB")
    options = Options(
        input_shapes=parse_input_overrides(args.input),
        prune_amount=args.prune,
        prune_structured=args.prune_structured,
        max_accuracy_drop=args.max_accuracy_drop,
        budget_seconds=args.budget,
        calibration_path=args.calibration,
        max_memory_mb=args.max_memory,
        speedup=args.speedup,
        seed=args.seed,
    )
    request = ConvertRequest(
        model=args.model,
        profile=args.profile,
        out_dir=args.output,
        name=args.name,
        version=args.version,
        evaluation=args.eval,
        sign_key=args.sign_key,
        options=options,
    )
    result = convert(request)
    if args.json:
        body = {
            "bundle": str(result.bundle),
            "report": str(result.report),
            "manifest": json.loads(result.manifest.to_json()),
        }
        sys.stdout.write(json.dumps(body, indent=2, sort_keys=True) + "\n")
    else:
        met = result.manifest.metrics
        lines = [
            f"bundle: {result.bundle}",
            f"report: {result.report}",
            f"precision: {result.manifest.precision}",
        ]
        if met.size_bytes and met.latency_ms:
            lines.append(f"size: {met.size_bytes.source} -> {met.size_bytes.converted} bytes")
            lines.append(
                f"latency: {met.latency_ms.source:.3f} -> {met.latency_ms.converted:.3f} ms (host-measured median)"
            )
        if met.fidelity:
            lines.append(f"fidelity: {met.fidelity.model_dump(exclude_none=True)}")
        sys.stdout.write("\n".join(lines) + "\n")
    return 0
