"""The converter measures a bundle the way the agent serves it: one set of session settings.

Both build ONNX Runtime sessions from :mod:`sdk.runtime_options` (quiet threads, the manifest's
entries and optimisation level, the thread cap). The test converts a model, then times the
bundle's model in the converter's session and in the agent runtime's session, interleaved, with
two agent sessions as the A/A pair that measures the noise: they must agree within it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.runtimes.onnx import OnnxRuntime
from agent.runtimes.onnx import session_options as agent_options
from converter.context import Options
from converter.measure import compare_latency
from converter.pipeline import ConvertRequest, convert
from converter.runtime import make_session
from converter.runtime import session_options as converter_options
from sdk.bundle import extract_bundle
from sdk.manifest import Manifest, RuntimeOptions
from sdk.runtime_options import QUIET_THREADS
from tests.converter import models
from tests.converter.quick_profiles import cpu_int8_static


def test_converter_and_agent_build_the_same_session_options() -> None:
    options = RuntimeOptions(
        session_config={"session.disable_quant_qdq": "1"}, graph_optimization_level="basic"
    )

    manifest = Manifest.model_construct(runtime_options=options)  # the only field session_options reads
    conv, agent = converter_options(2, options), agent_options(manifest, 2)
    for key in [*QUIET_THREADS, "session.disable_quant_qdq"]:
        assert conv.get_session_config_entry(key) == agent.get_session_config_entry(key)
    assert conv.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert (conv.intra_op_num_threads, conv.inter_op_num_threads) == (2, 1)
    assert conv.graph_optimization_level == agent.graph_optimization_level


def test_manifest_latency_is_the_agents_in_process_latency(tmp_path: Path, sign_key: Path) -> None:
    src = models.tiny_mlp(tmp_path / "mlp.onnx", hidden=512)
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    result = convert(
        ConvertRequest(
            model=str(src),
            profile=str(cpu_int8_static(tmp_path / "profiles")),
            out_dir=tmp_path / "out",
            sign_key=str(sign_key),
            options=Options(calibration_path=tmp_path / "cal.npz", budget_seconds=60),
        )
    )
    m = result.manifest
    assert m.metrics.latency_ms is not None
    threads = m.metrics.latency_ms.threads
    extract_bundle(result.bundle, tmp_path / "unpacked")
    path = tmp_path / "unpacked" / m.model_file
    rt = m.runtime_options
    sessions = {
        "agent": OnnxRuntime(path, m, threads=threads).session,
        "agent again": OnnxRuntime(path, m, threads=threads).session,
        "converter": make_session(path, threads, rt.session_config, rt.graph_optimization_level),
    }
    latency = compare_latency(sessions, {"x": x[:1]}, seconds_per_model=0.5, aa=("agent", "agent again"))
    assert not latency.slower("converter", "agent") and not latency.slower("agent", "converter")
