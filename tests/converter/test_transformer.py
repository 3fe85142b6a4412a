"""Transformers: a small encoder built here (fast) and all-MiniLM-L6-v2 from its package (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from converter.context import Options
from converter.pipeline import ConvertRequest, convert
from tests.converter import minilm, models
from tests.converter.decisions import assert_shipped_not_slower


def test_encoder_int8_keeps_cosine_and_is_not_slower(tmp_path: Path, sign_key: Path) -> None:
    path = models.export(
        models.tiny_encoder(), (torch.randint(0, 1000, (1, 32)),), tmp_path / "enc.onnx", ["ids"]
    )
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", ids=rng.integers(0, 1000, (100, 32)))
    np.savez(tmp_path / "eval.npz", ids=rng.integers(0, 1000, (100, 32)))
    result = convert(
        ConvertRequest(
            model=str(path),
            profile="x86-server",
            out_dir=tmp_path / "out",
            evaluation=tmp_path / "eval.npz",
            sign_key=str(sign_key),
            options=Options(calibration_path=tmp_path / "cal.npz", budget_seconds=90),
        )
    )
    m = result.manifest.metrics
    assert m.fidelity is not None and m.fidelity.cosine >= 0.999
    assert m.fidelity.argmax_agreement is None  # an embedding, not a classifier
    assert m.size_bytes is not None and m.size_bytes.converted <= 0.5 * m.size_bytes.source
    assert_shipped_not_slower(result.manifest)


@pytest.mark.slow
def test_minilm_int8_embedding_cosine_and_latency_win(
    tmp_path: Path, sign_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    np.savez(tmp_path / "cal.npz", **minilm.token_data(64, seed=0))
    np.savez(tmp_path / "eval.npz", **minilm.token_data(64, seed=1))
    result = convert(
        ConvertRequest(
            model="tests.converter.minilm:factory",
            profile="x86-server",  # its bar: cosine >= 0.999 (the goal for non-classifiers)
            out_dir=tmp_path / "out",
            evaluation=tmp_path / "eval.npz",
            sign_key=str(sign_key),
            options=Options(calibration_path=tmp_path / "cal.npz", budget_seconds=300),
        )
    )
    m = result.manifest
    assert m.precision == "int8"
    assert m.metrics.fidelity is not None and m.metrics.fidelity.cosine >= 0.999
    assert (
        m.metrics.size_bytes is not None
        and m.metrics.size_bytes.converted <= 0.5 * m.metrics.size_bytes.source
    )
    chosen = next(d for d in m.decisions if d.step == "quantize")
    assert chosen.measured["latency_vs_source"] < 1.0
