"""The dashboard's alerts section in a real headless Chromium, against a real fleet on loopback."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fleet import auth, devices
from fleet.alerts.rules import Limits
from fleet.app import create_app
from fleet.ingest import Ingest
from fleet.schemas import DeviceCreate
from fleet.settings import FleetSettings
from tests.fleet.live_server import serve_in_thread
from tests.fleet.monitoring import Sender
from tests.support.mosquitto import free_port

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed"),
]


def test_open_alerts_are_listed_as_text(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    settings = FleetSettings(
        db_url=f"sqlite:///{tmp_path / 'f.db'}",
        storage=str(tmp_path / "s"),
        listen_port=port,
        controller_interval_s=0,
    )
    app = create_app(settings, publisher=lambda *_: None)
    with serve_in_thread(app, port):
        ctx = app.state.fleet
        with ctx.db.session() as s:
            token = auth.create_token(s, "viewer")
            devices.register(s, DeviceCreate(device_id="cam-1", profile="x86-server"), settings, ctx.accounts)
        sender = Sender("cam-1")
        # the tensor name is the device's text: it must show as text, never run as HTML
        windows = [sender.window(psi=0.9, tensor="<b>x</b>") for _ in range(2)]
        Ingest(ctx.db, None, ctx.metrics, alert_limits=Limits.defaults(settings)).process(  # type: ignore[arg-type]
            [(t, p, time.time()) for t, p in windows]
        )
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#token", token)
            page.click("#login button")
            page.wait_for_selector("#alerts tr.alert-firing")
            row = page.locator("#alerts tr.alert-firing").inner_text()
            assert "drift" in row and "cam-1" in row and "tiny" in row and "<b>x</b>" in row
            assert page.locator("#alerts b").count() == 0
            browser.close()
