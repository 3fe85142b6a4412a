"""The dashboard in a real headless Chromium, against a real fleet server on loopback."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fleet import auth
from fleet.app import create_app
from fleet.ingest import Ingest
from fleet.settings import FleetSettings
from sdk.messages import ReportedModel, ReportedState, Status
from sdk.topics import topic
from tests.fleet.live_server import serve_in_thread
from tests.support.mosquitto import free_port

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed"),
]


def test_dashboard_shows_devices_rollouts_and_health(tmp_path: Path) -> None:
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
        from fleet import devices
        from fleet.schemas import DeviceCreate

        with ctx.db.session() as s:
            devices.register(
                s, DeviceCreate(device_id="cam-1", labels={"site": "<b>lab</b>"}), settings, ctx.accounts
            )
            devices.register(s, DeviceCreate(device_id="cam-2"), settings, ctx.accounts)
            s.flush()
            devices.get(s, "cam-2").desired_revision = 3  # a device reports only revisions it was issued
        Ingest(ctx.db, None, ctx.metrics).process(
            [  # type: ignore[arg-type]
                (topic("status", "cam-2"), Status(state="online").to_bytes(), time.time()),
                (
                    topic("reported", "cam-2"),
                    ReportedState(
                        revision=3,
                        agent_version="t",
                        last_error="disk full",
                        models=[ReportedModel(name="net", version="1.2.0", state="active")],
                    ).to_bytes(),
                    time.time(),
                ),
            ]
        )
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            assert "enter an API token" in page.locator("#status").inner_text()
            page.fill("#token", token)
            page.click("#login button")
            page.wait_for_selector("tr[data-device='cam-2']")
            row = page.locator("tr[data-device='cam-2']").inner_text()
            assert "online" in row and "net 1.2.0 (active)" in row and "disk full" in row and "r3" in row
            # user data is shown as text, never run as HTML
            assert page.locator("tr[data-device='cam-1'] td").nth(3).inner_text() == "site=<b>lab</b>"
            assert page.locator("#devices b").count() == 0
            assert page.locator("#summary [data-metric='online'] dd").inner_text() == "1"
            assert page.locator("#summary [data-metric='devices'] dd").inner_text() == "2"
            page.fill("#token", "ef_bad_token")
            page.click("#login button")
            page.wait_for_function("document.querySelector('#status').textContent.includes('invalid')")
            browser.close()
