"""Side-by-side: source fp32 vs plain ONNX Runtime dynamic int8 vs plain static QDQ vs edge-convert.

Run: ``flock /tmp/edgefleet-bench.lock .venv/bin/python bench/convert.py [--models a,b] [--minilm]
[--budget SECONDS] [--speedup X]``; ``--speedup`` adds a row converted with ``edge-convert --speedup X``
beside the int8-only one. Every model is built (and the CNN trained) here, the look-alikes of the field
models of issue 12 by :mod:`tests.converter.lookalikes`. Each conversion (ORT's two and
``edge-convert``) runs in a child process, so its wall time and peak resident memory (the child's
own VmHWM, see tests/support/peak_rss.py) are its own. All latencies of one model are measured in the same interleaved run
(median of block medians, ratio = median of per-round ratios), with the source loaded twice so the
run's own noise is printed (±) and "slower" means beyond it. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converter.calibration import load_npz
from converter.measure import compare_latency, fidelity, judged_as_classifier, outputs_over
from converter.runtime import input_specs, make_session
from sdk import keys
from sdk.bundle import extract_bundle
from tests.converter import lookalikes, minilm, models

REPO = Path(__file__).resolve().parents[1]

#: a second session of the source: source vs this (A/A) is the noise of the run.
AGAIN = "source again"


@dataclass
class Case:
    name: str
    onnx: Path
    calibration: Path
    evaluation: Path


def _cnn(d: Path) -> Case:
    model, x, y = models.train_digits_cnn(epochs=2)
    models.export(model, (torch.from_numpy(x[:1]),), d / "cnn.onnx", ["pixels"])
    np.savez(d / "cnn_cal.npz", pixels=x[:200])
    np.savez(d / "cnn_eval.npz", pixels=x[1400:], labels=y[1400:])
    return Case("conv-bn-relu CNN (digits)", d / "cnn.onnx", d / "cnn_cal.npz", d / "cnn_eval.npz")


def _encoder(d: Path) -> Case:
    models.export(models.tiny_encoder(), (torch.randint(0, 1000, (1, 32)),), d / "enc.onnx", ["ids"])
    rng = np.random.default_rng(0)
    np.savez(d / "enc_cal.npz", ids=rng.integers(0, 1000, (100, 32)))
    np.savez(d / "enc_eval.npz", ids=rng.integers(0, 1000, (100, 32)))
    return Case("transformer encoder", d / "enc.onnx", d / "enc_cal.npz", d / "enc_eval.npz")


def _mlp(d: Path) -> Case:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(256, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    ).eval()
    models.export(mlp, (torch.randn(1, 256),), d / "mlp.onnx", ["features"])
    rng = np.random.default_rng(0)
    np.savez(d / "mlp_cal.npz", features=rng.standard_normal((200, 256)).astype(np.float32))
    np.savez(d / "mlp_eval.npz", features=rng.standard_normal((200, 256)).astype(np.float32))
    return Case("MLP 256-1024-1024-10", d / "mlp.onnx", d / "mlp_cal.npz", d / "mlp_eval.npz")


def _text(d: Path) -> Case:
    models.bag_of_words(d / "bow.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "bow_cal.npz", ids=rng.integers(0, 6000, (200, 16)).astype(np.int32))
    np.savez(d / "bow_eval.npz", ids=rng.integers(0, 6000, (200, 16)).astype(np.int32))
    return Case("bag-of-words text 1.5MB int32", d / "bow.onnx", d / "bow_cal.npz", d / "bow_eval.npz")


def _minilm(d: Path) -> Case:
    module = minilm.factory()
    data = minilm.token_data(1, 0)
    models.export(module, tuple(torch.from_numpy(v) for v in data.values()), d / "minilm.onnx", list(data))
    np.savez(d / "minilm_cal.npz", **minilm.token_data(64, 0))
    np.savez(d / "minilm_eval.npz", **minilm.token_data(64, 1))
    return Case("all-MiniLM-L6-v2", d / "minilm.onnx", d / "minilm_cal.npz", d / "minilm_eval.npz")


def _lookalike(build: Callable[[Path], lookalikes.LookAlike]) -> Callable[[Path], Case]:
    def case(d: Path) -> Case:
        made = build(d)
        return Case(made.name, made.onnx, made.calibration, made.evaluation)

    case.__name__ = build.__name__
    return case


_ORT_DYNAMIC = """
import sys
from onnxruntime.quantization import quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2])
"""
_ORT_STATIC = """
import sys
from pathlib import Path
from onnxruntime.quantization import QuantFormat, quantize_static
from converter.calibration import load_npz
from converter.quant_data import DatasetReader
from converter.runtime import input_specs, make_session
cal = load_npz(Path(sys.argv[3]), input_specs(make_session(Path(sys.argv[1]), 2)), "calibration")
quantize_static(sys.argv[1], sys.argv[2], DatasetReader(cal), quant_format=QuantFormat.QDQ)
"""


@dataclass(frozen=True)
class Child:
    seconds: float
    peak_mb: float
    stdout: str


def _child(argv: list[str], peak_file: Path) -> Child:
    """Run ``python ARGV`` in a child process: its wall time, its own peak RSS and its stdout.

    The child runs under tests.support.peak_rss, which reads the kernel's VmHWM at exit: a
    child's ru_maxrss would include this (large) bench process's size at fork time.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.peak_rss", str(peak_file), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed with exit status {done.returncode}")
    return Child(seconds, int(peak_file.read_text()) / 2**20, done.stdout.decode())


