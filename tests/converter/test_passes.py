"""Each pass on its own: registry, weight-only int8, pruning, fp16, QNN QDQ."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from converter import pruning
from converter.calibration import Dataset
from converter.context import Options, PassContext
from converter.model import ModelArtifact
from converter.passes import PASSES, fp16, qnn, resolve, weight_only
from converter.runtime import make_session
from sdk.errors import ProfileError
from sdk.profiles import load_all_profiles, load_profile
from tests.converter import models


def test_every_profile_pass_resolves_to_a_module_with_config_and_run() -> None:
    for profile in load_all_profiles():
        for name in profile.passes:
            step = resolve(name)
            assert callable(step.run) and callable(step.configure), (profile.name, name)
    for name in PASSES:
        resolve(name)
    with pytest.raises(ProfileError, match="known passes"):
        resolve("magic")


def _ctx(tmp_path: Path, profile: str, data: Dataset, **options: object) -> PassContext:
    return PassContext(
        profile=load_profile(profile),
        workdir=tmp_path,
        options=Options(**options),  # type: ignore[arg-type]
        calibration=data,
        evaluation=data,
    )


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained Conv-BN-ReLU CNN: enough to check graph surgery, fast to build."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cnn")
    return models.export(
        models.DigitsCNN().eval(), (torch.randn(1, 1, 32, 32),), folder / "cnn.onnx", ["pixels"]
    )


def _data(n: int = 16) -> Dataset:
    return Dataset(
        {"pixels": np.random.default_rng(0).random((n, 1, 32, 32), dtype=np.float32)}, None, "test"
    )


def _run(path: Path, data: Dataset, config: dict[str, str] | None = None) -> np.ndarray:
    return make_session(path, 1, config).run(None, data.inputs)[0]


def test_weight_only_int8_is_a_quarter_of_the_bytes_and_folds_back_to_fp32(cnn: Path, tmp_path: Path) -> None:
    out, count, needs_fold, _ = weight_only.quantize(cnn, tmp_path / "wo.onnx", weight_only.Config())
    assert count == 5 and needs_fold  # 3 Conv + 2 Gemm weights
    assert out.stat().st_size < 0.3 * cnn.stat().st_size
    # with the session config the agent applies, ORT folds DequantizeLinear away at load time
    opts = ort.SessionOptions()
    for key, value in weight_only.SESSION_CONFIG.items():
        opts.add_session_config_entry(key, value)
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["DequantizeLinear"] == 0
    data = _data()
    ref, got = _run(cnn, data), _run(out, data, weight_only.SESSION_CONFIG)
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.999


def test_unstructured_pruning_zeroes_the_smallest_weights_globally(cnn: Path) -> None:
    model = onnx.load(str(cnn))
    stats = pruning.unstructured(model, 0.5)
    assert stats.sparsity == pytest.approx(0.5, abs=0.02)


def test_semi_structured_2_4_leaves_two_of_every_four(cnn: Path) -> None:
    model = onnx.load(str(cnn))
    pruning.semi_structured_2_4(model)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and weights[n.input[1]].shape[1] % 4 == 0)
    w = np.moveaxis(weights[conv.input[1]], 1, -1).reshape(-1, 4)
    assert np.all(np.sum(w != 0, axis=1) <= 2)


def test_structured_pruning_really_shrinks_conv_and_its_consumer(cnn: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(
        str(cnn), str(tmp_path / "clean.onnx")
    )  # BatchNorm folded into Conv, as the pipeline does
    model = onnx.load(str(tmp_path / "clean.onnx"))
    before = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    stats = pruning.structured(model, 0.5)
    after = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert stats.removed_channels > 0
    assert after[convs[0].input[1]][0] == before[convs[0].input[1]][0] // 2  # output channels of conv 1
    assert after[convs[1].input[1]][1] == before[convs[1].input[1]][1] // 2  # input channels of conv 2
    onnx.save_model(model, str(tmp_path / "pruned.onnx"))
    assert _run(tmp_path / "pruned.onnx", _data()).shape == (16, 10)
    assert (tmp_path / "pruned.onnx").stat().st_size < (tmp_path / "clean.onnx").stat().st_size


def test_fp16_keeps_fp32_inputs_and_outputs(cnn: Path, tmp_path: Path) -> None:
    data = _data()
    ctx = _ctx(tmp_path, "jetson", data)
    out = fp16.run(ModelArtifact(onnx_path=cnn), ctx, fp16.configure(ctx))
    assert out.precision == "fp16" and out.onnx_path is not None
    session = make_session(out.onnx_path, 1)
    assert (
        session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
    )
    assert out.onnx_path.stat().st_size < 0.6 * cnn.stat().st_size
    assert any(d.step == "fp16" for d in ctx.decisions)


def test_qnn_qdq_uses_uint8_activations_and_int8_weights(cnn: Path, tmp_path: Path) -> None:
    data = _data(32)
    ctx = _ctx(tmp_path, "qualcomm-npu", data)
    out = qnn.run(ModelArtifact(onnx_path=cnn), ctx, qnn.configure(ctx))
    model = onnx.load(str(out.onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [
        inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
    ]
    weight_dq = [
        inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
    ]
    assert zero_points and all(z.data_type == onnx.TensorProto.UINT8 for z in zero_points)
    assert any(w.data_type == onnx.TensorProto.INT8 for w in weight_dq)


def test_embedding_tables_gather_int8_rows_without_session_options(tmp_path: Path) -> None:
    path = models.export(
        models.tiny_encoder(), (torch.randint(0, 1000, (1, 8)),), tmp_path / "enc.onnx", ["ids"]
    )
    only_gather = weight_only.Config(op_types=("Gather",))
    out, count, needs_fold, _ = weight_only.quantize(path, tmp_path / "emb.onnx", only_gather)
    assert count == 1 and not needs_fold
    ids = np.random.default_rng(0).integers(0, 1000, (4, 8))
    ref = make_session(path, 1).run(None, {"ids": ids})[0]
    got = make_session(out, 1).run(None, {"ids": ids})[0]
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.9999
    assert out.stat().st_size < path.stat().st_size - 0.7 * 1000 * 256 * 4  # the fp32 table is gone


def test_embedding_tables_can_be_stored_for_folding_at_load_instead(tmp_path: Path) -> None:
    """The folded form: DequantizeLinear of the whole table, so the loaded graph is the fp32 graph."""
    path = models.export(
        models.tiny_encoder(), (torch.randint(0, 1000, (1, 8)),), tmp_path / "enc.onnx", ["ids"]
    )
    folded = weight_only.Config(op_types=("Gather",), row_gather_tables=False)
    result = weight_only.quantize(path, tmp_path / "emb.onnx", folded)
    assert result.count == 1 and result.needs_fold and result.tables == 1
    ops = Counter(n.op_type for n in onnx.load(str(result.path)).graph.node)
    assert (
        ops["DequantizeLinear"] == 1
        and ops["Cast"] == Counter(n.op_type for n in onnx.load(str(path)).graph.node)["Cast"]
    )
    ids = np.random.default_rng(0).integers(0, 1000, (4, 8))
    ref = make_session(path, 1).run(None, {"ids": ids})[0]
    got = make_session(result.path, 1, weight_only.SESSION_CONFIG).run(None, {"ids": ids})[0]
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.9999
    assert result.path.stat().st_size < path.stat().st_size - 0.7 * 1000 * 256 * 4


def test_cleanup_never_changes_the_process_working_directory(
    cnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORT's shape inference writes temp files into its working directory: a child process gets one."""
    import os

    from converter.passes import cleanup

    def refuse(path: object) -> None:
        raise AssertionError(f"os.chdir({path}) in the converter's process")

    monkeypatch.setattr(os, "chdir", refuse)
    before = set(Path.cwd().iterdir())
    ctx = PassContext(load_profile("x86-server"), tmp_path, Options())
    cleaned = cleanup.run(ModelArtifact(onnx_path=cnn), ctx, cleanup.configure(ctx))
    assert cleaned.onnx_path == tmp_path / "cleanup.onnx"
    assert any(d.choice == "optimized fp32 graph" for d in ctx.decisions)
    assert set(Path.cwd().iterdir()) == before
    np.testing.assert_allclose(_run(cleaned.onnx_path, _data(2)), _run(cnn, _data(2)), atol=1e-4)


