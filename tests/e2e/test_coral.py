"""coral end to end with the real programs: PyTorch or .tflite -> edge-convert -> edge-agent -> tritonclient.

A CNN trained here on scikit-learn's digits goes four ways into full-integer coral bundles:

* the PyTorch model itself (``package.module:factory``), through litert-torch and ai-edge-quantizer;
* the same as TorchScript (turned into a ``torch.export`` program first);
* a float ``.tflite`` the test makes with litert-torch;
* a full-integer ``.tflite`` the test quantizes itself with ai-edge-quantizer (a peer converter),
  which must be bundled unchanged.

One ``edge-agent`` subprocess installs and serves all four; ``tritonclient.http`` sends floats.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

import tritonclient.http as triton
from ai_edge_litert.interpreter import Interpreter

from sdk import keys
from sdk.agent_client import AgentClient
from sdk.bundle import verify_bundle
from sdk.errors import InferenceError
from sdk.manifest import Manifest
from tests.converter.models import train_small_digits_cnn
from tests.support.agent_proc import AGENT_BIN, Agent
from tests.support.mosquitto import free_port
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
HELD_OUT = 1400
#: the first CALIBRATION training samples calibrate the int8 ranges (300 left a 0.989 argmax agreement).
CALIBRATION = 1000

FACTORY = """
import torch

def digits():
    return torch.load({path!r}, weights_only=False).eval()
"""


@dataclass(frozen=True)
class Served:
    port: int
    x: np.ndarray
    y: np.ndarray
    float_accuracy: float
    bundles: dict[str, Path]
    manifests: dict[str, Manifest]
    peer_model: Path


def _run(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _convert(model: str | Path, name: str, work: Path, key: Path) -> Path:
    done = _run(
        sys.executable, "-m", "converter.cli", model, "--profile", "coral", "--name", name,
        "--output", work / "out", "--calibration", work / "cal.npz", "--eval", work / "eval.npz",
        "--sign-key", key, "--json", cwd=work,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(json.loads(done.stdout)["bundle"])


def _peer_quantized(float_model: Path, x: np.ndarray, out: Path) -> Path:
    """What another converter hands over: ai-edge-quantizer's static int8 recipe, used directly."""
    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(str(float_model), recipe.static_wi8_ai8())
    signature = Interpreter(model_path=str(float_model)).get_signature_list()
    key, sig = next(iter(signature.items()))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ranges = q.calibrate({key: [{sig["inputs"][0]: x[i : i + 1]} for i in range(CALIBRATION)]})
        out.write_bytes(bytes(q.quantize(ranges, enable_progress_report=False).quantized_model))
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import litert_torch
    import torch

    from tests.converter.exporter_graphs import digits

    work = tmp_path_factory.mktemp("coral")
    key = work / "keys" / "signing"
    keys.save_keypair(keys.generate_key(), key)
    x, y = digits()
    model = train_small_digits_cnn(x[:HELD_OUT], y[:HELD_OUT])
    with torch.no_grad():
        logits = model(torch.from_numpy(x[HELD_OUT:])).numpy()
    float_accuracy = float(np.mean(logits.argmax(1) == y[HELD_OUT:]))
    torch.save(model, work / "digits.pt")
    (work / "digits_factory.py").write_text(FACTORY.format(path=str(work / "digits.pt")))
    np.savez(work / "cal.npz", image=x[:CALIBRATION])
    np.savez(work / "eval.npz", image=x[HELD_OUT:], labels=y[HELD_OUT:])
    float_tflite = work / "digits-float.tflite"
    with contextlib.redirect_stdout(io.StringIO()):
        litert_torch.convert(model, (torch.from_numpy(x[:1]),)).export(str(float_tflite))
    peer = _peer_quantized(float_tflite, x, work / "digits-peer-int8.tflite")

    torch.jit.save(torch.jit.script(model), work / "digits-script.pt")
    sources = {
        "torch": "digits_factory:digits",
        "torchscript": work / "digits-script.pt",
        "float": float_tflite,
        "peer": peer,
    }
    with ThreadPoolExecutor(len(sources)) as pool:  # one process each: their imports overlap
        jobs = {k: pool.submit(_convert, src, f"digits-{k}", work, key) for k, src in sources.items()}
        bundles = {k: job.result() for k, job in jobs.items()}
    manifests = {
        k: verify_bundle(b, [keys.load_public_key(Path(f"{key}.pub"))]).manifest for k, b in bundles.items()
    }
    data_dir = work / "agent"
    for bundle in bundles.values():
        installed = _run(AGENT_BIN, "install", bundle, "--data-dir", data_dir, "--trust-key", f"{key}.pub")
        assert installed.returncode == 0, installed.stderr[-3000:]
    port = free_port()
    log = work / "agent.log"
    agent = Agent(
        "local",
        ["--data-dir", str(data_dir), "--trust-key", f"{key}.pub", "--listen", f"127.0.0.1:{port}"],
        port,
        log,
    )
    agent.start()
    try:
        with AgentClient(f"http://127.0.0.1:{port}") as client:
            wait_until(
                lambda: all(_ready(client, m.name) for m in manifests.values()), 60, "the agent to serve"
            )
        yield Served(port, x, y, float_accuracy, bundles, manifests, peer)
    finally:
        agent.stop()
    assert "Traceback" not in log.read_text(errors="replace")


