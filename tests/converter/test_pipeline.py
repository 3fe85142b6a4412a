"""End to end on a CNN trained here: int8 for a CPU profile is smaller, never slower and as accurate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from converter.context import Options
from converter.pipeline import ConvertRequest, ConvertResult, convert
from converter.runtime import make_session
from sdk import keys
from sdk.bundle import extract_bundle, verify_bundle
from tests.converter.conftest import DigitsModel
from tests.converter.decisions import assert_shipped_not_slower


@pytest.fixture(scope="module")
def x86(digits: DigitsModel, sign_key: Path, tmp_path_factory: pytest.TempPathFactory) -> ConvertResult:
    out = tmp_path_factory.mktemp("x86")
    request = ConvertRequest(
        model=str(digits.onnx),
        profile="x86-server",
        out_dir=out,
        name="digits",
        version="1.0",
        evaluation=digits.evaluation,
        sign_key=str(sign_key),
        options=Options(calibration_path=digits.calibration, budget_seconds=120),
    )
    return convert(request)


def _model(result: ConvertResult, tmp_path: Path) -> Path:
    extract_bundle(result.bundle, tmp_path / "unpacked")
    return tmp_path / "unpacked" / "model.onnx"


def test_bundle_is_signed_and_named_per_design(x86: ConvertResult, sign_key: Path) -> None:
    assert x86.bundle.name == "digits-1.0-x86-server.efb"
    verified = verify_bundle(x86.bundle, [keys.load_public_key(Path(str(sign_key) + ".pub"))])
    assert verified.trusted is True
    assert verified.manifest.source.format == "onnx" and verified.manifest.source.filename == "digits.onnx"


def test_int8_keeps_accuracy_within_one_point_and_halves_the_size(x86: ConvertResult) -> None:
    m = x86.manifest
    assert m.precision == "int8"
    assert m.metrics.accuracy is not None and m.metrics.accuracy.source > 0.85
    assert m.metrics.accuracy.source - m.metrics.accuracy.converted <= 0.01
    assert m.metrics.fidelity is not None and m.metrics.fidelity.argmax_agreement >= 0.99
    assert m.metrics.size_bytes is not None
    assert m.metrics.size_bytes.converted <= 0.5 * m.metrics.size_bytes.source
    assert m.metrics.latency_ms is not None and m.metrics.latency_ms.host_measured
    assert m.metrics.latency_ms.threads >= 1


def test_the_shipped_model_passed_the_never_slower_race_and_the_manifest_reports_it(
    x86: ConvertResult,
) -> None:
    """Speed itself is a benchmark (``bench/convert.py``), never a timed test: a re-measurement here
    once failed at 0.975x against a 0.95x bar on a loaded CI host."""
    measured = assert_shipped_not_slower(x86.manifest)
    [shipped] = [d for d in x86.manifest.decisions if d.step == "validate" and ": chosen" in d.choice]
    assert measured.measured["latency_vs_source"] == pytest.approx(
        shipped.measured["latency_vs_source"], abs=1e-3
    )


def test_every_candidate_and_choice_is_recorded_with_measurements(x86: ConvertResult) -> None:
    steps = [d.step for d in x86.manifest.decisions]
    assert {"data", "cleanup", "quantize", "validate"} <= set(steps)
    candidates = [d for d in x86.manifest.decisions if d.step == "quantize-candidate"]
    names = {d.choice.split(":")[0] for d in candidates}
    assert {"fp32", "weight-only-int8", "static-int8"} <= names
    for d in candidates:
        assert d.measured["size_bytes"] > 0 and d.measured["fidelity"] is not None
    assert sum("chosen" in d.choice for d in candidates) == 1


def test_reference_statistics_and_smoke_sample(x86: ConvertResult, tmp_path: Path) -> None:
    m = x86.manifest
    assert m.reference is not None and m.reference.samples == 200
    stats = m.reference.inputs["pixels"]
    assert 0 <= stats.min < stats.mean < stats.max <= 1.0
    assert len(stats.hist_edges) == len(stats.hist_fractions) + 1
    assert sum(stats.hist_fractions) == pytest.approx(1.0)
    assert set(m.reference.outputs) == {"output"}
    # the smoke sample passes on the bundled model with the manifest's options ...
    model = _model(x86, tmp_path)
    smoke = m.smoke
    assert smoke is not None
    session = make_session(model, 1, m.runtime_options.session_config)
    feeds = {k: v.to_numpy() for k, v in smoke.inputs.items()}
    got = session.run(None, feeds)[0]
    np.testing.assert_allclose(got, smoke.outputs["output"].to_numpy(), rtol=smoke.rtol, atol=smoke.atol)
    # ... and fails on a broken one (its classifier weights swapped for noise).
    proto = onnx.load(str(model))
    biggest = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    rng = np.random.default_rng(1)
    biggest.raw_data = rng.integers(-127, 127, len(biggest.raw_data), dtype=np.int8).tobytes()
    onnx.save_model(proto, str(tmp_path / "broken.onnx"))
    broken = make_session(tmp_path / "broken.onnx", 1, m.runtime_options.session_config).run(None, feeds)[0]
    assert not np.allclose(broken, smoke.outputs["output"].to_numpy(), rtol=smoke.rtol, atol=smoke.atol)


def test_report_beside_the_bundle_has_tables_and_sensitivity_chart(x86: ConvertResult) -> None:
    assert x86.report.parent == x86.bundle.parent and x86.report.name == "report.html"
    html = x86.report.read_text()
    assert "<svg" in html and "Per-node sensitivity" in html and "static-int8" in html
    assert "host-measured" in html
