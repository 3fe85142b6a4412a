"""The contract between the converter and the agent, end to end with the real programs.

``edge-convert`` (a subprocess) makes a signed bundle; ``edge-agent install`` verifies, smoke-tests
and activates it; ``edge-agent serve`` serves it over HTTP on a free loopback port. The served
model must answer the manifest's own smoke sample within its tolerances, and the source model's
outputs (onnxruntime on the source .onnx) within the profile's fidelity bar.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from converter.measure import fidelity
from sdk import keys
from sdk.agent_client import AgentClient
from sdk.bundle import verify_bundle
from sdk.errors import InferenceError
from sdk.profiles import load_profile
from tests.converter import models
from tests.support.agent_proc import AGENT_BIN, Agent
from tests.support.mosquitto import free_port
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
PROFILE = "x86-server"


def _run(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*map(str, args)], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
    )


def test_a_converted_bundle_serves_the_source_models_answers(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "signing"
    keys.save_keypair(keys.generate_key(), key)
    source = models.tiny_mlp(tmp_path / "mlp.onnx", hidden=256)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((128, 16)).astype(np.float32))
    held_out = rng.standard_normal((32, 16)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=held_out)

    converted = _run(
        sys.executable, "-m", "converter.cli", source, "--profile", PROFILE, "--output", tmp_path / "out",
        "--name", "mlp", "--calibration", tmp_path / "cal.npz", "--eval", tmp_path / "eval.npz",
        "--sign-key", key, "--json",
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr[-3000:]
    bundle = Path(json.loads(converted.stdout)["bundle"])
    manifest = verify_bundle(bundle, [keys.load_public_key(Path(f"{key}.pub"))]).manifest
    assert manifest.smoke is not None

    data_dir = tmp_path / "agent"
    installed = _run(AGENT_BIN, "install", bundle, "--data-dir", data_dir, "--trust-key", f"{key}.pub")
    assert installed.returncode == 0, installed.stderr[-3000:]

    port = free_port()
    agent = Agent(
        "local",
        ["--data-dir", str(data_dir), "--trust-key", f"{key}.pub", "--listen", f"127.0.0.1:{port}"],
        port,
        tmp_path / "agent.log",
    )
    agent.start()
    try:
        with AgentClient(f"http://127.0.0.1:{port}") as client:
            wait_until(lambda: _ready(client), 60, "the agent to serve the model")
            # 1. the manifest's smoke sample, within its own tolerances
            smoke_in = {k: v.to_numpy() for k, v in manifest.smoke.inputs.items()}
            served = client.infer("mlp", smoke_in).outputs
            for name, expected in manifest.smoke.outputs.items():
                np.testing.assert_allclose(
                    served[name], expected.to_numpy(), rtol=manifest.smoke.rtol, atol=manifest.smoke.atol
                )
            # 2. the source model's outputs on held-out inputs, within the profile's fidelity bar
            reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
            out_names = [o.name for o in reference.get_outputs()]
            want = reference.run(None, {"x": held_out})
            got = client.infer("mlp", {"x": held_out}).outputs
            fid = fidelity(want, [got[n] for n in out_names])
            assert fid.meets(load_profile(PROFILE).quantization), fid
            assert fid.samples == len(held_out)
    finally:
        agent.stop()
    assert agent.process is not None and "Traceback" not in agent.log.read_text(errors="replace")


def _ready(client: AgentClient) -> bool:
    try:
        return client.model_ready("mlp")
    except InferenceError:  # the server is not listening yet
        return False
