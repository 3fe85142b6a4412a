"""The dashboard's alerts section in a real headless Chromium, against a real fleet on loopback."""

from __future__ import annotations

import time
from pathlib import Path

from fleet import auth, devices
from fleet.alerts.rules import Limits
from fleet.ingest import Ingest
from fleet.schemas import DeviceCreate
from tests.fleet.live_server import fleet_in_thread
from tests.fleet.monitoring import Sender
from tests.support.browser import launch, needs_chromium

pytestmark = needs_chromium


def test_open_alerts_are_listed_as_text(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with fleet_in_thread(tmp_path) as (app, base):
        ctx = app.state.fleet
        settings = ctx.settings
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
            browser = launch(p)
            page = browser.new_page()
            page.goto(f"{base}/")
            page.fill("#token", token)
            page.click("#login button")
            page.wait_for_selector("#alerts tr.alert-firing")
            row = page.locator("#alerts tr.alert-firing").inner_text()
            assert "drift" in row and "cam-1" in row and "tiny" in row and "<b>x</b>" in row
            assert page.locator("#alerts b").count() == 0
            browser.close()
