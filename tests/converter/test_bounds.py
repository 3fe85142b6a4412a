"""Bounded memory and time (issue 12): conversions under a hard memory cap and a tiny budget."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdk.bundle import verify_bundle
from tests.converter.conftest import REPO
from tests.converter.lookalikes import recognizer
from tests.converter.models import tiny_mlp

GIB = 2**30


def _run_limited(
    argv: list[str | Path], address_space: int, logs: Path
) -> tuple[subprocess.CompletedProcess[str], int]:
    """``python ARGV`` in a child whose address space is capped; returns its result and peak RSS
    (its own VmHWM: a forked child's ru_maxrss would count this test process's size)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    peak = logs / "peak"
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.peak_rss", str(peak), *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        preexec_fn=cap,
        timeout=900,
        check=False,
    )
    return result, int(peak.read_text()) if peak.exists() else 0


def test_recognizer_look_alike_converts_under_a_2_gib_address_space(tmp_path: Path, sign_key: Path) -> None:
    """The 10 MB recognizer (big activations at width 320, dynamic width, attention, hard-swish as
    Clip/Div/Mul) once reached 23 GB in per-node sensitivity; under RLIMIT_AS 2 GiB it must ship."""
    case = recognizer(tmp_path, samples=16, width=320)
    result, peak = _run_limited(
        [
            "-m",
            "converter.cli",
            case.onnx,
            "--profile",
            "x86-server",
            "--calibration",
            case.calibration,
            "--output",
            tmp_path / "out",
            "--sign-key",
            sign_key,
            "--json",
        ],
        2 * GIB,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    body = json.loads(result.stdout)
    signed = verify_bundle(Path(body["bundle"])).manifest
    assert signed.metrics.fidelity is not None and signed.metrics.fidelity.cosine >= 0.999
    decisions = body["manifest"]["decisions"]
    assert any(d["step"] == "budget" and "memory limit" in d["choice"] for d in decisions)
    assert 0 < peak < 2 * GIB, f"peak RSS {peak / 2**20:.0f} MB"


_SENSITIVITY_CHILD = """
import sys
from pathlib import Path
import numpy as np
from converter import memory, sensitivity
from converter.calibration import Dataset
from converter.passes import int8_static

work = Path(sys.argv[1])
data = Dataset({"image": np.load(work / "recognizer_cal.npz")["image"]}, None, "cal")
quant = int8_static.quantize(work / "recognizer.onnx", work / "q.onnx", data, int8_static.Config(op_types=None))
with memory.limited(memory.MemoryLimit.of(1024)):
    found = sensitivity.measure(work / "recognizer.onnx", quant, work, data, 2)
print(len(found.loss), sum(v > 0 for v in found.loss.values()))
"""


def test_sensitivity_of_the_recognizer_fits_a_1_gib_limit_under_a_2_gib_cap(tmp_path: Path) -> None:
    """Per-node sensitivity of static int8 on the recognizer (16 samples at width 320) is the step
    that reached 23 GB; with a 1 GiB limit it ranks every node inside a 2 GiB address space."""
    recognizer(tmp_path, samples=16, width=320)
    logs = tmp_path / "logs"
    logs.mkdir()
    result, peak = _run_limited(["-c", _SENSITIVITY_CHILD, tmp_path], 2 * GIB, logs)
    assert result.returncode == 0, result.stderr[-3000:]
    ranked, nonzero = map(int, result.stdout.split())
    assert ranked > 200 and nonzero > 50, result.stdout
    assert 0 < peak < 1.5 * GIB, f"peak RSS {peak / 2**20:.0f} MB"


def test_sensitivity_in_small_chunks_ranks_like_one_chunk(tmp_path: Path) -> None:
    """A memory limit that forces one tensor per chunk gives the same per-node errors as no limit."""
    from converter import memory, sensitivity
    from converter.calibration import Dataset
    from converter.passes import int8_static

    model = tiny_mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    data = Dataset({"x": x}, None, "test")
    quant = int8_static.quantize(model, tmp_path / "q.onnx", data, int8_static.Config(op_types=None))
    with memory.limited(memory.MemoryLimit(memory.resident_bytes() + 64 * memory.MB)):
        whole = sensitivity.measure(model, quant, tmp_path, data, 1)
    # room for about one small tensor's four copies per chunk
    with memory.limited(memory.MemoryLimit(memory.resident_bytes() + 4 * 1024)):
        chunked = sensitivity.measure(model, quant, tmp_path, data, 1)
    assert whole.loss and set(whole.loss) == set(chunked.loss)
    for node, loss in whole.loss.items():
        assert chunked.loss[node] == pytest.approx(loss, rel=1e-4, abs=1e-7)
    assert max(whole.loss.values()) > 0


def test_tiny_budget_ships_a_bundle_and_lists_what_was_not_tried(tmp_path: Path, sign_key: Path) -> None:
    model = tiny_mlp(tmp_path / "mlp.onnx")
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "converter.cli",
            str(model),
            "--profile",
            "x86-server",
            "--calibration",
            str(tmp_path / "cal.npz"),
            "--output",
            str(tmp_path / "out"),
            "--sign-key",
            str(sign_key),
            "--budget",
            "0.5",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    verify_bundle(Path(body["bundle"]))
    skipped = [d["choice"] for d in body["manifest"]["decisions"] if d["choice"].startswith("skipped ")]
    assert skipped, body["manifest"]["decisions"]
    report = Path(body["report"]).read_text()
    assert all(s in report for s in skipped)
    # stderr is a pipe, not a terminal: plain progress lines, one per step
    progress = [line for line in result.stderr.splitlines() if "progress: step " in line]
    assert any("step int8" in line for line in progress) and any("step validate" in line for line in progress)
    assert "\r" not in result.stderr


def test_progress_draws_a_bar_on_a_terminal_and_log_lines_clear_it() -> None:
    import io
    import logging

    from converter import progress

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with progress.tracking(progress.Progress(60.0, stream=stream, tty=True)):
            progress.step("int8")
            progress.candidate("static-int8")
            progress.reporter("calibration samples")(3, 16)
            logging.getLogger("converter").warning("a log line")
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    assert "[" in text and "step int8, candidate static-int8" in text and "left of 60s" in text
    assert "calibration samples 3/16" in text
    # the bar is wiped before the log line, so the line starts at column 0
    assert "\r\x1b[Ka log line\n" in text


def test_max_memory_below_the_minimum_is_one_line(tmp_path: Path, sign_key: Path) -> None:
    from tests.converter.conftest import edge_convert

    model = tiny_mlp(tmp_path / "mlp.onnx")
    result = edge_convert(model, "--profile", "x86-server", "--max-memory", "10", "--sign-key", sign_key)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("edge-convert: error: --max-memory 10")
