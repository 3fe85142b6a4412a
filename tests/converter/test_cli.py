"""edge-convert as users run it: --json purity and one clear line for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.converter.conftest import edge_convert
from tests.converter.models import tiny_mlp


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return tiny_mlp(tmp_path / "mlp.onnx")


def _tiny_box(tmp_path: Path) -> Path:
    """x86-server, renamed, with max_model_mb 0.1."""
    text = (Path(__file__).resolve().parents[2] / "hardware-profiles" / "x86-server.yaml").read_text()
    profile = tmp_path / "tiny-box.yaml"
    profile.write_text(
        text.replace("name: x86-server", "name: tiny-box").replace("max_model_mb: 8192", "max_model_mb: 0.1")
    )
    return profile


def _one_error_line(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode != 0
    # progress lines may come before it; the error itself is the one last line.
    lines = [
        line for line in result.stderr.strip().splitlines() if not line.startswith(("INFO ", "WARNING "))
    ]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edge-convert: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stderr.strip().splitlines()[-1] == lines[0]
    assert "Traceback" not in result.stderr


def test_json_stdout_is_one_object_and_progress_goes_to_stderr(
    mlp: Path, sign_key: Path, tmp_path: Path
) -> None:
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32))
    result = edge_convert(
        mlp,
        "--profile",
        "raspberry-pi",
        "--calibration",
        tmp_path / "cal.npz",
        "--output",
        tmp_path / "out",
        "--sign-key",
        sign_key,
        "--json",
        "--budget",
        "60",
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)  # the whole of stdout is exactly one JSON document
    assert set(body) == {"bundle", "manifest", "report"}
    assert Path(body["bundle"]).is_file() and body["bundle"].endswith("mlp-1-raspberry-pi.efb")
    assert body["manifest"]["profile"] == "raspberry-pi" and body["manifest"]["inputs"][0]["shape"] == [
        -1,
        16,
    ]
    assert "pass int8" in result.stderr  # human progress is on stderr


def test_without_calibration_data_it_says_what_it_used(mlp: Path, sign_key: Path, tmp_path: Path) -> None:
    result = edge_convert(
        mlp,
        "--profile",
        "x86-server",
        "--output",
        tmp_path,
        "--sign-key",
        sign_key,
        "--json",
        "--budget",
        "60",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "no --calibration data" in result.stderr
        and "synthetic" in result.stderr
        and "normal(0,1)" in result.stderr
    )
    manifest = json.loads(result.stdout)["manifest"]
    assert any(d["step"] == "data" and "synthetic" in d["choice"] for d in manifest["decisions"])


def test_default_signing_key_is_created_once_with_a_warning(mlp: Path, tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "EDGEFLEET_SIGN_KEY": ""}
    first = edge_convert(mlp, "--profile", "x86-server", "--output", tmp_path, "--budget", "30", env=env)
    assert first.returncode == 0, first.stderr
    pub = tmp_path / "xdg" / "edgefleet" / "signing-key.pub"
    assert pub.is_file() and str(pub) in first.stderr
    second = edge_convert(mlp, "--profile", "x86-server", "--output", tmp_path, "--budget", "30", env=env)
    assert second.returncode == 0 and str(pub) not in second.stderr


def test_truncated_model(mlp: Path, tmp_path: Path, sign_key: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(mlp.read_bytes()[: mlp.stat().st_size // 2])
    _one_error_line(
        edge_convert(cut, "--profile", "x86-server", "--sign-key", sign_key), "cut.onnx", "truncated"
    )


def test_file_that_is_not_a_model(tmp_path: Path, sign_key: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("these are not the weights you are looking for\n")
    _one_error_line(edge_convert(text, "--profile", "x86-server", "--sign-key", sign_key), "notes.onnx")


def test_unknown_profile_lists_the_known_ones(mlp: Path, sign_key: Path) -> None:
    _one_error_line(
        edge_convert(mlp, "--profile", "toaster", "--sign-key", sign_key),
        "toaster",
        "jetson",
        "raspberry-pi",
        "x86-server",
        "qualcomm-npu",
        "coral",
    )


def test_data_with_wrong_names(mlp: Path, tmp_path: Path, sign_key: Path) -> None:
    np.savez(tmp_path / "bad.npz", image=np.zeros((4, 16), np.float32))
    _one_error_line(
        edge_convert(
            mlp, "--profile", "x86-server", "--calibration", tmp_path / "bad.npz", "--sign-key", sign_key
        ),
        "image",
        "'x'",
    )


def test_data_with_wrong_shape(mlp: Path, tmp_path: Path, sign_key: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 15), np.float32))
    _one_error_line(
        edge_convert(mlp, "--profile", "x86-server", "--eval", tmp_path / "bad.npz", "--sign-key", sign_key),
        "[4, 15]",
        "[?, 16]",
    )


def test_model_over_the_profiles_size_limit(mlp: Path, tmp_path: Path, sign_key: Path) -> None:
    big = tiny_mlp(tmp_path / "big.onnx", hidden=4096)  # ~1 MB of fp32 weights, ~0.25 MB as int8
    profile = _tiny_box(tmp_path)
    _one_error_line(
        edge_convert(
            big, "--profile", profile, "--output", tmp_path, "--sign-key", sign_key, "--budget", "30"
        ),
        "max_model_mb",
        "tiny-box",
    )


def test_coral_without_calibration_data_refuses_clearly(mlp: Path, sign_key: Path) -> None:
    # full-integer int8 needs the user's data; said before any export work, in one line
    result = edge_convert(mlp, "--profile", "coral", "--sign-key", sign_key)
    _one_error_line(result, "coral", "--calibration")


def test_bad_flag_is_one_line(mlp: Path) -> None:
    _one_error_line(edge_convert(mlp, "--profile", "x86-server", "--prune", "1.5"), "--prune")


def test_model_that_cannot_fit_even_as_int8_is_refused_before_converting(
    tmp_path: Path, sign_key: Path
) -> None:
    huge = tiny_mlp(tmp_path / "huge.onnx", hidden=16384)  # ~1.3 MB fp32: over 4 x 0.1 MB
    profile = _tiny_box(tmp_path)
    result = edge_convert(huge, "--profile", profile, "--output", tmp_path, "--sign-key", sign_key)
    _one_error_line(result, "max_model_mb", "cannot fit")
    assert "pass int8" not in result.stderr