def _edgefleet(
    case: Case, d: Path, key: Path, budget: float, extra: list[str]
) -> tuple[Path, dict[str, str], Child, dict[str, object]]:
    """edge-convert on the case (x86-server) in a child: the shipped model, its session config,
    the child's time and memory, and the manifest."""
    d.mkdir(parents=True, exist_ok=True)
    ours = _child(
        [
            "-m",
            "converter.cli",
            str(case.onnx),
            "--profile",
            "x86-server",
            "--calibration",
            str(case.calibration),
            "--eval",
            str(case.evaluation),
            "--output",
            str(d / "out"),
            "--sign-key",
            str(key),
            "--budget",
            str(budget),
            "--json",
            *extra,
        ],
        d / "edgefleet.peak",
    )
    body = json.loads(ours.stdout)
    extract_bundle(Path(body["bundle"]), d / "bundle")
    manifest = body["manifest"]
    config = manifest["runtime_options"].get("session_config") or {}
    return d / "bundle" / "model.onnx", config, ours, manifest


def bench(case: Case, d: Path, key: Path, budget: float, speedup: float | None = None) -> list[list[str]]:
    session = make_session(case.onnx, 2)
    ev = load_npz(case.evaluation, input_specs(session), "eval")
    variants: dict[str, tuple[Path, dict[str, str], Child | None]] = {"source fp32": (case.onnx, {}, None)}
    dyn = _child(["-c", _ORT_DYNAMIC, str(case.onnx), str(d / "dyn.onnx")], d / "dyn.peak")
    variants["ORT dynamic int8"] = (d / "dyn.onnx", {}, dyn)
    qdq = _child(
        ["-c", _ORT_STATIC, str(case.onnx), str(d / "qdq.onnx"), str(case.calibration)], d / "qdq.peak"
    )
    variants["ORT static QDQ"] = (d / "qdq.onnx", {}, qdq)
    manifest: dict[str, dict[str, object]] = {}
    for label, extra in [
        ("edgefleet", []),
        *([(f"edgefleet --speedup {speedup:g}", ["--speedup", str(speedup)])] if speedup else []),
    ]:
        path, config, child, made = _edgefleet(case, d / label.replace(" ", "_"), key, budget, extra)
        variants[label] = (path, config, child)
        manifest[label] = made
        if extra:
            NOTES.extend(_curve(case.name, made))
    sessions = {k: make_session(path, 2, cfg) for k, (path, cfg, _) in variants.items()}
    sessions[AGAIN] = make_session(case.onnx, 2)  # the A/A pair: the run's own noise
    reference = outputs_over(sessions["source fp32"], ev)
    classifier = judged_as_classifier(sessions["source fp32"], reference, ev)
    latency = compare_latency(
        sessions, ev.first(), rounds=40, seconds_per_model=2.0, aa=("source fp32", AGAIN)
    )
    source_bytes = case.onnx.stat().st_size
    rows = []
    for k, (path, _, child) in variants.items():
        fid = fidelity(reference, outputs_over(sessions[k], ev), classifier)
        verdict = "slower" if latency.slower(k, "source fp32") else ""
        rows.append(
            [
                case.name,
                k + (f" [{manifest[k]['precision']}]" if k in manifest else ""),
                f"{path.stat().st_size / 1e6:.2f}",
                f"{path.stat().st_size / source_bytes:.2f}x",
                f"{latency.median(k):.4f}",
                f"{latency.ratio(k, 'source fp32'):.3f}x"
                + (f" ±{latency.noise:.3f}" if k == "source fp32" else ""),
                verdict,
                f"{fid.argmax_agreement:.4f}" if fid.argmax_agreement is not None else "-",
                f"{fid.cosine:.5f}",
                f"{child.seconds:.1f}" if child else "",
                f"{child.peak_mb:.0f}" if child else "",
            ]
        )
    return rows


#: lines printed under the table: the converter's own step-by-step --speedup curve.
NOTES: list[str] = []


def _curve(name: str, manifest: dict[str, object]) -> list[str]:
    """The speedup decision and each step as the converter measured them (its interleaved race
    against the source, on this host, during the conversion)."""
    decisions = [d for d in manifest["decisions"] if d["step"] == "speedup"]  # type: ignore[attr-defined, index]
    if not decisions:
        return [f"{name}: no speedup decision"]
    chosen = decisions[0]
    lines = [f"{name} --speedup: {chosen['choice']} ({chosen['reason']})"]
    for p in chosen.get("measured", {}).get("curve", []):
        lines.append(
            f"  step {p['pruning_step']}: {p['channels_kept']}/{p['channels_total']} channels,"
            f" {p['speedup']:.2f}x, fidelity {p['fidelity']:.5f} ({p['fidelity_after_pruning']:.5f} pruned),"
            f" {'meets' if p['meets_bar'] else 'below'} the bar, {p['epochs']} epochs, {p['seconds']:.0f} s"
        )
    return lines