def test_cleanup_keeps_the_graph_when_pre_processing_fails(tmp_path: Path) -> None:
    from converter.passes import cleanup

    broken = tmp_path / "not-a-model.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    ctx = PassContext(load_profile("x86-server"), tmp_path, Options())
    kept = cleanup.run(ModelArtifact(onnx_path=broken), ctx, cleanup.configure(ctx))
    assert kept.onnx_path == broken
    (decision,) = [d for d in ctx.decisions if d.step == "cleanup"]
    assert decision.choice == "kept graph as is" and "\n" not in decision.reason


def test_qnn_backs_off_through_the_search_when_qdq_misses_the_bar(tmp_path: Path) -> None:
    """The QNN candidate maker goes through the search's back-off: the outlier MatMul stays float."""
    from tests.converter.outlier_graphs import outlier_data, outlier_model

    src = outlier_model(tmp_path / "outlier.onnx")
    data = Dataset(dict(np.load(outlier_data(tmp_path / "data.npz"))), None, "outliers")
    ctx = _ctx(tmp_path, "qualcomm-npu", data)
    out = qnn.run(ModelArtifact(onnx_path=src), ctx, qnn.configure(ctx))
    verdicts = {d.choice.split(": ")[0]: d.choice for d in ctx.decisions if d.step == "qnn"}
    assert "below the bar" in verdicts["qnn-qdq"]
    assert "meets the bar" in verdicts["qnn-qdq-float1"]
    assert out.onnx_path is not None and out.onnx_path.name == "cand-qnn-qdq-x1.onnx"
    (kept,) = [d for d in ctx.decisions if d.step == "qnn" and d.choice.startswith("qnn-qdq-float1:")]
    assert kept.measured["excluded"] == ["first"]  # the MatMul that reads the outlier input
    assert any(d.step == "sensitivity" and d.choice.startswith("qnn-qdq: ranked") for d in ctx.decisions)
