"""Data files are checked against the model; synthetic data says what it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converter.calibration import load_npz, parse_input_overrides, synthetic
from converter.measure import Fidelity, fidelity, is_classifier
from converter.model import InputSpec
from sdk.errors import ConfigError
from sdk.profiles import QuantizationSpec

SPECS = [InputSpec("ids", "int64", ("batch", 8)), InputSpec("image", "float32", (None, 3, 4, 4))]


def test_input_overrides() -> None:
    assert parse_input_overrides(["x:1x3x224x224", "ids:1,128"]) == {"x": (1, 3, 224, 224), "ids": (1, 128)}
    for bad in ["x", "x:", "x:1xa", "x:0x3"]:
        with pytest.raises(ConfigError, match="NAME:SHAPE"):
            parse_input_overrides([bad])


def test_npz_is_checked_and_cast(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "ok.npz", ids=np.ones((5, 8), np.int32), image=np.zeros((5, 3, 4, 4)), labels=np.arange(5)
    )
    data = load_npz(tmp_path / "ok.npz", SPECS, "calibration")
    assert (
        len(data) == 5 and data.inputs["ids"].dtype == np.int64 and data.inputs["image"].dtype == np.float32
    )
    assert data.labels is not None and list(data.batches(2))[-1]["ids"].shape == (1, 8)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"ids": np.ones((5, 8))}, "missing ['image']"),
        (
            {"ids": np.ones((5, 8), np.int64), "image": np.zeros((5, 3, 4, 4)), "extra": np.ones(5)},
            "unexpected",
        ),
        ({"ids": np.ones((5, 9), np.int64), "image": np.zeros((5, 3, 4, 4))}, "[5, 9]"),
        ({"ids": np.ones((5, 8), np.int64), "image": np.zeros((5, 4, 4))}, "rank 4"),
        ({"ids": np.ones((5, 8), np.int64), "image": np.zeros((4, 3, 4, 4))}, "different sample counts"),
        (
            {"ids": np.ones((5, 8), np.int64), "image": np.zeros((5, 3, 4, 4)), "labels": np.ones(3)},
            "'labels' has 3",
        ),
    ],
)
def test_npz_mismatches_are_named(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_npz(tmp_path / "bad.npz", SPECS, "calibration")


def test_not_an_npz(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(ConfigError, match="not a readable"):
        load_npz(tmp_path / "x.npz", SPECS, "eval")


def test_synthetic_data_describes_itself() -> None:
    data = synthetic(SPECS, {"image": (1, 3, 4, 4)}, n=10)
    assert data.synthetic and "normal(0,1)" in data.origin and "integers 0/1" in data.origin
    assert data.inputs["ids"].shape == (10, 8) and set(np.unique(data.inputs["ids"])) <= {0, 1}


def test_fidelity_measures() -> None:
    ref = [np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)]
    assert fidelity(ref, ref, classifier=True) == Fidelity(1.0, 1.0, 0.0, 2)
    flipped = [np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)]
    fid = fidelity(ref, flipped, classifier=True)
    assert fid.argmax_agreement == 0.5 and fid.max_abs_error == 1.0 and fid.cosine == pytest.approx(0.5)
    bar = QuantizationSpec(scheme="int8-selective")
    assert not fid.meets(bar) and "argmax agreement 0.5000" in fid.shortfall(bar)
    assert is_classifier(ref, ["logits"]) and not is_classifier(ref, ["embedding"])
    assert is_classifier(ref, ["embedding"], has_labels=True)
