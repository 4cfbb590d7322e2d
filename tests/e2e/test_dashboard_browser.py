"""End to end: the real dashboard in headless Chromium against the real running stack.

Decider, reward consumer and projector run as processes on the real Kafka and Redis;
traffic goes over HTTP; ``streamlit run dashboard/app.py`` runs as a subprocess pointed
at the decider. The browser picks the experiment in the UI and we assert that the charts
actually rendered (Vega canvases/SVGs inside the chart elements), that the arm table
lists the arms and that the uplift over the holdout is reported, then keep a screenshot
(``test-artifacts/dashboard.png``). With ``MAB_UPDATE_README_SCREENSHOT=1`` it also
refreshes the README's ``docs/img/dashboard.png`` (opt-in: a test run must not change
tracked files).

Chromium is part of the test machine (``make test`` installs Debian's ``chromium`` and
``chromium-driver``): without it this test fails, saying what to install, rather than
passing unseen. ``MAB_TEST_NO_BROWSER=1`` is the explicit opt-out for a machine that
cannot have a browser.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from deploy.stack.ports import free_port
from mab_client import MabClient, MabError
from tests.e2e.conftest import ARTIFACTS, Services
from tests.fixtures.streams import stop_processor

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARMS = {"blue-button": 0.08, "green-button": 0.22, "red-button": 0.12}
#: After the first minute the story shifts (the original project's 2 PM): red converts best.
SHIFTED = {"blue-button": 0.08, "green-button": 0.06, "red-button": 0.25}
BURSTS = (120, 180)
DECISIONS = sum(BURSTS)
HOLDOUT_SHARE = 0.2

if os.environ.get("MAB_TEST_NO_BROWSER") == "1":
    pytest.skip("MAB_TEST_NO_BROWSER=1: the browser test is opted out", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def chromium() -> None:
    """Fail at once when the browser is missing, not after minutes of traffic."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"the browser test needs Debian's chromium and chromium-driver (missing: "
            f"{', '.join(missing)}): `make system-deps` installs them; "
            "MAB_TEST_NO_BROWSER=1 opts out explicitly",
            pytrace=False,
        )


def _wait(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except (httpx.HTTPError, MabError, WebDriverException) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def traffic(services: Services) -> dict[str, str]:
    """Two experiments: an empty one (the picker's default) and one with traffic and a
    holdout."""
    if "projector" not in services.procs:
        services.env["MAB_PROJECTOR_GROUP_ID"] = f"{services.ns}projector"
        services.start("projector", [sys.executable, "-m", "services.projector"])
    empty = f"{services.ns}empty-test"
    exp = f"{services.ns}cta-button-test"
    rng = random.Random(7)
    with MabClient(services.api_url, timeout=10) as mab:
        mab.create_experiment(empty, list(ARMS), strategy="thompson")
        # The traffic experiment holds a fifth of its visitors out on blue, so the page
        # shows the bandit's uplift over the holdout (docs/stopping.md).
        body = {
            "experiment_id": exp,
            "arm_ids": list(ARMS),
            "strategy": "thompson",
            "holdout_share": HOLDOUT_SHARE,
            "control_arm_id": "blue-button",
        }
        httpx.post(f"{services.api_url}/experiments", json=body, timeout=10).raise_for_status()
        # Two bursts in two different minutes, so the per-minute charts show a shift.
        for burst, (n, rates) in enumerate(zip(BURSTS, (ARMS, SHIFTED), strict=True)):
            if burst:
                time.sleep(60.5 - time.time() % 60)  # into the next minute bucket
            for _ in range(n):
                d = mab.decide(exp)
                mab.reward_for(d, 1.0 if rng.random() < rates[d.arm_id] else 0.0)

        _wait(
            lambda: mab.stats(exp).total_pulls == DECISIONS,
            30,
            "the reward consumer to fold every reward",
        )

        def projected() -> bool:
            points = mab.timeseries(exp, bucket="minute").points
            return sum(p.rewards for p in points) == DECISIONS

        _wait(projected, 30, "the projector to bucket every reward")
    return {"empty": empty, "exp": exp}


@pytest.fixture(scope="module")
def dashboard(services: Services) -> Iterator[str]:
    port = free_port()
    log = ARTIFACTS / f"{services.ns}dashboard.log"
    env = {**services.env, "MAB_API_URL": services.api_url}
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "dashboard" / "app.py"),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"streamlit exited:\n{log.read_text()[-3000:]}")
            return httpx.get(f"{url}/_stcore/health", timeout=1).text.strip() == "ok"

        _wait(healthy, 60, "streamlit to answer /_stcore/health")
        yield url
    finally:
        stop_processor(proc, timeout=15)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1500,2300",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _idle(driver: WebDriver) -> bool:
    """The script run finished (Streamlit's own marker)."""
    return bool(
        driver.find_elements(
            By.CSS_SELECTOR, "[data-testid='stApp'][data-test-script-state='notRunning']"
        )
    )


