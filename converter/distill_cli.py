"""``edge-convert distill``: train a smaller student from a teacher, then convert it like any model."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from converter.distill import DistillConfig, distill
from sdk.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see edge-convert distill --help)")


def distill_main(argv: Sequence[str]) -> int:
    p = _Parser(prog="edge-convert distill", description="Train a student model to imitate a teacher.")
    p.add_argument(
        "--teacher", required=True, help="teacher model: .onnx, TorchScript, .pt2 or package.module:factory"
    )
    p.add_argument(
        "--student", required=True, help="package.module:factory returning the (smaller) student nn.Module"
    )
    p.add_argument(
        "--data", required=True, type=Path, help=".npz with one array per input (+ optional labels)"
    )
    p.add_argument(
        "--output", type=Path, default=Path("student.onnx"), help="where to write the student (ONNX)"
    )
    p.add_argument(
        "--eval",
        type=Path,
        help=".npz to measure the student on (+ optional labels); default: a held-out quarter of --data",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--augment", action="store_true", help="augment inputs (noise, mixup, image flips/shifts)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and augmentation (default 0)")
    p.add_argument("--min-agreement", type=float, default=0.99, help="bar for classifiers (default 0.99)")
    p.add_argument("--min-cosine", type=float, default=0.999, help="bar for other outputs (default 0.999)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(list(argv))
    if args.epochs < 1 or args.temperature <= 0:
        raise ConfigError("--epochs must be at least 1 and --temperature positive")
    config = DistillConfig(
        epochs=args.epochs,
        temperature=args.temperature,
        learning_rate=args.learning_rate,
        seed=args.seed,
        augment=args.augment,
        min_argmax_agreement=args.min_agreement,
        min_cosine=args.min_cosine,
    )
    result = distill(args.teacher, args.student, args.data, args.output, config, args.eval)
    body = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
    if args.json:
        sys.stdout.write(json.dumps(body, sort_keys=True) + "\n")
    else:
        agreement = "" if result.argmax_agreement is None else f"argmax {result.argmax_agreement:.4f}, "
        lines = [
            f"student: {result.student} ({result.student_parameters} parameters)",
            f"agreement with the teacher on {result.eval_origin}: {agreement}cosine {result.cosine:.4f}"
            + (" (meets the bar)" if result.meets_bar else " (BELOW THE BAR)"),
        ]
        if result.student_accuracy is not None:
            lines.append(
                f"accuracy: student {result.student_accuracy:.4f}, teacher {result.teacher_accuracy:.4f}"
            )
        if result.warning:
            lines.append(f"warning: {result.warning}")
        lines.append(f"next: edge-convert {result.student} --profile PROFILE")
        sys.stdout.write("\n".join(lines) + "\n")
    return 0
