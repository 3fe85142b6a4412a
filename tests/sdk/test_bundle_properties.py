"""Property tests: damaged bundles are rejected, or what verifies is exactly the original content."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdk import keys
from sdk.bundle import extract_bundle, write_bundle
from sdk.errors import BundleError
from tests.sdk.conftest import make_manifest

_KEY = keys.generate_key()
_WORK = Path(tempfile.mkdtemp(prefix="efb-prop-"))
_MODEL = bytes((i * 7 + 3) % 251 for i in range(20_000))
(_WORK / "model.onnx").write_bytes(_MODEL)
_BUNDLE = write_bundle(
    make_manifest(), {"model.onnx": _WORK / "model.onnx"}, _KEY, _WORK / "out"
).read_bytes()
_ORIGINAL_MANIFEST = None


def _check(data: bytes) -> None:
    """Either a BundleError, or the unpacked content equals what was signed; never a write outside."""
    work = Path(tempfile.mkdtemp(dir=_WORK))
    try:
        path = work / "b.efb"
        path.write_bytes(data)
        dest = work / "dest"
        try:
            result = extract_bundle(path, dest, [_KEY.public_key()])
        except BundleError:
            assert not dest.exists()
        else:
            assert (dest / "model.onnx").read_bytes() == _MODEL
            assert result.manifest.name == "net"
            assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", "manifest.sig", "model.onnx"]
        assert sorted(p.name for p in work.iterdir()) in (["b.efb"], ["b.efb", "dest"])
    finally:
        shutil.rmtree(work)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_BUNDLE) - 1), st.integers(1, 255)), min_size=1, max_size=4))
def test_flipped_bytes(flips):
    data = bytearray(_BUNDLE)
    for pos, xor in flips:
        data[pos] ^= xor
    _check(bytes(data))


@settings(max_examples=80, deadline=None)
@given(st.integers(0, len(_BUNDLE) - 1))
def test_truncated(cut):
    _check(_BUNDLE[:cut])


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=0, max_size=4096))
def test_appended_garbage(tail):
    _check(_BUNDLE + tail)
