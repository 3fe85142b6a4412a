"""``/docs`` works with no internet: the page and every asset it references come from the fleet."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urljoin

from tests.fleet.conftest import Fleet
from tests.fleet.live_server import fleet_in_thread
from tests.support.browser import browser_test, launch, only_origin


def test_docs_page_and_its_assets_come_from_the_fleet(fleet: Fleet) -> None:
    page = fleet.client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert not re.search(r"(?i)(https?:)?//[a-z0-9]", page.text), "the page names another host"
    assert '"validatorUrl": null' in page.text  # no spec URL sent to validator.swagger.io
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
    kinds = {}
    for ref in refs:
        r = fleet.client.get(urljoin("http://testserver/docs", ref))
        assert r.status_code == 200 and len(r.content) > 100, ref
        kinds[ref.rsplit(".", 1)[-1]] = r.headers["content-type"]
    assert kinds["js"].startswith("text/javascript") and kinds["css"].startswith("text/css")
    assert kinds["png"] == "image/png" and kinds["json"] == "application/json"
    assert b"SwaggerUIBundle" in fleet.client.get("/docs/assets/swagger-ui-bundle.js").content
    assert fleet.client.get("/docs/assets/index.html").status_code == 404
    assert fleet.client.get("/docs/oauth2-redirect").status_code == 200
    assert fleet.client.get("/redoc").status_code == 404  # ReDoc would load from a CDN


@browser_test
def test_docs_render_in_a_browser_that_can_reach_only_the_fleet(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    elsewhere: list[str] = []
    with fleet_in_thread(tmp_path) as (_app, base), sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        page.route("**/*", only_origin(base, elsewhere))
        page.goto(f"{base}/docs")
        page.wait_for_selector(".opblock-summary-path[data-path='/api/v1/devices']", timeout=20000)
        assert page.locator(".opblock").count() >= 10
        assert "edge-fleet" in page.locator(".info .title").inner_text()
        browser.close()
    assert elsewhere == []
