"""Bundle downloads against a real HTTP server on loopback: resume, size cap, sha256, token scope."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sync.download import BundleDownloader, DownloadError
from sdk.errors import AuthError, BundleTooLargeError, IntegrityError, ModelStoreError
from tests.agent.sync.support import BundleServer
from tests.support.disk import small_tmpfs

TOKEN = "tok"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BundleServer]:
    root = tmp_path / "served"
    root.mkdir()
    (root / "b.efb").write_bytes(bytes(range(256)) * 4000)  # ~1 MB
    with BundleServer(root, TOKEN) as s:
        yield s


def _expect(server: BundleServer) -> tuple[int, str]:
    data = (server.root / "b.efb").read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def test_cut_download_resumes_with_range(server: BundleServer, tmp_path: Path) -> None:
    size, sha = _expect(server)
    server.cut_after["b.efb"] = 300_000
    dest = tmp_path / "dl" / "b.efb"
    downloader = BundleDownloader(server.url, TOKEN)

    with pytest.raises(DownloadError):
        downloader.fetch("/bundles/b.efb", dest, size=size, sha256=sha)
    part = dest.with_name("b.efb.part")
    assert part.stat().st_size == 300_000 and not dest.exists()

    result = downloader.fetch("/bundles/b.efb", dest, size=size, sha256=sha)
    assert result.resumed_from == 300_000
    assert server.requests[-1][1]["Range"] == "bytes=300000-"
    assert dest.read_bytes() == (server.root / "b.efb").read_bytes()
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(server: BundleServer, tmp_path: Path) -> None:
    size, sha = _expect(server)
    dest = tmp_path / "b.efb"
    dest.with_name("b.efb.part").write_bytes(b"\xff" * 1000)  # a prefix the server will not continue
    server.ignore_range = True
    BundleDownloader(server.url, TOKEN).fetch("/bundles/b.efb", dest, size=size, sha256=sha)
    assert dest.read_bytes() == (server.root / "b.efb").read_bytes()


def test_damaged_prefix_is_downloaded_again_once(server: BundleServer, tmp_path: Path) -> None:
    size, sha = _expect(server)
    dest = tmp_path / "b.efb"
    dest.with_name("b.efb.part").write_bytes(b"\x00" * 1000)  # zeros after a power cut
    result = BundleDownloader(server.url, TOKEN).fetch("/bundles/b.efb", dest, size=size, sha256=sha)
    assert result.resumed_from == 0
    assert dest.read_bytes() == (server.root / "b.efb").read_bytes()


def test_size_cap_rejects_a_bigger_file_before_reading_it(server: BundleServer, tmp_path: Path) -> None:
    _, sha = _expect(server)
    dest = tmp_path / "b.efb"
    with pytest.raises(BundleTooLargeError, match="allows 1000"):
        BundleDownloader(server.url, TOKEN).fetch("/bundles/b.efb", dest, size=1000, sha256=sha)
    assert not dest.exists() and not dest.with_name("b.efb.part").exists()


def test_hash_mismatch_is_rejected_and_nothing_kept(server: BundleServer, tmp_path: Path) -> None:
    size, _ = _expect(server)
    dest = tmp_path / "b.efb"
    with pytest.raises(IntegrityError, match="does not match"):
        BundleDownloader(server.url, TOKEN).fetch("/bundles/b.efb", dest, size=size, sha256="0" * 64)
    assert not dest.exists() and not dest.with_name("b.efb.part").exists()


def test_wrong_token_is_an_auth_error(server: BundleServer, tmp_path: Path) -> None:
    size, sha = _expect(server)
    with pytest.raises(AuthError, match="401"):
        BundleDownloader(server.url, "wrong").fetch(
            "/bundles/b.efb", tmp_path / "b.efb", size=size, sha256=sha
        )


def test_token_goes_only_to_the_fleet_origin(server: BundleServer, tmp_path: Path) -> None:
    size, sha = _expect(server)
    other = server.url.replace("127.0.0.1", "localhost")  # same server, another origin
    with pytest.raises(AuthError):
        BundleDownloader(server.url, TOKEN).fetch(
            f"{other}/bundles/b.efb", tmp_path / "b.efb", size=size, sha256=sha
        )
    assert "Authorization" not in server.requests[-1][1]


def test_relative_and_absolute_urls_resolve_against_the_fleet() -> None:
    d = BundleDownloader("http://fleet:8800/", TOKEN)
    assert d.resolve("/api/v1/bundles/x/download") == "http://fleet:8800/api/v1/bundles/x/download"
    assert d.resolve("https://s3.example/b.efb") == "https://s3.example/b.efb"
    d.close()


def test_a_complete_earlier_download_is_reused_and_a_damaged_one_replaced(
    server: BundleServer, tmp_path: Path
) -> None:
    size, sha = _expect(server)
    dest = tmp_path / "b.efb"
    dest.write_bytes((server.root / "b.efb").read_bytes())
    requests = len(server.requests)
    assert (
        BundleDownloader(server.url, TOKEN).fetch("/bundles/b.efb", dest, size=size, sha256=sha).resumed_from
        == size
    )
    assert len(server.requests) == requests

    dest.write_bytes(b"damaged")
    BundleDownloader(server.url, TOKEN).fetch("/bundles/b.efb", dest, size=size, sha256=sha)
    assert dest.read_bytes() == (server.root / "b.efb").read_bytes()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs: smaller than the ~1 MB bundle (needs root and mount; skipped with the reason)."""
    with small_tmpfs(tmp_path / "tiny", "512k") as mount_point:
        yield mount_point


def test_a_bundle_the_disk_cannot_hold_is_refused_before_a_byte_is_written(
    server: BundleServer, tiny_disk: Path
) -> None:
    size, sha = _expect(server)
    dest = tiny_disk / "dl" / "b.efb"
    with pytest.raises(ModelStoreError, match="no room on disk"):
        BundleDownloader(server.url, TOKEN).fetch("/bundles/b.efb", dest, size=size, sha256=sha)
    assert list(dest.parent.iterdir()) == []


def test_a_disk_that_fills_during_the_download_fails_it_and_frees_the_part(
    server: BundleServer, tiny_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    # The room was there when the download began; something else took it meanwhile.
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(1 << 30, 0, 1 << 30))
    size, sha = _expect(server)
    dest = tiny_disk / "dl" / "b.efb"
    with pytest.raises(ModelStoreError, match="no room on disk"):
        BundleDownloader(server.url, TOKEN).fetch("/bundles/b.efb", dest, size=size, sha256=sha)
    assert list(dest.parent.iterdir()) == []
