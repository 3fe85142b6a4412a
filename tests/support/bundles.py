"""Real, tiny, signed bundles for fleet and e2e tests: y = 2x + 1 as an ONNX graph, with a smoke sample.

``broken=True`` writes a bundle whose smoke expected output is wrong, so a device's smoke test
fails it before activation (the model itself is fine; the bundle is signed and verifies).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from sdk import keys
from sdk.bundle import write_bundle
from sdk.manifest import Manifest, Metrics, Reference, Smoke, SourceInfo, TensorSpec
from sdk.tensors import EncodedTensor


def tiny_onnx(path: Path, scale: float = 2.0, bias: float | list[float] = 1.0) -> Path:
    """``bias`` a list: one per column, so versions can disagree on the largest column."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "scale"], ["t"]),
            helper.make_node("Add", ["t", "bias"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
            helper.make_tensor(
                "bias", TensorProto.FLOAT, [len(bias)] if isinstance(bias, list) else [], np.atleast_1d(bias)
            ),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_bundle(
    out_dir: Path,
    key: keys.Ed25519PrivateKey,
    *,
    name: str = "tiny",
    version: str = "1.0.0",
    profile: str = "x86-server",
    broken: bool = False,
    scale: float = 2.0,
    bias: float | list[float] = 1.0,
    pad_bytes: int = 0,
    metrics: Metrics | None = None,
    reference: Reference | None = None,
) -> Path:
    """``pad_bytes`` adds a listed file of random bytes (``pad.bin``, incompressible), so the
    bundle is that much larger to download, hash and unpack. ``reference`` carries the statistics
    the agent monitors drift and quality against."""
    work = out_dir / f"src-{name}-{version}"
    work.mkdir(parents=True, exist_ok=True)
    model = tiny_onnx(work / "model.onnx", scale=scale, bias=bias)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    y = x * scale + np.asarray(bias, dtype=np.float32)
    if broken:
        y = y + 100.0  # the device computes 2x + 1 and must refuse this bundle
    manifest = Manifest(
        name=name,
        version=version,
        profile=profile,
        runtime="onnxruntime",
        precision="fp32",
        source=SourceInfo(format="onnx", sha256=hashlib.sha256(model.read_bytes()).hexdigest()),
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 4])],
        smoke=Smoke(inputs={"x": EncodedTensor.from_numpy(x)}, outputs={"y": EncodedTensor.from_numpy(y)}),
        metrics=metrics or Metrics(),
        reference=reference,
    )
    files: dict[str, Path] = {"model.onnx": model}
    if pad_bytes:
        pad = work / "pad.bin"
        with open(pad, "wb") as f:
            for start in range(0, pad_bytes, 1 << 20):
                f.write(os.urandom(min(1 << 20, pad_bytes - start)))
        files["pad.bin"] = pad
    return write_bundle(manifest, files, key, out_dir, compresslevel=1)
