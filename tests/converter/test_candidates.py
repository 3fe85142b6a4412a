"""The ranking of candidates that passed: latency ties within the measured noise go by bytes, then
fidelity, so the same inputs give the same bundle; every broken tie is described."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converter.candidates import Candidate, Verdict, rank, shortfall, slower_than_source
from converter.context import Options
from converter.measure import Fidelity, Latency
from converter.pipeline import ConvertRequest, convert
from sdk.profiles import load_profile
from tests.converter import models

SOURCE_BYTES = 3_200_000


def _cand(tmp_path: Path, name: str, size: int, ratio: float, cosine: float = 0.9999) -> Candidate:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(b"\0" * size)
    c = Candidate(name, path, "int8", name, latency_ratio=ratio)
    c.fidelity = Fidelity(None, cosine, 0.0, 64)
    c.decide(Verdict.ELIGIBLE)
    return c


def test_latency_ties_within_the_noise_go_to_the_smaller_candidate(tmp_path: Path) -> None:
    small = _cand(tmp_path, "weight-only", int(0.23 * SOURCE_BYTES), 1.02)
    big = _cand(tmp_path, "fp32ish", int(0.45 * SOURCE_BYTES), 0.99)
    # the same candidates with the measured order of their latencies swapped: the same choice
    for ratios in ((1.02, 0.99), (0.99, 1.02)):
        small.latency_ratio, big.latency_ratio = ratios
        for order in ([small, big], [big, small]):
            ranking = rank(order, SOURCE_BYTES, noise=0.03)
            assert [c.name for c in ranking.ordered] == ["weight-only", "fp32ish"]
            assert len(ranking.ties) == 1 and "by bytes" in ranking.ties[0]


def test_a_clear_latency_win_is_not_a_tie(tmp_path: Path) -> None:
    small = _cand(tmp_path, "a", 1_000_000, 1.0)
    fast = _cand(tmp_path, "b", 1_500_000, 0.6)
    ranking = rank([small, fast], SOURCE_BYTES, noise=0.03)
    assert [c.name for c in ranking.ordered] == ["b", "a"] and ranking.ties == []


def test_same_size_band_ties_go_by_fidelity_then_name(tmp_path: Path) -> None:
    a = _cand(tmp_path, "a", 800_000, 1.0, cosine=0.9992)
    b = _cand(tmp_path, "b", 810_000, 1.01, cosine=0.9999)  # within 5% of the source's bytes of a
    ranking = rank([a, b], SOURCE_BYTES, noise=0.02)
    assert [c.name for c in ranking.ordered] == ["b", "a"] and "by fidelity" in ranking.ties[0]
    c = _cand(tmp_path, "c", 800_000, 1.0, cosine=0.9992)
    assert [x.name for x in rank([c, a], SOURCE_BYTES, 0.02).ordered] == ["a", "c"]


def test_candidates_that_halve_a_big_model_come_first(tmp_path: Path) -> None:
    half = _cand(tmp_path, "half", int(0.45 * SOURCE_BYTES), 0.9)
    fast = _cand(tmp_path, "fast", int(0.8 * SOURCE_BYTES), 0.5)
    assert rank([fast, half], SOURCE_BYTES, 0.02).ordered[0].name == "half"


def test_the_bar_and_the_never_slower_rule_name_what_failed_and_by_how_much() -> None:
    bar = load_profile("x86-server").quantization
    assert shortfall(Fidelity(0.9723, 0.99, 3.0, 397), bar) == (
        "argmax agreement 0.9723 is below the bar 0.99 by 0.0177"
    )
    assert shortfall(Fidelity(None, 0.9995, 0.1, 10), bar) is None
    assert "accuracy dropped 0.0300" in (shortfall(Fidelity(None, 1.0, 0, 10), bar, 0.03, 0.01) or "")
    rng = np.random.default_rng(0)
    blocks = {n: list(1 + 0.002 * rng.standard_normal(40)) for n in ("source", "source (A/A)")}
    blocks["slow"] = list(1.5 * (1 + 0.002 * rng.standard_normal(40)))
    blocks["same"] = list(1 + 0.002 * rng.standard_normal(40))
    latency = Latency(blocks, ("source", "source (A/A)"))
    assert "1.50" in (slower_than_source(latency, "slow") or "")
    assert slower_than_source(latency, "same") is None


@pytest.mark.slow
def test_the_same_conversion_twice_ships_the_same_candidate(tmp_path: Path, sign_key: Path) -> None:
    """A text model whose int8-stored candidates tie with fp32 on latency: the same bytes each run."""
    src = models.bag_of_words(tmp_path / "bow.onnx")
    ids = np.random.default_rng(0).integers(0, 6000, (64, 16)).astype(np.int32)
    np.savez(tmp_path / "cal.npz", ids=ids)
    shipped = []
    for run in range(2):
        result = convert(
            ConvertRequest(
                model=str(src),
                profile="x86-server",
                out_dir=tmp_path / f"out{run}",
                sign_key=str(sign_key),
                options=Options(calibration_path=tmp_path / "cal.npz", budget_seconds=120),
            )
        )
        quantize = next(d for d in result.manifest.decisions if d.step == "quantize")
        shipped.append((quantize.choice, result.manifest.metrics.size_bytes.converted))
    assert shipped[0] == shipped[1]
