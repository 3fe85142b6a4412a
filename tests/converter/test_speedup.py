"""edge-convert --speedup: channels pruned in steps, recovered by distillation from the source,
measured after each step; the bundle keeps the profile's fidelity bar against the source.

The numbers asserted are the converter's own (its manifest and decisions), never a clock here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from sdk.profiles import available_profiles
from tests.converter import models
from tests.converter.conftest import edge_convert


def _profile(folder: Path, **bar: float) -> Path:
    """x86-server with the single static int8 pass instead of the measured search (fast), keeping
    its prune step, at the given fidelity bar."""
    data = yaml.safe_load(available_profiles()["x86-server"].read_text(encoding="utf-8"))
    data["name"] = "cpu-speedup-test"
    data["quantization"]["scheme"] = "int8-static"
    data["quantization"].update(bar)
    data["passes"] = ["export", "cleanup", "prune", "int8-static", "validate"]
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _convert(model: Path, profile: Path, folder: Path, *extra: str | Path) -> dict[str, Any]:
    result = edge_convert(
        model,
        "--profile",
        profile,
        "--output",
        folder / "out",
        "--json",
        "--sign-key",
        folder / "key",
        *extra,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)["manifest"]


def _decisions(manifest: dict[str, Any], step: str) -> list[dict[str, Any]]:
    return [d for d in manifest["decisions"] if d["step"] == step]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdk import keys

    path = tmp_path_factory.mktemp("key") / "key"
    keys.save_keypair(keys.generate_key(), path)
    return path


def _digits_speedup(
    folder: Path,
    key: Path,
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    calibration: int,
    budget: int,
) -> dict[str, Any]:
    onnx_path = models.export(model, (torch.from_numpy(x[:1]),), folder / "digits.onnx", ["pixels"])
    np.savez(folder / "unlabeled.npz", pixels=x[:calibration])  # no labels: the source is the teacher
    np.savez(folder / "eval.npz", pixels=x[1400:], labels=y[1400:])
    manifest = _convert(
        onnx_path,
        _profile(folder, min_argmax_agreement=0.98),
        folder,
        "--speedup",
        "2",
        "--calibration",
        folder / "unlabeled.npz",
        "--eval",
        folder / "eval.npz",
        "--max-accuracy-drop",
        "0.02",
        "--budget",
        str(budget),
        "--sign-key",
        key,
    )
    metrics = manifest["metrics"]
    assert metrics["fidelity"]["argmax_agreement"] >= 0.98
    assert metrics["fidelity"]["samples"] == 397
    steps = _decisions(manifest, "speedup-step")
    (chosen,) = _decisions(manifest, "speedup")
    curve = chosen["measured"]["curve"]
    assert len(steps) == len(curve) and all("fidelity_after_pruning" in s["measured"] for s in steps)
    return manifest


def _best(manifest: dict[str, Any]) -> dict[str, Any]:
    (chosen,) = _decisions(manifest, "speedup")
    curve = chosen["measured"]["curve"]
    kept = [p for p in curve if p["meets_bar"]]
    assert kept, curve
    best = max(kept, key=lambda p: p["speedup"])
    assert best["channels_kept"] < best["channels_total"] and best["fidelity"] >= 0.98
    return best


def test_small_digits_cnn_is_pruned_and_recovered_at_the_bar(tmp_path: Path, key: Path) -> None:
    """The demo's CNN at 16x16 (trains in seconds). At this size a call takes ~0.1 ms, much of it
    ONNX Runtime's per-call overhead, so single steps measure within the host's noise: the speed
    claim is asserted on the 32x32 model below (slow) and in bench/convert.py."""
    model, x, y = models.small_digits()
    manifest = _digits_speedup(tmp_path, key, model, x, y, calibration=500, budget=45)
    _best(manifest)
    (chosen,) = _decisions(manifest, "speedup")
    curve = chosen["measured"]["curve"]
    # a step keeps its untrained cut when distillation would lower fidelity (the best step may be one),
    # so no step is below its pruning's own fidelity, and distillation recovered fidelity on some step
    assert all(p["fidelity"] >= p["fidelity_after_pruning"] for p in curve), curve
    assert any(p["fidelity"] > p["fidelity_after_pruning"] for p in curve), curve
    assert all(p["latency_vs_source"] > 0 and p["epochs"] >= 1 for p in curve)


@pytest.mark.slow
def test_digits_cnn_reaches_the_speedup_at_the_bar(tmp_path: Path, key: Path) -> None:
    """The demo's digits CNN (32x32): at least 1.6x the source's host speed (the converter's own
    interleaved measurement against the source) at argmax agreement 0.98 on 397 held-out digits.
    Slow (~100-230 s): with a shorter budget distillation gets too few epochs per step to recover
    0.98 beyond the first cut (measured: 1.36x from pruning at --budget 75). Pruning alone measured
    2.68x on an idle host but 1.40x on a busy one (fewer epochs per step), so it is held to 1.3x."""
    model, x, y = models.train_digits_cnn()
    manifest = _digits_speedup(tmp_path, key, model, x, y, calibration=1000, budget=400)
    latency = manifest["metrics"]["latency_ms"]
    assert latency["source"] / latency["converted"] >= 1.6, latency
    assert _best(manifest)["speedup"] >= 1.3


def test_detector_keeps_boxes_within_the_bar(tmp_path: Path, key: Path) -> None:
    """The YOLO-style detector (Conv, SiLU, split, residual adds, concat) converted from its ONNX
    export (the PyTorch source is not used): the pruned steps cut the convolutions whose channels
    meet at residual sums and concatenations too, and the shipped model is made from the pruned one
    (its int8 version, or the pruned fp32 model itself when int8 misses the bar; never the source)
    and keeps the box outputs within the bar. At 64x64 a call takes ~0.3 ms, much of it ONNX
    Runtime's per-call cost: the speed is reported by bench/convert.py, not asserted."""
    import onnx

    from sdk.bundle import extract_bundle

    det = models.tiny_detector(width=16)
    x = models.detector_images(96, 64, seed=3).numpy()
    onnx_path = models.export(det, (torch.from_numpy(x[:1]),), tmp_path / "det.onnx", ["images"])
    np.savez(tmp_path / "unlabeled.npz", images=x)
    manifest = _convert(
        onnx_path,
        _profile(tmp_path),
        tmp_path,
        "--speedup",
        "1.5",
        "--calibration",
        tmp_path / "unlabeled.npz",
        "--budget",
        "40",
        "--sign-key",
        key,
    )
    fid = manifest["metrics"]["fidelity"]
    assert fid["cosine"] >= 0.999 and "argmax_agreement" not in fid
    # without --eval a quarter of the calibration samples is held out: never trained on, judged on.
    assert fid["samples"] == 24
    (chosen,) = _decisions(manifest, "speedup")
    curve = chosen["measured"]["curve"]
    assert curve and all(p["fidelity"] <= 1.0 for p in curve)
    assert any(p["meets_bar"] and p["channels_kept"] < p["channels_total"] for p in curve), curve
    assert "held out from distillation" in chosen["measured"]["held_out"]
    before = _conv_channels(onnx.load(str(onnx_path)))
    # every Conv may be pruned but the two heads (12 outputs each), which feed a Reshape
    assert curve[0]["channels_total"] == sum(before.values()) - 2 * 12
    (bundle,) = (tmp_path / "out").glob("*.efb")
    extract_bundle(bundle, tmp_path / "bundle")
    after = _conv_channels(onnx.load(str(tmp_path / "bundle" / "model.onnx")))
    assert fid["max_abs_error"] > 0 and sum(after.values()) < sum(before.values())  # the pruned model shipped
    (shipped,) = [d["choice"] for d in _decisions(manifest, "validate") if ": chosen" in d["choice"]]
    assert shipped.startswith(("int8-static: ", "pruned-step-")), shipped  # not the source graph
    # the 1x1 convolutions split into a C2f block's halves, one of them a residual's partner
    split_convs = [n for n in before if n.endswith("/cv1/cv1.0/Conv")]
    assert len(split_convs) == 4 and any(after[n] < before[n] for n in split_convs), (before, after)
    report = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "latency against fidelity, step by step" in report


