"""The docs console works offline: Debian's headless Chromium opens /docs and creates a VM through it.

The browser runs with its network features off and a fresh profile; every request it makes is
recorded, and all of them must go to the broker itself (no CDN).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.store.migrate import upgrade

from ..conftest import RunningServer, make_app
from .helpers import ok

CHROMIUM = Path(os.environ.get("GMEM_BROKER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no Chromium at {CHROMIUM}: install Debian's `chromium` package (.ci/run does) for this test",
)


TOKEN = "docs-console-writer-0123456789"
Broker = tuple[str, str | None]  # its URL, and the token the console needs (None: no tokens configured)


@pytest.fixture(scope="module", params=["open", "tokens"])
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The broker as on loopback without tokens, and with a write token the console must be given."""
    url = f"sqlite:///{tmp_path_factory.mktemp('docs') / 'broker.db'}"
    upgrade(url)
    token = TOKEN if request.param == "tokens" else None
    app = make_app(url, tokens=f"{TOKEN} write") if token else make_app(url)
    with RunningServer(app) as running:
        yield running.url, token


def test_swagger_ui_renders_every_tag_and_creates_a_vm(broker: Broker, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    broker_url, token = broker
    schema = ok(httpx.get(f"{broker_url}/openapi.json"))
    tags = {tag for item in schema["paths"].values() for op in item.values() for tag in op.get("tags", [])}
    name = f"vm-browser-{uuid.uuid4().hex[:8]}"
    requested: list[str] = []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = context.new_page()
            page.on("request", lambda r: requested.append(r.url))
            page.goto(f"{broker_url}/docs")
            page.wait_for_selector(".swagger-ui .opblock-tag", timeout=30_000)
            shown = set(page.locator(".opblock-tag").evaluate_all("els => els.map(e => e.dataset.tag)"))
            assert shown == tags
            if token is not None:
                page.locator(".auth-wrapper button.authorize").click()
                page.locator(".auth-container input").first.fill(token)
                page.locator(".auth-btn-wrapper button.authorize").click()
                page.locator(".auth-btn-wrapper button.btn-done").click()

            block = page.locator("#operations-vms-create_vm")
            block.locator(".opblock-summary").click()
            block.locator("button.try-out__btn").click()
            block.locator("textarea.body-param__text").fill(json.dumps({"name": name, "vm_type": "sw_protected"}))
            block.locator("button.execute").click()
            status = block.locator(".live-responses-table .response .response-col_status").first
            status.wait_for(timeout=30_000)
            assert status.inner_text().strip() == "201"
        finally:
            context.close()
    assert requested, "the browser made no request"
    assert all(url.startswith(broker_url) for url in requested), [u for u in requested if not u.startswith(broker_url)]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    assert name in {vm["name"] for vm in ok(httpx.get(f"{broker_url}/v1/vms", headers=headers))["items"]}


def test_redoc_and_the_assets_are_served_by_the_broker(broker: Broker) -> None:
    broker_url, _ = broker
    redoc = httpx.get(f"{broker_url}/redoc")
    assert redoc.status_code == 200
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        resp = httpx.get(f"{broker_url}/static-offline-docs/{asset}")
        assert resp.status_code == 200, asset
        assert len(resp.content) > 100_000, asset
    docs = httpx.get(f"{broker_url}/docs").text
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs
    assert "cdn" not in docs.lower()
    assert "cdn" not in redoc.text.lower()
