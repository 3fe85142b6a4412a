"""Never slower than the source, for real: failing candidates, the source as a candidate, the
cleanup's fusions, latency decided against measured noise, and validation's fallback.

The tests that convert a model race real candidates; run them under the bench lock
(``flock /tmp/edgefleet-bench.lock``) like every latency measurement on the shared machine.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from converter import candidates, search
from converter.candidates import Verdict
from converter.context import Options, PassContext
from converter.measure import Latency, compare_latency
from converter.model import ModelArtifact
from converter.passes import cleanup, int8_static, validate
from converter.pipeline import ConvertRequest, ConvertResult, convert
from converter.runtime import make_session
from sdk.bundle import extract_bundle
from sdk.profiles import load_profile
from tests.converter import models
from tests.converter.decisions import assert_shipped_not_slower


def _convert(src: Path, data: dict[str, np.ndarray], out: Path, sign_key: Path) -> ConvertResult:
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "cal.npz", **data)
    request = ConvertRequest(
        model=str(src),
        profile="x86-server",
        out_dir=out,
        sign_key=str(sign_key),
        options=Options(calibration_path=out / "cal.npz", budget_seconds=120),
    )
    return convert(request)


def _mlp_data() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)}


def _candidates(result: ConvertResult) -> dict[str, str]:
    """candidate name -> its recorded verdict."""
    rows = [d.choice for d in result.manifest.decisions if d.step == "quantize-candidate"]
    return dict(row.split(": ", 1) for row in rows)


def _shipped(result: ConvertResult, tmp_path: Path) -> onnx.ModelProto:
    extract_bundle(result.bundle, tmp_path / "unpacked")
    return onnx.load(str(tmp_path / "unpacked" / "model.onnx"))


# ---------------------------------------------------------------- 1. failing candidates
def test_a_candidate_onnx_runtime_cannot_load_is_rejected_and_the_search_goes_on(
    tmp_path: Path, sign_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Static int8 comes out as a graph with an op no ONNX Runtime kernel implements."""

    def unloadable(src: Path, out: Path, *args: Any, **kwargs: Any) -> Path:
        model = onnx.load(str(src))
        model.graph.node.append(
            helper.make_node(
                "NoSuchKernel", [model.graph.output[0].name], ["extra"], domain="example.missing"
            )
        )
        model.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, None))
        model.opset_import.append(helper.make_opsetid("example.missing", 1))
        onnx.save_model(model, str(out))
        return out

    monkeypatch.setattr(int8_static, "quantize", unloadable)
    src = models.tiny_mlp(tmp_path / "mlp.onnx")
    result = _convert(src, _mlp_data(), tmp_path / "out", sign_key)
    verdicts = _candidates(result)
    assert verdicts["static-int8"].startswith("failed: ONNX Runtime cannot load")
    assert "dynamic-int8" in verdicts  # candidates after the failed one were still built and judged
    assert sum(v.startswith("chosen") for v in verdicts.values()) == 1
    assert result.bundle.exists() and "ONNX Runtime cannot load" in result.report.read_text()


