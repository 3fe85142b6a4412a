"""Real ONNX models and signed bundles for the agent tests, built in code with onnx.helper."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sdk import keys
from sdk.bundle import write_bundle
from sdk.manifest import Manifest, Reference, RuntimeOptions, Smoke, SourceInfo, TensorSpec, TensorStats
from sdk.tensors import EncodedTensor


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def affine_onnx(path: Path, scale: float, bias: float = 1.0, width: int = 4) -> Path:
    """y = scale * x + bias on a [batch, width] float tensor; z = argmax(y) per row."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "scale"], ["t"]),
            helper.make_node("Add", ["t", "bias"], ["y"]),
            helper.make_node("ArgMax", ["y"], ["z"], axis=1, keepdims=0),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width]),
            helper.make_tensor_value_info("z", TensorProto.INT64, [None]),
        ],
        [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
            helper.make_tensor("bias", TensorProto.FLOAT, [], [bias]),
        ],
    )
    return _save(graph, path)


def strings_onnx(path: Path) -> Path:
    """BYTES in, BYTES out: the identity on a [batch] string tensor."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, [None])],
    )
    return _save(graph, path)


def mlp_onnx(path: Path, width: int, depth: int, seed: int = 0) -> Path:
    """A dense ReLU stack [batch, width] -> [batch, width]: the bench's small and medium models."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for i in range(depth):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name=f"w{i}"))
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
        inits,
    )
    return _save(graph, path)


