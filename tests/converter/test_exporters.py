"""Models made by the real tf2onnx and Paddle2ONNX exporters convert for the CPU int8 profiles.

Each exporter runs in its own cached venv (``tests/support/exporters.py``; the first run installs
TensorFlow or PaddlePaddle from PyPI, about a minute each). A small CNN is trained there on
scikit-learn's digits and exported the way the framework's users do; ``edge-convert`` then runs on
the exported file for each CPU profile, and the bundle must verify, meet the profile's fidelity bar,
keep accuracy within a point and keep the dynamic batch axis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sdk import keys
from sdk.bundle import extract_bundle, verify_bundle
from sdk.manifest import Manifest
from sdk.profiles import load_profile
from tests.converter import exporter_graphs as eg
from tests.converter.conftest import edge_convert
from tests.support.exporters import run_export

pytestmark = pytest.mark.slow

CPU_PROFILES = ["x86-server", "raspberry-pi"]


@dataclass(frozen=True)
class Exported:
    exporter: str
    onnx: Path
    input_name: str
    x: np.ndarray
    y: np.ndarray
    calibration: Path
    evaluation: Path


def _data(exporter: str) -> np.ndarray:
    x, _ = eg.digits()
    if exporter == "tf2onnx":
        # Keras is channels-last; three channels so the NHWC -> NCHW Transpose is a real one.
        nhwc = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(np.concatenate([nhwc, 1 - nhwc, 0.5 * nhwc], axis=-1))
    return x


SCRIPTS = {"tf2onnx": "keras_digits.py", "paddle2onnx": "paddle_digits.py"}
#: tf2onnx's default opset and a newer one; Paddle2ONNX's classic opset 11 (raised to 13 for int8).
EXPORTS = [("tf2onnx", 13), ("tf2onnx", 15), ("paddle2onnx", 11)]


@pytest.fixture(scope="module", params=EXPORTS, ids=[f"{e}-opset{o}" for e, o in EXPORTS])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    exporter, opset = request.param
    script = SCRIPTS[exporter]
    folder = tmp_path_factory.mktemp(f"{exporter}-{opset}")
    x, y = _data(exporter), eg.digits()[1]
    np.savez(folder / "digits.npz", x=x, y=y)
    path = folder / "model.onnx"
    run_export(exporter, script, folder / "digits.npz", path, str(opset), cwd=folder)
    model = onnx.load(str(path))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == opset
    name = model.graph.input[0].name
    # the exporter is faithful: ONNX Runtime on its file gives the framework's own answers
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {name: x})[0]
    theirs = np.load(f"{path}.expected.npy")
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.99
    np.savez(folder / "calibration.npz", **{name: x[:200]})
    np.savez(folder / "eval.npz", **{name: x[eg.TRAIN :]}, labels=y[eg.TRAIN :])
    return Exported(exporter, path, name, x, y, folder / "calibration.npz", folder / "eval.npz")


@pytest.mark.parametrize("profile", CPU_PROFILES)
def test_real_exporter_model_converts(
    exported: Exported, profile: str, sign_key: Path, tmp_path: Path
) -> None:
    done = edge_convert(
        exported.onnx,
        "--profile", profile,
        "--calibration", exported.calibration,
        "--eval", exported.evaluation,
        "--output", tmp_path,
        "--name", f"{exported.exporter}-digits",
        "--sign-key", sign_key,
        "--budget", "120",
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    verified = verify_bundle(Path(out["bundle"]), [keys.load_public_key(Path(f"{sign_key}.pub"))])
    assert verified.trusted
    m: Manifest = verified.manifest
    assert m.source.format == "onnx" and m.profile == profile
    bar = load_profile(profile).quantization
    assert m.metrics.fidelity is not None and m.metrics.fidelity.argmax_agreement is not None
    assert m.metrics.fidelity.argmax_agreement >= bar.min_argmax_agreement
    assert m.metrics.accuracy is not None and m.metrics.accuracy.source > 0.85
    assert m.metrics.accuracy.source - m.metrics.accuracy.converted <= 0.01
    # dynamic batch axis kept, in the manifest and in the model the device will run
    assert m.inputs[0].name == exported.input_name and m.inputs[0].shape[0] == -1
    extract_bundle(Path(out["bundle"]), tmp_path / "unpacked")
    model_path = tmp_path / "unpacked" / "model.onnx"
    dim = onnx.load(str(model_path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert not dim.HasField("dim_value")
    options = ort.SessionOptions()
    for key, value in m.runtime_options.session_config.items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    batch = exported.x[eg.TRAIN : eg.TRAIN + 9]
    assert session.run(None, {exported.input_name: batch})[0].shape == (9, 10)