# ------------------------------------------------------------------------ LiteRT (coral), issue 11
def bench_litert(d: Path, key: Path, budget: float) -> list[list[str]]:
    """The digits CNN as a torch.export program: litert-torch's float .tflite vs ``edge-convert
    --profile coral`` (full-integer int8), both on the LiteRT interpreter, fidelity vs the float one."""
    import contextlib
    import io

    import litert_torch

    from converter.calibration import Dataset
    from converter.litert_session import IoNames, LiteRtSession

    model, x, y = models.train_digits_cnn(epochs=2)
    example = (torch.from_numpy(x[:1]),)
    torch.export.save(torch.export.export(model, example), d / "cnn.pt2")
    np.savez(d / "cnn_cal.npz", pixels=x[:1000])
    np.savez(d / "cnn_eval.npz", pixels=x[1400:], labels=y[1400:])
    float_model = d / "cnn-float.tflite"
    with contextlib.redirect_stdout(io.StringIO()):
        litert_torch.convert(model, example).export(str(float_model))
    ours = _child(
        ["-m", "converter.cli", str(d / "cnn.pt2"), "--profile", "coral", "--calibration", str(d / "cnn_cal.npz"),
         "--eval", str(d / "cnn_eval.npz"), "--output", str(d / "out"), "--sign-key", str(key),
         "--budget", str(budget), "--json"],
        d / "coral.peak",
    )  # fmt: skip
    body = json.loads(ours.stdout)
    extract_bundle(Path(body["bundle"]), d / "coral")
    manifest = body["manifest"]
    names = IoNames([t["name"] for t in manifest["inputs"]], [t["name"] for t in manifest["outputs"]])
    variants = {"litert float .tflite": float_model, "edgefleet coral": d / "coral" / "model.tflite"}
    sessions = {k: LiteRtSession(path, 2, names) for k, path in variants.items()}
    sessions[AGAIN] = LiteRtSession(float_model, 2, names)
    data = Dataset({"pixels": x[1400:]}, y[1400:], "digits held out", False)
    base = "litert float .tflite"
    reference = outputs_over(sessions[base], data)
    latency = compare_latency(sessions, data.first(), rounds=40, seconds_per_model=2.0, aa=(base, AGAIN))  # type: ignore[arg-type]
    rows = []
    for k, path in variants.items():
        fid = fidelity(reference, outputs_over(sessions[k], data), True)
        child = ours if k == "edgefleet coral" else None
        rows.append(
            [
                "digits CNN (LiteRT)",
                k + (f" [{manifest['precision']}]" if child else ""),
                f"{path.stat().st_size / 1e6:.2f}",
                f"{path.stat().st_size / float_model.stat().st_size:.2f}x",
                f"{latency.median(k):.4f}",
                f"{latency.ratio(k, base):.3f}x" + (f" ±{latency.noise:.3f}" if k == base else ""),
                "slower" if latency.slower(k, base) else "",
                f"{fid.argmax_agreement:.4f}" if fid.argmax_agreement is not None else "-",
                f"{fid.cosine:.5f}",
                f"{child.seconds:.1f}" if child else "",
                f"{child.peak_mb:.0f}" if child else "",
            ]
        )
    return rows


CASES: dict[str, Callable[[Path], Case]] = {
    "cnn": _cnn,
    "encoder": _encoder,
    "mlp": _mlp,
    "text": _text,
    "recognizer": _lookalike(lookalikes.recognizer),
    "detector": _lookalike(lookalikes.detector),
    "bytes": _lookalike(lookalikes.byte_classifier),
    "minilm": _minilm,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minilm", action="store_true", help="include all-MiniLM-L6-v2 (slow)")
    parser.add_argument(
        "--models", help=f"comma-separated subset of {','.join(CASES)} (default: all but minilm)"
    )
    parser.add_argument("--budget", type=float, default=60.0, help="edge-convert --budget (seconds)")
    parser.add_argument("--litert", action="store_true", help="add the LiteRT (coral) path (tflite extra)")
    parser.add_argument(
        "--speedup",
        type=float,
        help="also convert with edge-convert --speedup X (pruning + distillation, then int8): one more row",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    names = args.models.split(",") if args.models else [n for n in CASES if n != "minilm"]
    names += ["minilm"] if args.minilm and "minilm" not in names else []
    header = [
        "model",
        "variant",
        "MB",
        "bytes",
        "ms (median)",
        "vs source",
        "",
        "argmax",
        "cosine",
        "convert s",
        "peak RSS MB",
    ]
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "key"
        keys.save_keypair(keys.generate_key(), key)
        for name in names:
            d = Path(tmp) / name
            d.mkdir()
            rows += bench(CASES[name](d), d, key, args.budget, args.speedup)
        if args.litert:
            (Path(tmp) / "litert").mkdir()
            rows += bench_litert(Path(tmp) / "litert", key, args.budget)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    for line in NOTES:
        print(line)


if __name__ == "__main__":
    main()
