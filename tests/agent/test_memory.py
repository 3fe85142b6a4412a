"""agent.memory: freed heap memory goes back to the operating system (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes
import logging

import pytest

from agent.memory import release_freed_memory, resident_mib


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).malloc_trim  # noqa: B018 - the lookup is the check
    except (AttributeError, OSError):
        return False
    return resident_mib() is not None


@pytest.mark.skipif(not _glibc(), reason="needs glibc's malloc_trim and /proc")
def test_freed_heap_memory_is_given_back(caplog: pytest.LogCaptureFixture) -> None:
    # 160 MiB in 64 KiB blocks (below glibc's mmap threshold: they live on the heap), and one block
    # allocated after them, so that freeing them leaves a hole glibc keeps instead of shrinking
    # the heap from the top, as session builds do.
    blocks = [bytearray(64 * 1024) for _ in range(2560)]
    pin = bytearray(64 * 1024)
    del blocks
    before = resident_mib()
    assert before is not None
    with caplog.at_level(logging.INFO, logger="agent.memory"):
        assert release_freed_memory("a test")
    after = resident_mib()
    assert after is not None
    assert before - after > 100, f"resident {before:.0f} -> {after:.0f} MiB"
    assert "gave back" in caplog.text and "after a test" in caplog.text
    del pin


def test_without_malloc_trim_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.memory as memory

    monkeypatch.setattr(memory, "_looked_up", True)
    monkeypatch.setattr(memory, "_trim", None)
    assert release_freed_memory("a test") is False