def _rendered_charts(driver: WebDriver) -> list[Any]:
    """Chart elements whose Vega view has drawn (a canvas or an SVG inside)."""
    return [
        el
        for el in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stVegaLiteChart']")
        if el.find_elements(By.CSS_SELECTOR, "canvas, svg")
    ]


def _select_experiment(driver: WebDriver, exp_id: str) -> None:
    """Open the picker (a combobox) and click the option, as a person would."""
    box = driver.find_element(By.CSS_SELECTOR, "input[role='combobox'][aria-label='Experiment']")
    box.click()

    def option() -> Any:
        for el in driver.find_elements(By.CSS_SELECTOR, "[role='option']"):
            if el.text.strip() == exp_id:
                return el
        return None

    _wait(option, 10, f"option {exp_id} in the experiment picker").click()
    _wait(lambda: box.get_attribute("value") == exp_id, 10, f"the picker to show {exp_id}")


@pytest.mark.timeout(420)
def test_dashboard_renders_live_charts_in_chromium(
    traffic: dict[str, str], dashboard: str, browser: WebDriver
) -> None:
    """Scenario: an operator opens the dashboard and picks the experiment with traffic.
    We expect the arm table to list its arms and the charts to be drawn by Vega."""
    browser.get(dashboard)
    _wait(
        lambda: (
            _idle(browser) and browser.find_elements(By.CSS_SELECTOR, "[data-testid='stSelectbox']")
        ),
        60,
        "the first script run",
    )
    # the default pick is the empty experiment: a clear message, no chart
    _wait(
        lambda: "No decisions or rewards yet" in browser.find_element(By.TAG_NAME, "body").text,
        30,
        "the empty-experiment message",
    )

    _select_experiment(browser, traffic["exp"])
    # the traffic spans two minutes: show per-minute buckets
    _wait(lambda: _idle(browser), 60, "the run after picking the experiment")
    minute = browser.find_element(
        By.XPATH, "//*[@data-testid='stRadio']//label[.//p[text()='minute']]"
    )
    minute.click()
    _wait(lambda: "Conversion rate per minute" in browser.page_source, 60, "minute charts")
    want = 5
    _wait(
        lambda: _idle(browser) and len(_rendered_charts(browser)) >= want,
        60,
        f"{want} drawn charts",
    )
    charts = _rendered_charts(browser)
    assert len(charts) >= want
    for chart in charts:
        size = chart.size
        assert size["width"] > 100
        assert size["height"] > 50

    # the arm table (a canvas grid) exposes its cells to assistive tech: read the arms there
    def table_arms() -> set[str]:
        cells = browser.find_elements(
            By.CSS_SELECTOR,
            "[data-testid='stDataFrame'] [role='gridcell'], [data-testid='stDataFrame'] td",
        )
        return {c.get_attribute("textContent") or "" for c in cells} & set(ARMS)

    assert _wait(table_arms, 20, "the arm table to list the arms") == set(ARMS)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "API unavailable" not in body
    assert "Traceback" not in body
    assert "thompson" in body
    assert "Uplift over the holdout (20% on blue-button" in body

    _wait(lambda: _idle(browser), 30, "the script to be idle before the screenshot")
    time.sleep(1.0)  # let Vega finish its transitions
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get("MAB_UPDATE_README_SCREENSHOT") == "1":
        target = ROOT / "docs" / "img" / "dashboard.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
