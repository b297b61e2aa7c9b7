"""The console and the report in a real headless Chromium against the live server and its finished job:
the request list shows the job, the key stays out of the URL, the report renders its figures (inline in the
console, and on its own with JavaScript off), a tampered certificate is flagged red with the changed field,
and a key's scopes are enforced by the API. With UNLEARND_SCREENSHOTS=DIR set, the pages are saved there as
PNG (the README's screenshots: `UNLEARND_SCREENSHOTS=docs pytest tests/console/test_browser.py`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.service.support import ADMIN_KEY
from unlearnd.api.db import transaction
from unlearnd.api.security import create_api_key

from .conftest import Finished

SHOTS = os.environ.get("UNLEARND_SCREENSHOTS")


def _shot(driver, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / name))


def _wait(driver, condition, timeout: float = 20):
    return WebDriverWait(driver, timeout).until(condition)


def _sign_in(driver, url: str, key: str) -> None:
    driver.get(f"{url}/console")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{url}/console#/requests")
    _wait(driver, EC.presence_of_element_located((By.ID, "api-key"))).send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()


def _key(finished: Finished, scopes: tuple[str, ...]) -> str:
    live = finished.live
    with transaction(live.server.app.state.session_factory) as session:
        _, key = create_api_key(session, live.settings, tenant="default", name="browser", scopes=scopes)
    return key


def test_the_request_list_shows_the_finished_job_and_the_key_stays_out_of_the_url(finished: Finished, browser):
    _sign_in(browser, finished.live.url, ADMIN_KEY)
    row = _wait(
        browser,
        EC.presence_of_element_located((By.CSS_SELECTOR, f'#requests-table tr[data-id="{finished.request["id"]}"]')),
    )
    assert finished.request["status"] in row.text and (finished.request["verdict"] or "") in row.text
    assert "null" not in browser.find_element(By.ID, "requests-body").text
    assert ADMIN_KEY not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('unlearnd.apiKey')") == ADMIN_KEY
    assert browser.execute_script("return localStorage.length") == 0
    _shot(browser, "console-requests.png")


def test_the_request_page_shows_the_report_with_its_figures(finished: Finished, browser):
    _sign_in(browser, finished.live.url, ADMIN_KEY)
    browser.get(f"{finished.live.url}/console#/requests/{finished.request['id']}")
    _wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "#live-curve .uplot")))
    frame = _wait(browser, EC.presence_of_element_located((By.ID, "report-frame")))
    _wait(browser, lambda d: "Evidence of erasure" in (frame.get_attribute("srcdoc") or ""))
    browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "evidence"))
    _shot(browser, "console-request.png")
    browser.switch_to.frame(frame)
    try:
        for figure in ("fig-scores", "fig-curve"):
            svg = browser.find_element(By.CSS_SELECTOR, f"#{figure} svg")
            assert svg.size["width"] > 300 and svg.size["height"] > 100, (figure, svg.size)
            assert len(svg.find_elements(By.CSS_SELECTOR, "path")) > 10
        assert browser.find_element(By.ID, "verdict").text == finished.audit["verdict"]
    finally:
        browser.switch_to.default_content()


def test_the_report_reads_and_draws_without_javascript(finished: Finished, browser, tmp_path):
    page = finished.live.client.get(f"/v1/audits/{finished.audit['id']}/report").text
    path = tmp_path / "evidence.html"
    path.write_text(page)
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        browser.get(path.as_uri())
        svg = browser.find_element(By.CSS_SELECTOR, "#fig-curve svg")
        assert svg.size["width"] > 300 and svg.size["height"] > 100
        assert finished.audit["hash"] in browser.find_element(By.ID, "record-hash").text
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
    browser.execute_script("document.getElementById('evidence').scrollIntoView()")
    _shot(browser, "report.png")
    browser.execute_script("document.getElementById('figures').scrollIntoView()")
    _shot(browser, "report-figures.png")


def _check(browser, url: str, text: str, tmp_path: Path, name: str):
    browser.get(f"{url}/console#/verify")
    browser.execute_script("document.querySelectorAll('#verify-result').forEach((e) => e.remove())")
    path = tmp_path / name
    path.write_text(text)
    _wait(browser, EC.presence_of_element_located((By.ID, "certificate-file"))).send_keys(str(path))
    return _wait(browser, EC.presence_of_element_located((By.ID, "verify-result")))


def test_a_tampered_certificate_is_flagged_red_and_names_the_changed_field(finished: Finished, browser, tmp_path):
    url = finished.live.url
    _sign_in(browser, url, ADMIN_KEY)
    _wait(browser, EC.presence_of_element_located((By.ID, "requests-table")))
    cert = finished.live.client.get(f"/v1/audits/{finished.audit['id']}/certificate").text
    result = _check(browser, url, cert, tmp_path, "good.json")
    assert "valid" in result.get_attribute("class").split() and result.text.startswith("VALID"), result.text
    doc = json.loads(cert)
    doc["verdict"] = "forgotten" if doc["verdict"] != "forgotten" else "not_reached"
    result = _check(browser, url, json.dumps(doc, indent=2), tmp_path, "tampered.json")
    assert "invalid" in result.get_attribute("class").split() and "changed: verdict" in result.text, result.text
    red, green, blue = (int(c) for c in result.value_of_css_property("color").split("(")[1].split(",")[:3])
    assert red > 150 and green < 80 and blue < 80  # shown red
    failed = [li.get_attribute("data-check") for li in browser.find_elements(By.CSS_SELECTOR, "#verify-checks li.fail")]
    assert failed == ["signature", "chain hash", "service record"]
    _shot(browser, "console-certificate-check.png")
    doc = json.loads(cert)
    doc["issued_at"] = "2020-01-01T00:00:00.000000+00:00"  # outside the audit record: only the signature sees it
    result = _check(browser, url, json.dumps(doc), tmp_path, "reissued.json")
    assert "invalid" in result.get_attribute("class").split()
    assert "issued_at" in browser.find_element(By.CSS_SELECTOR, '#verify-checks li[data-check="changed field"]').text


def test_the_apis_scopes_decide_what_the_console_shows(finished: Finished, browser):
    url = finished.live.url
    _sign_in(browser, url, _key(finished, ("requests:read",)))
    _wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-id="{finished.request["id"]}"]')))
    browser.get(f"{url}/console#/audits")
    error = _wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "#audits-body .error")))
    assert "insufficient_scope" in error.text
    _sign_in(browser, url, _key(finished, ("audit:read",)))
    error = _wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "#requests-body .error")))
    assert "insufficient_scope" in error.text
    browser.get(f"{url}/console#/audits")
    _wait(
        browser,
        EC.presence_of_element_located((By.CSS_SELECTOR, f'#audits-table tr[data-id="{finished.audit["id"]}"]')),
    )
    browser.find_element(By.ID, "verify-chain").click()
    chain = _wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "#chain-result .result")))
    assert "intact" in chain.text and "valid" in chain.get_attribute("class").split()
    _shot(browser, "console-audits.png")
    browser.get(f"{url}/console#/models")
    _wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "[data-model] .error, [data-model] table")))


def test_the_console_is_served_with_a_policy_that_allows_only_its_own_scripts(finished: Finished):
    import httpx

    for path in ("/console", "/console/static/console.js", "/console/static/vendor/uPlot.iife.min.js"):
        r = httpx.get(finished.live.url + path)
        assert r.status_code == 200, path
        assert "script-src 'self'" in r.headers["content-security-policy"]
    page = httpx.get(finished.live.url + "/console").text
    assert "<script>" not in page and "http" not in page.replace("http-equiv", "")  # no inline script, no CDN


@pytest.fixture(autouse=True)
def _no_console_errors(browser):
    """Every browser test ends without a JavaScript error in the console's log."""
    browser.get_log("browser")  # drop what earlier tests left
    yield
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "status of 40" not in e["message"]]
    assert not errors, errors
