"""converter.memory: the default limit, chunking by size, and which race entrants fit."""

from __future__ import annotations

from dataclasses import dataclass

from converter import memory


@dataclass
class _Cand:
    name: str
    size_bytes: int
    verdict: str = "fidelity ok"


def test_default_limit_is_the_smaller_of_the_cap_and_half_the_available_memory(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    avail = memory.available_bytes()
    expected = (
        memory.DEFAULT_LIMIT_MB if avail is None else min(memory.DEFAULT_LIMIT_MB, avail // 2 // memory.MB)
    )
    assert memory.default_limit_mb() == max(memory.MIN_LIMIT_MB, expected)
    monkeypatch.setattr(memory, "resident_bytes", lambda: 150 * memory.MB)  # a fresh edge-convert
    assert memory.MemoryLimit.of(None).limit == memory.default_limit_mb() * memory.MB
    assert memory.MemoryLimit.of(700).limit == 700 * memory.MB


def test_a_caller_s_own_memory_does_not_starve_the_default_limit(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Called as a library from a process that already holds 2.25 GB (a test worker with torch and
    jax loaded once left a conversion room for one calibration sample), the conversion still gets
    its own allowance; an explicit --max-memory stays the whole process's cap."""
    held = (memory.FRESH_PROCESS_MB + 2000) * memory.MB
    monkeypatch.setattr(memory, "resident_bytes", lambda: held)
    limit = memory.MemoryLimit.of(None)
    assert limit.limit == memory.default_limit_mb() * memory.MB + 2000 * memory.MB
    assert limit.room() == (memory.default_limit_mb() - memory.FRESH_PROCESS_MB) * memory.MB
    assert memory.MemoryLimit.of(700).room() == 0


def test_chunks_stay_under_the_limit_and_an_oversized_tensor_stands_alone() -> None:
    sizes = {"a": 40, "b": 40, "c": 40, "big": 500}
    groups = memory.chunks_within(sizes, ["a", "b", "big", "c", "unknown"], 100, fallback=30)
    assert groups == [["a", "b"], ["big"], ["c", "unknown"]]


def test_race_keeps_the_source_graph_then_the_smallest_that_fit() -> None:
    mb = memory.MB
    limit = memory.MemoryLimit(
        memory.resident_bytes() + 200 * mb, session_bytes=40 * mb, source_bytes=10 * mb
    )
    # activations 20 MB per session; two source sessions (2 x 40 MB) are set aside first: 120 MB left
    cands = [
        _Cand("fp32", 10 * mb),  # 40 MB
        _Cand("source-graph", 10 * mb),  # 40 MB
        _Cand("int8", 3 * mb),  # 26 MB
        _Cand("weight-only", 4 * mb),  # 28 MB
    ]
    with memory.limited(limit):
        raced, left = memory.fit_race(cands, "source-graph")
    assert [c.name for c in raced] == ["source-graph", "int8", "weight-only"]
    assert [c.name for c in left] == ["fp32"]


def test_without_a_measured_session_everything_races() -> None:
    cands = [_Cand("a", 10**9), _Cand("b", 10**9)]
    with memory.limited(memory.MemoryLimit(memory.MIN_LIMIT_MB * memory.MB)):
        assert memory.fit_race(cands, "a") == (cands, [])