def onnx_bundle(folder: Path, key: keys.Ed25519PrivateKey, model: Path, name: str, version: str) -> Path:
    """A signed bundle of a one-input float ONNX model (an :func:`mlp_onnx`, a CNN exported from
    PyTorch), its tensor specs read from the model (a dynamic dimension is -1), with a smoke sample
    the model itself answered."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    [first] = session.get_inputs()

    def shape(dims: list[object]) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in dims]

    x = np.random.default_rng(0).standard_normal([max(d, 1) for d in shape(first.shape)]).astype(np.float32)
    ys = session.run(None, {first.name: x})
    return bundle_from_onnx(
        folder,
        key,
        model,
        name=name,
        version=version,
        inputs=[TensorSpec(name=first.name, datatype="FP32", shape=shape(first.shape))],
        outputs=[
            TensorSpec(name=o.name, datatype="FP32", shape=shape(o.shape)) for o in session.get_outputs()
        ],
        smoke_inputs={first.name: x},
        smoke_outputs={o.name: y for o, y in zip(session.get_outputs(), ys, strict=True)},
    )


def _stats(values: np.ndarray, bins: int = 10) -> TensorStats:
    fractions, edges = np.histogram(values, bins=bins)
    return TensorStats(
        mean=float(values.mean()),
        std=float(values.std()),
        min=float(values.min()),
        max=float(values.max()),
        hist_edges=edges.tolist(),
        hist_fractions=(fractions / fractions.sum()).tolist(),
    )


def bundle_from_onnx(
    out_dir: Path,
    key: keys.Ed25519PrivateKey,
    model: Path,
    *,
    name: str,
    version: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    smoke_inputs: dict[str, np.ndarray],
    smoke_outputs: dict[str, np.ndarray],
    profile: str = "x86-server",
    reference: Reference | None = None,
    runtime_options: RuntimeOptions | None = None,
) -> Path:
    manifest = Manifest(
        name=name,
        version=version,
        profile=profile,
        runtime="onnxruntime",
        precision="fp32",
        source=SourceInfo(format="onnx", sha256=hashlib.sha256(model.read_bytes()).hexdigest()),
        inputs=inputs,
        outputs=outputs,
        reference=reference,
        runtime_options=runtime_options or RuntimeOptions(),
        smoke=Smoke(
            inputs={k: EncodedTensor.from_numpy(v) for k, v in smoke_inputs.items()},
            outputs={k: EncodedTensor.from_numpy(v) for k, v in smoke_outputs.items()},
        ),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_bundle(manifest, {"model.onnx": model}, key, out_dir)


def affine_bundle(
    out_dir: Path,
    key: keys.Ed25519PrivateKey,
    *,
    name: str = "affine",
    version: str = "1",
    scale: float = 2.0,
    profile: str = "x86-server",
    wrong_smoke: bool = False,
) -> Path:
    """A signed bundle of :func:`affine_onnx`; ``scale`` tells versions apart in responses."""
    work = out_dir / f"src-{name}-{version}-{scale}"
    work.mkdir(parents=True, exist_ok=True)
    model = affine_onnx(work / "model.onnx", scale)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    y = x * scale + 1.0
    if wrong_smoke:
        y = y + 100.0
    calib = np.random.default_rng(0).standard_normal((256, 4)).astype(np.float32)
    reference = Reference(
        samples=256, inputs={"x": _stats(calib)}, outputs={"y": _stats(calib * scale + 1.0)}
    )
    return bundle_from_onnx(
        out_dir / "bundles",
        key,
        model,
        name=name,
        version=version,
        profile=profile,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
        outputs=[
            TensorSpec(name="y", datatype="FP32", shape=[-1, 4]),
            TensorSpec(name="z", datatype="INT64", shape=[-1]),
        ],
        smoke_inputs={"x": x},
        smoke_outputs={"y": y, "z": np.argmax(y, axis=1)},
        reference=reference,
    )


def regression_bundle(out_dir: Path, key: keys.Ed25519PrivateKey, *, version: str = "1") -> Path:
    """``total``: y = sum(x) per row, a [batch, 4] -> [batch, 1] regression, with a reference."""
    work = out_dir / f"src-total-{version}"
    work.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        "total",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = _save(graph, work / "model.onnx")
    calib = np.random.default_rng(1).standard_normal((256, 4)).astype(np.float32)
    x = calib[:2]
    return bundle_from_onnx(
        out_dir / "bundles",
        key,
        model,
        name="total",
        version=version,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])],
        smoke_inputs={"x": x},
        smoke_outputs={"y": x.sum(axis=1, keepdims=True)},
        reference=Reference(
            samples=256, inputs={"x": _stats(calib)}, outputs={"y": _stats(calib.sum(axis=1, keepdims=True))}
        ),
    )


def strings_bundle(out_dir: Path, key: keys.Ed25519PrivateKey, *, version: str = "1") -> Path:
    work = out_dir / f"src-strings-{version}"
    work.mkdir(parents=True, exist_ok=True)
    model = strings_onnx(work / "model.onnx")
    text = np.array([b"hello", "gr\u00fc\u00df".encode()], dtype=object)
    return bundle_from_onnx(
        out_dir / "bundles",
        key,
        model,
        name="strings",
        version=version,
        inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
        outputs=[TensorSpec(name="echo", datatype="BYTES", shape=[-1])],
        smoke_inputs={"text": text},
        smoke_outputs={"echo": text},
    )


def add_tflite(
    path: Path,
    bias: list[float],
    *,
    int8_scales: tuple[float, float] | None = None,
    dynamic_batch: bool = False,
) -> Path:
    """A LiteRT flatbuffer computing y = x + bias on a [1, len(bias)] tensor, built with the schema
    classes that ship inside ai-edge-litert (no TensorFlow needed).

    ``int8_scales`` (input/bias scale, output scale) makes it full integer, as Coral models are: int8
    tensors with zero points 0, the bias stored quantized. ``dynamic_batch`` marks x and y's first
    dim dynamic (the bias broadcasts).
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as tfl

    def tensor(name: str, buffer: int, scale: float | None) -> tfl.TensorT:
        t = tfl.TensorT()
        t.name, t.shape, t.buffer = name.encode(), [1, len(bias)], buffer
        if dynamic_batch and name != "bias":
            t.shapeSignature = [-1, len(bias)]
        t.type = tfl.TensorType.FLOAT32 if scale is None else tfl.TensorType.INT8
        if scale is not None:
            t.quantization = tfl.QuantizationParametersT()
            t.quantization.scale, t.quantization.zeroPoint = [scale], [0]
        return t

    in_scale, out_scale = int8_scales if int8_scales else (None, None)
    values = np.asarray(bias, dtype="<f4")
    if in_scale is not None:
        values = np.round(values / in_scale).astype(np.int8)
    empty, constant = tfl.BufferT(), tfl.BufferT()
    constant.data = list(values.tobytes())
    code = tfl.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = tfl.BuiltinOperator.ADD
    op = tfl.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType, op.builtinOptions = tfl.BuiltinOptions.AddOptions, tfl.AddOptionsT()
    graph = tfl.SubGraphT()
    graph.tensors = [tensor("x", 0, in_scale), tensor("bias", 1, in_scale), tensor("y", 0, out_scale)]
    graph.inputs, graph.outputs, graph.operators = [0], [2], [op]
    model = tfl.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], [empty, constant]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def add_tflite_bundle(
    out_dir: Path,
    key: keys.Ed25519PrivateKey,
    *,
    version: str = "1",
    name: str = "adder",
    int8_scales: tuple[float, float] | None = None,
    datatype: str = "FP32",
    bias: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0),
) -> Path:
    """A bundle of :func:`add_tflite`; ``datatype`` is what the manifest offers clients (``INT8``: the
    full-integer model's raw tensors, ``FP32``: floats the agent quantizes)."""
    work = out_dir / f"src-litert-{name}-{version}"
    work.mkdir(parents=True, exist_ok=True)
    model = add_tflite(work / "model.tflite", list(bias), int8_scales=int8_scales)
    x = np.ones((1, 4), np.float32)
    y = x + np.array(bias, np.float32)
    if datatype == "INT8":
        assert int8_scales is not None
        x = np.round(x / int8_scales[0]).astype(np.int8)
        y = np.round(y / int8_scales[1]).astype(np.int8)
    manifest = Manifest(
        name=name,
        version=version,
        profile="coral",
        runtime="litert",
        precision="fp32" if int8_scales is None else "int8",
        model_file="model.tflite",
        source=SourceInfo(format="tflite", sha256=hashlib.sha256(model.read_bytes()).hexdigest()),
        inputs=[TensorSpec(name="x", datatype=datatype, shape=[1, 4])],
        outputs=[TensorSpec(name="y", datatype=datatype, shape=[1, 4])],
        smoke=Smoke(inputs={"x": EncodedTensor.from_numpy(x)}, outputs={"y": EncodedTensor.from_numpy(y)}),
    )
    (out_dir / "bundles").mkdir(parents=True, exist_ok=True)
    return write_bundle(manifest, {"model.tflite": model}, key, out_dir / "bundles")