# ---------------------------------------------------------------- 2. the source graph
def _fused_ops(path: Path, tmp_path: Path) -> Counter[str]:
    """The op types of the graph ONNX Runtime actually runs (after its own optimizations)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}-optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def test_cleanup_leaves_onnx_runtime_the_same_fusions_as_the_source(tmp_path: Path) -> None:
    """Inferred shapes let ORT fuse Add+LayerNormalization into the (slower on CPU) SkipLayerNormalization."""
    src = models.export(
        models.tiny_encoder(), (torch.randint(0, 1000, (1, 32)),), tmp_path / "enc.onnx", ["ids"]
    )
    ctx = PassContext(profile=load_profile("x86-server"), workdir=tmp_path, options=Options())
    cleaned = cleanup.run(ModelArtifact(onnx_path=src), ctx, cleanup.configure(ctx))
    assert cleaned.onnx_path is not None and cleaned.onnx_path != src
    before, after = _fused_ops(src, tmp_path), _fused_ops(cleaned.onnx_path, tmp_path)
    assert before["LayerNormalization"] > 0
    assert after["SkipLayerNormalization"] == before["SkipLayerNormalization"]
    assert after["LayerNormalization"] == before["LayerNormalization"]


def _fake_latency(slow: set[str] | None = None, factor: float = 2.0) -> Any:
    """compare_latency as if measured: every session at 1 ms per call, those in ``slow`` (or, with
    ``slow=None``, everything but the source and the source graph) ``factor`` times that."""

    def measure(sessions: dict[str, Any], feeds: Any, *args: Any, aa: Any = None, **kwargs: Any) -> Latency:
        rng = np.random.default_rng(len(sessions))
        blocks = {}
        for name in sessions:
            is_slow = name in slow if slow is not None else not name.startswith("source")
            base = factor if is_slow else 1.0
            blocks[name] = list(base * (1 + 0.002 * rng.standard_normal(40)))
        return Latency(blocks, aa)

    return measure


def test_the_source_graph_ships_when_every_other_candidate_is_slower(
    tmp_path: Path, sign_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "compare_latency", _fake_latency())
    monkeypatch.setattr(candidates, "compare_latency", _fake_latency())
    src = models.tiny_mlp(tmp_path / "mlp.onnx")
    result = _convert(src, _mlp_data(), tmp_path / "out", sign_key)
    verdicts = _candidates(result)
    assert verdicts[search.SOURCE_GRAPH].startswith("chosen")
    rejected = tuple(v.value for v in Verdict if v.rejected)
    assert all(v.startswith(rejected) for k, v in verdicts.items() if k != search.SOURCE_GRAPH)
    assert result.manifest.precision == "fp32"
    quantize = next(d for d in result.manifest.decisions if d.step == "quantize")
    assert quantize.choice == search.SOURCE_GRAPH and "source graph unchanged" in quantize.reason
    shipped = _shipped(result, tmp_path)
    assert [n.op_type for n in shipped.graph.node] == [n.op_type for n in onnx.load(str(src)).graph.node]


# ---------------------------------------------------------------- 3. noise and the final gate
def _blocks(ratio: float, jitter: float, n: int = 60, seed: int = 0) -> list[float]:
    return list(ratio * (1 + jitter * np.random.default_rng(seed).standard_normal(n)))


def test_slower_is_decided_against_the_measured_a_a_noise() -> None:
    quiet = Latency(
        {"src": _blocks(1.0, 0.002, seed=1), "again": _blocks(1.0, 0.002, seed=2), "c": _blocks(1.04, 0.002)},
        aa=("src", "again"),
    )
    assert quiet.noise < 0.03 and quiet.slower("c", "src")
    noisy = Latency(
        {"src": _blocks(1.0, 0.1, seed=1), "again": _blocks(1.07, 0.1, seed=2), "c": _blocks(1.04, 0.1)},
        aa=("src", "again"),
    )
    assert noisy.noise > 0.05 and not noisy.slower("c", "src")
    assert abs(quiet.ratio("c", "src") - 1.04) < 0.01 and quiet.quick("c") <= quiet.median("c")


def test_microsecond_models_are_timed_against_their_own_noise(tmp_path: Path) -> None:
    """Three sessions of one few-microsecond model look alike; a much bigger one is measurably slower."""
    small = models.tiny_mlp(tmp_path / "small.onnx")
    big = models.tiny_mlp(tmp_path / "big.onnx", hidden=4096)
    sessions = {name: make_session(small, 1) for name in ("a", "a again", "a third")}
    sessions["big"] = make_session(big, 1)
    feeds = {"x": np.ones((1, 16), np.float32)}
    latency = compare_latency(sessions, feeds, seconds_per_model=0.2, aa=("a", "a again"))
    assert latency.median("a") < 0.5  # milliseconds: this is the microsecond regime
    assert latency.noise < 0.25
    assert not latency.slower("a third", "a")
    assert latency.slower("big", "a")


def test_validation_falls_back_when_the_chosen_model_measures_slower(
    tmp_path: Path, sign_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search's pick measures 1.5x the source in validation: the next accepted candidate ships."""
    calls: list[int] = []

    def first_slower(source: Path, cands: list[Any], threads: int, feeds: Any, **kwargs: Any) -> Latency:
        calls.append(1)
        slow = {cands[0].name} if len(calls) == 1 else set()
        names = {candidates.SOURCE: None, candidates.SOURCE_AGAIN: None, cands[0].name: None}
        return _fake_latency(slow=slow, factor=1.5)(
            names, feeds, aa=(candidates.SOURCE, candidates.SOURCE_AGAIN)
        )

    monkeypatch.setattr(validate, "race", first_slower)
    src = models.bag_of_words(tmp_path / "bow.onnx")
    ids = np.random.default_rng(0).integers(0, 6000, (64, 16)).astype(np.int32)
    result = _convert(src, {"ids": ids}, tmp_path / "out", sign_key)
    fallback = [d for d in result.manifest.decisions if d.step == "validate" and "fell back" in d.choice]
    assert len(fallback) == 1 and len(calls) == 2
    was, now = fallback[0].choice.removeprefix("fell back from ").split(" to ")
    assert was != now and f"{was}: slower than the source: 1.500x the source's latency" in fallback[0].reason
    verdicts = _candidates(result)
    assert verdicts[was].startswith("chosen")  # the search's verdict, as recorded when it chose
    # validation recorded its own verdicts, in its own rows
    judged = {d.choice.split(": ", 1)[0]: d.choice for d in result.manifest.decisions if d.step == "validate"}
    assert judged[was].startswith(f"{was}: slower than the source") and judged[now].startswith(
        f"{now}: chosen"
    )
    manifest_latency = result.manifest.metrics.latency_ms
    assert manifest_latency is not None and manifest_latency.converted == pytest.approx(1.0, abs=0.05)
    assert "slower than the source" in result.report.read_text()


