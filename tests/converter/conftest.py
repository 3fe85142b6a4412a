"""Fixtures for converter tests: real models trained or built here, their data, a signing key."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.converter import models

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DigitsModel:
    onnx: Path
    calibration: Path
    evaluation: Path
    folder: Path


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsModel:
    """A Conv-BN-ReLU CNN trained on scikit-learn digits, exported to ONNX, with calibration/eval data."""
    import torch

    folder = tmp_path_factory.mktemp("digits")
    model, x, y = models.train_digits_cnn()
    path = models.export(model, (torch.from_numpy(x[:1]),), folder / "digits.onnx", ["pixels"])
    np.savez(folder / "calibration.npz", pixels=x[:200])
    np.savez(folder / "eval.npz", pixels=x[1400:], labels=y[1400:])
    return DigitsModel(path, folder / "calibration.npz", folder / "eval.npz", folder)


@pytest.fixture(scope="session")
def sign_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdk import keys

    path = tmp_path_factory.mktemp("keys") / "signing"
    keys.save_keypair(keys.generate_key(), path)
    return path


def edge_convert(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``edge-convert`` console entry point in a subprocess."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "converter.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=600,
    )
