"""The version order downgrade protection relies on (sdk.versions)."""

from __future__ import annotations

import pytest

from sdk.versions import is_older


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.9", "1.10"),
        ("1.0.0", "2.0.0"),
        ("2.0rc1", "2.0"),
        ("2.0", "2.0.post1"),
        ("v1.2", "1.3"),
        ("1", "1.0.1"),
    ],
)
def test_pep440_versions_are_ordered_by_pep440(older: str, newer: str) -> None:
    # created times that disagree do not matter when both versions are PEP 440
    assert is_older(older, "2030-01-01T00:00:00+00:00", newer, "2020-01-01T00:00:00+00:00")
    assert not is_older(newer, None, older, None)


def test_equal_versions_are_not_older() -> None:
    assert not is_older("1.0", None, "1.0.0", None)


def test_other_versions_are_ordered_by_created_time() -> None:
    assert is_older("nightly-b", "2026-01-01T00:00:00+00:00", "nightly-a", "2026-01-02T00:00:00Z")
    assert not is_older("nightly-a", "2026-01-02T00:00:00+00:00", "nightly-b", "2026-01-01T00:00:00+00:00")
    assert not is_older("nightly-a", None, "nightly-b", "2026-01-01T00:00:00+00:00")  # unknown: not older