def test_a_text_model_dominated_by_per_call_overhead_still_halves_its_bytes(
    tmp_path: Path, sign_key: Path
) -> None:
    """1.5 MB, mostly an embedding table, a few microseconds per call, int32 inputs (measured for real)."""
    src = models.bag_of_words(tmp_path / "bow.onnx")
    ids = np.random.default_rng(0).integers(0, 6000, (64, 16)).astype(np.int32)
    result = _convert(src, {"ids": ids}, tmp_path / "out", sign_key)
    m = result.manifest.metrics
    assert m.size_bytes is not None and m.size_bytes.converted <= 0.5 * m.size_bytes.source
    assert m.fidelity is not None and m.fidelity.cosine >= 0.999
    assert_shipped_not_slower(result.manifest)


# ---------------------------------------------------------------- 4. cheaper variants race too
def test_a_per_channel_profile_also_races_dynamic_int8_with_one_scale_per_weight(
    tmp_path: Path, sign_key: Path
) -> None:
    """Per-channel dynamic MatMuls cost more per call; the coarser variant must get its chance."""
    assert load_profile("x86-server").quantization.per_channel
    src = models.tiny_mlp(tmp_path / "mlp.onnx")
    result = _convert(src, _mlp_data(), tmp_path / "out", sign_key)
    assert {"dynamic-int8", "dynamic-int8-per-tensor"} <= _candidates(result).keys()
    # built, loaded and measured like every other candidate (whatever its verdict on this tiny model)
    (measured,) = [
        d.measured
        for d in result.manifest.decisions
        if d.step == "quantize-candidate" and d.choice.startswith("dynamic-int8-per-tensor:")
    ]
    assert measured["latency_ms"] > 0 and measured["fidelity"]["cosine"] > 0.99
