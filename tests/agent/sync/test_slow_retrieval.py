"""Slow retrieval (a python-tuf attack class): a server that trickles a bundle cannot hold an update
forever; the download is abandoned below a minimum rate and resumes from the kept prefix."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.sync.download import BundleDownloader, DownloadError
from tests.agent.sync.support import BundleServer

TOKEN = "t0k"


def test_a_trickling_server_is_abandoned_and_the_prefix_kept(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    data = bytes(range(256)) * 64  # 16 KiB
    (tmp_path / "root" / "b.efb").write_bytes(data)
    with BundleServer(tmp_path / "root", TOKEN) as server:
        server.throttle = (64, 0.05)  # about 1.3 KB/s
        slow = BundleDownloader(server.url, TOKEN, min_rate_bytes_s=8000, rate_window_s=0.5)
        dest = tmp_path / "dl" / "b.efb"
        with pytest.raises(DownloadError, match="too slow"):
            slow.fetch("/bundles/b.efb", dest, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        slow.close()
        kept = dest.with_name("b.efb.part").stat().st_size
        assert 0 < kept < len(data)

        server.throttle = None  # a fast server: the download resumes and verifies
        fast = BundleDownloader(server.url, TOKEN, min_rate_bytes_s=8000, rate_window_s=0.5)
        result = fast.fetch("/bundles/b.efb", dest, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        fast.close()
    assert result.resumed_from == kept and dest.read_bytes() == data
