"""The dashboard in a real headless Chromium, against a real fleet server on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import auth
from fleet.ingest import Ingest
from sdk import keys
from sdk.messages import ReportedModel, ReportedState, Status
from sdk.topics import topic
from tests.fleet import dashboard_fixtures
from tests.fleet.conftest import LiveFleet, Published
from tests.fleet.dashboard_fixtures import DashboardFleet
from tests.fleet.live_server import fleet_in_thread
from tests.support.browser import launch, needs_chromium, only_origin

pytestmark = needs_chromium


def test_dashboard_shows_devices_rollouts_and_health(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with fleet_in_thread(tmp_path) as (app, base):
        ctx = app.state.fleet
        settings = ctx.settings
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
            browser = launch(p)
            page = browser.new_page()
            page.goto(f"{base}/")
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


@pytest.fixture
def dashboard_fleet(tmp_path: Path, signing_key: keys.Ed25519PrivateKey) -> Iterator[DashboardFleet]:
    published = Published()
    # the fixture drives the controller pass by pass
    with fleet_in_thread(tmp_path, published, trust_keys=[tmp_path / "keys" / "signing.pub"]) as (app, url):
        ctx = app.state.fleet
        with ctx.db.session() as s:
            token = auth.create_token(s, "admin", name="dashboard test")
        yield dashboard_fixtures.build(LiveFleet(url, ctx, token, signing_key, tmp_path), published)


def test_dashboard_pages_for_devices_rollouts_and_bundles(
    dashboard_fleet: DashboardFleet, tmp_path: Path
) -> None:
    """Overview, device page (charts, events), rollout pages (waves, allowed actions) in Chromium:
    no console error, no request to another host; screenshots under tmp_path."""
    from playwright.sync_api import ConsoleMessage, sync_playwright

    fleet, base = dashboard_fleet, dashboard_fleet.live.url
    errors: list[str] = []
    elsewhere: list[str] = []

    def console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", console)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("dialog", lambda dialog: dialog.accept())
        page.route("**/*", only_origin(base, elsewhere))

        # the link `make demo` prints: the token travels in the fragment and leaves the address bar
        page.goto(f"{base}/#token={fleet.live.admin_token}")
        page.wait_for_selector("tr[data-device='pi-1']")
        assert "token" not in page.url
        done = page.locator(f"tr[data-rollout='{fleet.succeeded}']")
        assert "done: 2 succeeded, 1 skipped" in done.inner_text()
        assert done.locator("button").all_inner_texts() == ["rollback"]  # nothing to pause or resume
        paused = page.locator(f"tr[data-rollout='{fleet.paused}']")
        assert paused.locator("button").all_inner_texts() == ["resume", "rollback"]
        bundle = page.locator("#bundles tbody tr").filter(has_text="1.0.0").inner_text()
        assert "2.3 MiB → 595.7 KiB" in bundle and "0.310 ms → 0.120 ms" in bundle, bundle
        assert "argmax agreement 99.5%" in bundle and "top1 0.955 → 0.957" in bundle, bundle
        page.screenshot(path=tmp_path / "overview.png", full_page=True)

        page.click("tr[data-device='cam-1'] a")
        page.wait_for_selector("#view[data-page='device'] #charts")
        assert page.locator("#page-title").inner_text() == "Device cam-1"
        facts = page.locator(".facts").inner_text()
        assert "online" in facts and "x86-server" in facts and "site=lab" in facts and "tiny 1.0.0" in facts
        charts = page.locator("#charts figure")
        assert charts.count() == 6
        for name in ("CPU", "Memory", "Temperature", "Requests", "Latency", "Drift"):
            chart = page.locator(f"figure[data-chart='{name}']")
            assert chart.locator("path.line").count() >= 1, name
        # the last of the 30 samples: p50 1 + 0.1 * 29, p99 3 + 0.2 * 29, drift 0.29
        latency = page.locator("figure[data-chart='Latency'] figcaption").inner_text()
        assert "p50 3.90" in latency and "p99 8.80" in latency, latency
        assert "PSI 0.290" in page.locator("figure[data-chart='Drift'] figcaption").inner_text()
        events = page.locator("#events tbody").inner_text()
        assert "activate" in events and "smoke test passed" in events
        page.screenshot(path=tmp_path / "device.png", full_page=True)

        page.goto(f"{base}/#/rollouts/{fleet.succeeded}")
        page.wait_for_selector("#view[data-page='rollout'] section[data-wave='1']")
        assert page.locator("section[data-wave]").count() == 2
        canary = page.locator("section[data-wave='0']").inner_text()
        assert "1 of 1 succeeded" in canary
        assert page.locator("#rollout-actions button").all_inner_texts() == ["rollback"]
        page.screenshot(path=tmp_path / "rollout-succeeded.png", full_page=True)

        page.goto(f"{base}/#/rollouts/{fleet.paused}")
        page.wait_for_selector("#rollout-actions button[data-action='resume']")
        page.click("#rollout-actions button[data-action='resume']")
        page.wait_for_selector("#rollout-actions button[data-action='pause']")
        assert page.locator("#rollout-actions button").all_inner_texts() == ["pause", "rollback"]
        assert fleet.state(fleet.paused)["state"] == "running"
        page.screenshot(path=tmp_path / "rollout-running.png", full_page=True)
        browser.close()
    assert errors == []
    assert elsewhere == []
    assert all((tmp_path / f"{n}.png").stat().st_size > 10_000 for n in ("overview", "device"))
