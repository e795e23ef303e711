"""
The web console in a real headless Chromium (Debian's, driven by Playwright)
against a real gateway process fed with real GoSafe frames from the vectors.

Set C{TRACKPORT_SCREENSHOTS=DIR} to keep a screenshot of each main page there
(docs/console/ holds the ones the documentation shows).
"""

import json
import os
import shutil
import socket
import time

import pytest

from tests.conftest import Gateway, free_port
from tests.harness import frame_of

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = os.environ.get("TRACKPORT_SCREENSHOTS")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

#: Real frames: three GoSafe devices (shared vectors; sources there).
FRAMES = {"351535058709775": frame_of("gosafe-003"), "356449068350122": frame_of("gosafe-008"),
          "359568052580548": frame_of("gosafe-010")}


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    workdir = tmp_path_factory.mktemp("console")
    http = free_port()
    g = Gateway(f"sqlite:///{workdir / 'trackport.db'}", str(workdir),
                args=["--http", f"127.0.0.1:{http}", "--map-tiles", ""]).start()
    tokens = {"ops": g.cli("token", "create", "ops").stdout.strip(),
              "viewer": g.cli("token", "create", "viewer", "--read-only").stdout.strip()}
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield {"gateway": g, "url": f"http://127.0.0.1:{http}", "tokens": tokens, "browser": browser}
        browser.close()
    g.stop()


class Page:
    """
    A browser page logged in with a token, collecting console errors.
    """

    def __init__(self, console, token="ops"):
        self.console = console
        self.page = console["browser"].new_page(viewport={"width": 1400, "height": 900})
        self.errors = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(f"{console['url']}/#token={console['tokens'][token]}")
        self.page.wait_for_selector("#who:has-text('" + token + "')", timeout=10000)

    def shot(self, name):
        if SHOTS:
            os.makedirs(SHOTS, exist_ok=True)
            self.page.screenshot(path=os.path.join(SHOTS, f"{name}.png"))

    def close(self):
        self.page.close()
        assert self.errors == []


def device_socket(console, device_id):
    s = socket.create_connection(("127.0.0.1", console["gateway"].port), timeout=20)
    s.sendall(FRAMES[device_id])
    assert s.recv(4) == b"1234"
    return s


def test_a_device_appears_on_the_map_and_the_list_within_two_seconds(console):
    page = Page(console)
    page.page.wait_for_selector("#device-list")
    device = "351535058709775"
    s = device_socket(console, device)
    sent = time.monotonic()
    page.page.wait_for_selector(f"tr[data-device='{device}']", timeout=2000)
    page.page.wait_for_function("document.querySelectorAll('#fleet-map path.leaflet-interactive').length >= 1",
                                timeout=2000)
    assert time.monotonic() - sent < 2.0
    row = page.page.inner_text(f"tr[data-device='{device}']")
    assert "gosafe" in row and "tcp" in row
    page.page.fill("#search", "nothing-matches")
    assert page.page.locator("tr[data-device]").count() == 0
    page.page.fill("#search", "")
    for other in ("356449068350122", "359568052580548"):
        device_socket(console, other).close()
    page.page.wait_for_selector("tr[data-device='359568052580548']", timeout=5000)
    page.page.evaluate("window.scrollTo(0, 0)")
    page.shot("fleet")
    s.close()
    page.close()


def test_device_page_shows_its_records_and_engine_stop_needs_confirmation(console):
    device = "359568052580548"
    s = device_socket(console, device)
    page = Page(console)
    page.page.goto(f"{console['url']}/#/device/{device}")
    page.page.wait_for_selector("#records tr", timeout=10000)
    assert page.page.locator("#records tr").count() >= 2
    assert "tcp" in page.page.inner_text("#sessions")
    page.page.select_option("#command-type", "engine_stop")
    page.page.click("#command-send")
    assert "confirm" in page.page.inner_text("#command-message")
    assert page.page.locator("#commands tr").count() == 0
    page.page.fill("#command-confirm", device)
    page.page.click("#command-send")
    page.page.wait_for_selector("#commands tr[data-command] .command-status", timeout=10000)
    # The device is connected: the stop is written to it and shows as sent.
    page.page.wait_for_function(
        "[...document.querySelectorAll('#commands .command-status')].some(e => e.textContent === 'sent')",
        timeout=10000)
    s.settimeout(10)
    assert s.recv(100).startswith(b"*GS")
    page.page.evaluate("window.scrollTo(0, 0)")
    page.shot("device")
    s.close()
    page.close()


def test_raw_traffic_pane_shows_both_directions(console):
    device = "356449068350122"
    page = Page(console)
    page.page.goto(f"{console['url']}/#/device/{device}")
    page.page.wait_for_selector("#raw", state="attached", timeout=10000)
    time.sleep(0.5)  # the raw feed's WebSocket opens
    s = device_socket(console, device)
    page.page.wait_for_selector("#raw .in .decoded", timeout=10000)
    page.page.wait_for_selector("#raw .out", timeout=10000)
    assert "decoded: gosafe, 1 records" in page.page.inner_text("#raw .in .decoded")
    s.close()
    page.close()


def test_unknown_traffic_page_decodes_a_pasted_frame(console):
    s = socket.create_connection(("127.0.0.1", console["gateway"].port), timeout=20)
    s.sendall(b"\x01\x02 no decoder knows this\r\n" * 400)
    assert s.recv(10) == b""
    s.close()
    page = Page(console)
    page.page.goto(f"{console['url']}/#/unknown")
    page.page.wait_for_selector(".unknown-sample pre", timeout=10000)
    assert ".. no decoder kn" in page.page.inner_text(".unknown-sample pre")
    page.page.fill("#decode-input", FRAMES["351535058709775"].hex())
    page.page.click("#decode-run")
    page.page.wait_for_function("document.querySelector('#decode-output').textContent.includes('gosafe')",
                                timeout=10000)
    result = json.loads(page.page.inner_text("#decode-output"))
    assert result["protocol"] == "gosafe" and result["device_id"] == "351535058709775"
    page.shot("unknown")
    page.close()


def test_health_page_reads_the_metrics(console):
    page = Page(console)
    page.page.goto(f"{console['url']}/#/health")
    page.page.wait_for_selector("#database .value", timeout=10000)
    assert page.page.inner_text("#database .value") == "up"
    page.page.wait_for_function("!document.querySelector('#records-rate .value').textContent.includes('…')",
                                timeout=10000)
    page.shot("health")
    page.close()


def test_read_only_token_sees_no_command_controls(console):
    page = Page(console, "viewer")
    page.page.goto(f"{console['url']}/#/device/351535058709775")
    page.page.wait_for_selector("#records", state="attached", timeout=10000)
    page.page.wait_for_selector("#device-info p", timeout=10000)
    assert page.page.locator("#command-send").count() == 0
    assert page.page.locator("#command-type").count() == 0
    page.close()


def test_a_refused_token_shows_the_login(console):
    page = console["browser"].new_page()
    page.goto(f"{console['url']}/#token=tp_wrong")
    page.wait_for_selector("#login:not([hidden])", timeout=10000)
    assert "refused" in page.inner_text("#login-error")
    page.close()
