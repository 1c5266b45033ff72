"""GET /dashboard in a real headless Chromium against the real proxy (auth on) and a real llama-server:
the page asks for the token, then shows live figures after a request goes through the proxy.
The screenshot is saved under artifacts/ (gitignored) and its path printed."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llamafleet.bench.rig import start_proxy
from llamafleet.rig import servers

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
TOKEN = "dashboard-test-token-5f2c"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def proxy(smollm2_server, log_dir, tmp_path_factory):
    """The proxy with auth, SmolLM2 as target and as drafter (so the proxy path drafts and accepts)."""
    props = json.load(urllib.request.urlopen(f"{smollm2_server.url}/props"))
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)  # the proxy reads secrets only from files only their owner can read
    config = {
        "listen": {"host": "127.0.0.1", "port": servers.free_port()},
        "target": {"name": "smollm2", "url": smollm2_server.url, "slots": props["total_slots"]},
        "drafters": [{"name": "smollm2-draft", "url": smollm2_server.url}],
        "auth": {"token_file": str(token_file)},
    }
    with servers.running(start_proxy(config, log_dir)) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"needs Debian chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); run `make system-deps`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1100", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def http_status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def complete_through_proxy(proxy_url: str, mode: str = "proxy") -> dict:
    body = {"prompt": "The capital of France is", "max_tokens": 24, "temperature": 0}
    request = urllib.request.Request(
        f"{proxy_url}/v1/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                 "X-Llamafleet-Mode": mode})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.load(resp)


def wait_for(driver, condition, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition(driver)
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"dashboard never showed {what}; status line: {driver.find_element('id', 'status').text!r}")


def text_of(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def test_page_is_public_but_its_data_needs_the_token(proxy):
    assert http_status(f"{proxy.url}/dashboard") == 200
    assert http_status(f"{proxy.url}/stats") == 401
    assert http_status(f"{proxy.url}/stats", {"Authorization": f"Bearer {TOKEN}"}) == 200


def test_dashboard_shows_live_figures_after_a_request(proxy, browser):
    browser.get(f"{proxy.url}/dashboard")
    # Auth is on and the tab has no token yet: the page asks for one instead of showing figures.
    wait_for(browser, lambda d: d.find_element("id", "login").is_displayed(), "the token form")
    assert text_of(browser, "requests-total") == "–"
    browser.find_element("id", "token").send_keys(TOKEN)
    browser.find_element("css selector", "#login-form button").click()
    wait_for(browser, lambda d: d.find_element("id", "status").get_attribute("data-live") == "yes", "a live status")
    before = int(text_of(browser, "requests-total"))

    answer = complete_through_proxy(proxy.url)
    assert answer["llamafleet"]["path"] == "proxy"

    wait_for(browser, lambda d: int(text_of(d, "requests-total")) == before + 1, "the new request")
    stats = json.load(urllib.request.urlopen(urllib.request.Request(
        f"{proxy.url}/stats", headers={"Authorization": f"Bearer {TOKEN}"})))
    # The page shows what /stats says, formatted as the page formats it.
    assert text_of(browser, "acceptance") == f"{100 * stats['acceptance_rate']:.1f}%"
    assert float(text_of(browser, "tps")) > 0
    assert text_of(browser, "decision-path") in stats["controller"]["paths"]
    assert text_of(browser, "decision-why") not in ("", "–")
    health = text_of(browser, "backend-health")
    assert "target" in health and "healthy" in health and "smollm2-draft" in health
    history = browser.find_element("id", "history").text
    assert "proxy" in history and "24" in history
    assert browser.find_elements("css selector", "#chart-tps circle"), "the tok/s chart has no points"
    assert browser.find_elements("css selector", "#chart-acceptance circle"), "the acceptance chart has no points"

    # Speed against plain decoding: nothing to compare until the plain path (direct) is measured too.
    assert text_of(browser, "vs-plain-verdict").startswith("Not measured yet")
    assert complete_through_proxy(proxy.url, "direct")["llamafleet"]["path"] == "direct"
    wait_for(browser, lambda d: int(text_of(d, "requests-total")) == before + 2, "the plain request")
    wait_for(browser, lambda d: not text_of(d, "vs-plain-verdict").startswith("Not measured"), "a verdict")
    controller = json.load(urllib.request.urlopen(urllib.request.Request(
        f"{proxy.url}/stats", headers={"Authorization": f"Bearer {TOKEN}"})))["controller"]
    ratio = controller["speed_vs_plain"]["greedy"]["proxy"]
    row = browser.find_element("css selector", "#vs-plain tbody tr").text
    assert row.startswith(f"proxy greedy {ratio:.2f}x"), row
    verdict = text_of(browser, "vs-plain-verdict")
    if controller["slower_than_plain"]:
        assert f"proxy at {ratio:.2f}x (greedy)" in verdict and "slower than plain" in row
    else:
        assert verdict.startswith("Every measured speculating path") and "at least as fast" in row

    # Self-contained: everything the page loaded came from the proxy itself.
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(proxy.url) for r in resources), resources

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"dashboard screenshot: {shot}")