def _ready(client: AgentClient, name: str) -> bool:
    try:
        return client.model_ready(name)
    except InferenceError:  # not listening yet
        return False


def _served_logits(s: Served, manifest: Manifest) -> np.ndarray:
    client = triton.InferenceServerClient(f"127.0.0.1:{s.port}")
    out = []
    for sample in s.x[HELD_OUT:]:
        inp = triton.InferInput(manifest.inputs[0].name, [1, 1, 8, 8], "FP32")
        inp.set_data_from_numpy(sample[None], binary_data=True)
        out.append(client.infer(manifest.name, [inp]).as_numpy(manifest.outputs[0].name)[0])
    return np.stack(out)


def _model_tflite(bundle: Path, dest: Path) -> Path:
    import tarfile

    with tarfile.open(bundle) as tar:
        member = tar.extractfile("model.tflite")
        assert member is not None
        dest.write_bytes(member.read())
    return dest


def _litert_direct(model: Path, x: np.ndarray) -> tuple[np.ndarray, float]:
    """LiteRT on the bundle's model, quantizing and dequantizing by hand; and the output's scale."""
    it = Interpreter(model_path=str(model))
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    (si, zi), (so, zo) = i["quantization"], o["quantization"]
    assert i["dtype"] == np.int8 and o["dtype"] == np.int8 and si > 0 and so > 0
    out = []
    for sample in x:
        it.set_tensor(i["index"], np.clip(np.round(sample[None] / si) + zi, -128, 127).astype(np.int8))
        it.invoke()
        out.append((it.get_tensor(o["index"]).astype(np.float32)[0] - zo) * so)
    return np.stack(out), so


@pytest.mark.parametrize("source", ["torch", "torchscript", "float"])
def test_coral_bundle_is_full_integer_and_keeps_accuracy(served: Served, source: str, tmp_path: Path) -> None:
    manifest = served.manifests[source]
    assert (
        manifest.runtime == "litert"
        and manifest.model_file == "model.tflite"
        and manifest.precision == "int8"
    )
    assert manifest.litert is not None and manifest.litert.fully_integer
    assert manifest.litert.edgetpu_unsupported_ops == {}  # conv, pool, relu, fc: all Edge TPU ops
    assert [(t.name, t.datatype) for t in manifest.inputs] == [("image", "FP32")]  # the client sends floats
    m = manifest.metrics
    assert m.size_bytes is not None and m.size_bytes.converted < m.size_bytes.source  # int8 weights
    assert m.accuracy is not None and m.latency_ms is not None and m.latency_ms.host_measured
    assert manifest.reference is not None and set(manifest.reference.inputs) == {"image"}

    logits = _served_logits(served, manifest)
    accuracy = float(np.mean(logits.argmax(1) == served.y[HELD_OUT:]))
    assert accuracy >= served.float_accuracy - 0.01, (accuracy, served.float_accuracy)
    # tritonclient gets what LiteRT itself answers on the bundle's model (within one output step)
    direct, step = _litert_direct(
        _model_tflite(served.bundles[source], tmp_path / "m.tflite"), served.x[HELD_OUT:]
    )
    np.testing.assert_allclose(logits, direct, atol=step * 1.01, rtol=0)


def test_a_full_integer_tflite_is_served_unchanged(served: Served, tmp_path: Path) -> None:
    manifest = served.manifests["peer"]
    bundled = _model_tflite(served.bundles["peer"], tmp_path / "m.tflite").read_bytes()
    assert hashlib.sha256(bundled).digest() == hashlib.sha256(served.peer_model.read_bytes()).digest()
    assert manifest.litert is not None and manifest.litert.fully_integer
    assert [d.choice for d in manifest.decisions if d.step == "quantize"] == ["keep the model as given"]
    logits = _served_logits(served, manifest)
    direct, step = _litert_direct(served.peer_model, served.x[HELD_OUT:])
    np.testing.assert_allclose(logits, direct, atol=step * 1.01, rtol=0)
    assert float(np.mean(logits.argmax(1) == served.y[HELD_OUT:])) >= served.float_accuracy - 0.02
