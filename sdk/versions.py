"""The order of a model's versions, which downgrade protection relies on.

The rule, in full: two versions that both parse as PEP 440 versions (``1.9 < 1.10``,
``2.0rc1 < 2.0 < 2.0.post1``; a leading ``v`` is allowed) are ordered as PEP 440 orders them.
If either does not parse (``nightly-a``), the bundles are ordered by their manifests' ``created``
times instead (ISO 8601, as the converter writes them). Versions that compare equal by the rule
in force are not older than each other.
"""

from __future__ import annotations

from datetime import datetime, timezone

from packaging.version import InvalidVersion, Version


def _pep440(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _time(created: str | None) -> datetime | None:
    if not created:
        return None
    try:
        parsed = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def is_older(version: str, created: str | None, than_version: str, than_created: str | None) -> bool:
    """Whether ``version`` (made at ``created``) comes before ``than_version`` by the rule above."""
    a, b = _pep440(version), _pep440(than_version)
    if a is not None and b is not None:
        return a < b
    ta, tb = _time(created), _time(than_created)
    return ta is not None and tb is not None and ta < tb