def _conv_channels(model: Any) -> dict[str, int]:
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    # a quantized graph's weights reach the Conv through a DequantizeLinear of an int8 initializer
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}

    def weight(name: str) -> Any:
        return inits.get(name) or inits.get(dequantized.get(name, ""))

    return {
        n.name: numpy_helper.to_array(weight(n.input[1])).shape[0]
        for n in model.graph.node
        if n.op_type == "Conv" and weight(n.input[1]) is not None
    }


def test_ops_the_interpretation_cannot_run_are_named_and_the_step_skipped(tmp_path: Path, key: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 16, 1, 1)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r"]),
            helper.make_node("Conv", ["r", "w2"], ["c2"]),
            helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Hardmax", ["f"], ["scores"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "cal.npz", x=rng.random((64, 3, 8, 8)).astype(np.float32))
    result = edge_convert(
        tmp_path / "m.onnx",
        "--profile",
        _profile(tmp_path),
        "--speedup",
        "2",
        "--calibration",
        tmp_path / "cal.npz",
        "--output",
        tmp_path / "out",
        "--sign-key",
        key,
        "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--speedup skipped: ops the torch interpretation cannot run: Hardmax" in result.stderr
    manifest = json.loads(result.stdout)["manifest"]
    (skipped,) = _decisions(manifest, "speedup")
    assert skipped["choice"] == "skipped" and skipped["measured"]["unsupported_ops"] == ["Hardmax"]
    assert _decisions(manifest, "quantize") and _decisions(manifest, "validate")  # the rest still ran
