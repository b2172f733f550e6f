"""The web UI in a real browser: Debian's Chromium, headless, driven by Selenium 4,
against a real `ciq web` and a private redis-server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from ciq.store import Store

# `web`: test_web's fixture, one `ciq web` for this module too.
from .helpers import REPO, RID, XSS, Web, claim, finish

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Where the lead looks at a few screenshots after a run.
SHOTS = Path("/tmp/ciq-web-shots")
#: Seconds a live change may take to show (the page polls every 2 s).
LIVE_TIMEOUT = 10


def live_wait(driver: WebDriver) -> WebDriverWait:
    """Waits for the live view to change the page. The view swaps rows and reloads a
    commit page once its report lands, so an element found a moment ago may be gone:
    look again rather than fail."""
    return WebDriverWait(driver, LIVE_TIMEOUT, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException,))


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: apt-get install -y chromium "
                    "chromium-driver (scripts/test does this)")
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1360,1000"):
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    browser = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield browser
    finally:
        browser.quit()


def shot(driver: WebDriver, tmp_path: Path, name: str, keep: bool = False) -> Path:
    """A screenshot under the test's folder; ``keep`` copies it to SHOTS too."""
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path))
    if keep:
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS / path.name)
    return path


def no_alert(driver: WebDriver) -> None:
    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    raise AssertionError(f"the page opened an alert: {text!r}")


def status_of(driver: WebDriver, sha: str) -> str:
    """The status a commit's row shows, read in one step (the live view swaps rows)."""
    return str(driver.execute_script(
        "return document.querySelector('#commits tr[data-sha=\"' + arguments[0] + '\"] .pill')"
        ".textContent;", sha))


def test_the_repository_page_lists_its_commits(driver: WebDriver, web: Web, store: Store,
                                               tmp_path: Path) -> None:
    # Given a passing, a failing and a queued commit
    ok = claim(store, 1, subject="add the parser")
    finish(store, ok)
    red = claim(store, 2, subject="speed up the parser", author="Grace")
    finish(store, red, {"tests/test_parser.py::test_fast": "failed",
                        "tests/test_parser.py::test_ok": "passed"})
    queued = claim(store, 3, "feature/cache", subject="cache parsed files")

    driver.get(f"{web.url}/repos/{RID}")
    rows = driver.find_elements(By.CSS_SELECTOR, "#commits tbody tr")
    assert [r.get_attribute("data-sha") for r in rows] == [queued, red, ok]
    assert [status_of(driver, s) for s in (queued, red, ok)] == ["queued", "failed", "passed"]
    assert red[:12] in rows[1].text and "speed up the parser" in rows[1].text
    assert "Grace" in rows[1].text
    assert driver.find_element(By.CSS_SELECTOR, "h1").text == REPO
    shot(driver, tmp_path, "repo", keep=True)


def test_a_failing_commit_shows_its_failure_first_as_text(driver: WebDriver, web: Web,
                                                          store: Store, tmp_path: Path) -> None:
    # Given a failing commit whose test name, message and output carry script
    commit = claim(store, "red", subject=f"break it {XSS}")
    bad = "tests/test_web.py::test_renders"
    finish(store, commit, {"tests/test_web.py::test_alpha": "passed", bad: "failed",
                           "tests/test_web.py::test_omega": "passed"},
           output=f"collected 3 items\n{XSS}\n<img src=x onerror=alert(2)>\n1 failed")

    driver.get(f"{web.url}/repos/{RID}/commits/{commit}")
    no_alert(driver)
    # Then the failing test is the first thing after the banner
    first = driver.find_element(By.CSS_SELECTOR, ".failures .failure .test-id")
    assert first.text == bad
    rows = driver.find_elements(By.CSS_SELECTOR, "#tests tbody tr")
    assert rows[0].find_element(By.CSS_SELECTOR, ".test-id").text == bad
    assert driver.find_element(By.CSS_SELECTOR, ".banner .state").text == "FAILED"
    # And the script in the output is text on the page, not an element
    output = driver.find_element(By.CSS_SELECTOR, "pre.output")
    assert XSS in output.text and "<img src=x onerror=alert(2)>" in output.text
    assert driver.find_elements(By.CSS_SELECTOR, "main script, main img") == []
    assert XSS in driver.find_element(By.CSS_SELECTOR, ".banner .subject").text
    shot(driver, tmp_path, "commit", keep=True)

    # The duration column sorts (longest first on the first click)
    header = driver.find_element(By.CSS_SELECTOR, "#tests th[data-sort=num]")
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    durations = [float(td.get_attribute("data-value")) for td in
                 driver.find_elements(By.CSS_SELECTOR, "#tests tbody td[data-value]")]
    assert durations == sorted(durations, reverse=True)
    no_alert(driver)


def test_a_queued_commit_turns_running_then_failed_without_a_reload(
        driver: WebDriver, web: Web, store: Store, tmp_path: Path) -> None:
    # Given the repository page open while a commit is queued
    finish(store, claim(store, 1))
    commit = claim(store, 2, subject="a commit on its way")
    driver.get(f"{web.url}/repos/{RID}")
    assert status_of(driver, commit) == "queued"
    driver.execute_script("window.ciqNoReload = 42;")
    wait = live_wait(driver)

    # When a worker takes it, then reports it failed
    store.acquire(REPO, commit, "run-1", 30, "w7@host")
    wait.until(lambda d: status_of(d, commit) == "running")
    finish(store, commit, {"tests/test_a.py::test_ok": "failed"})

    # Then its row says so, with counts and worker, and the page was never reloaded
    wait.until(lambda d: status_of(d, commit) == "failed")
    row = driver.find_element(By.CSS_SELECTOR, f'#commits tr[data-sha="{commit}"]')
    assert "w1@host" in row.text and "1.25s" in row.text
    assert driver.execute_script("return window.ciqNoReload;") == 42
    shot(driver, tmp_path, "live")


def test_a_queued_commit_page_shows_its_report_when_it_lands(
        driver: WebDriver, web: Web, store: Store, tmp_path: Path) -> None:
    commit = claim(store, 1, subject="wait for me")
    driver.get(f"{web.url}/repos/{RID}/commits/{commit[:10]}")
    state = driver.find_element(By.CSS_SELECTOR, ".banner .state")
    assert state.text == "QUEUED"
    store.acquire(REPO, commit, "run-1", 30, "w3@host")
    live_wait(driver).until(
        lambda d: "on w3@host" in d.find_element(By.CSS_SELECTOR, ".banner").text)
    finish(store, commit)
    live_wait(driver).until(
        lambda d: d.find_element(By.CSS_SELECTOR, ".banner .state").text == "PASSED")
    assert driver.find_element(By.CSS_SELECTOR, "#tests").is_displayed()
    shot(driver, tmp_path, "commit-live")


def badge_text_and_colour(driver: WebDriver, url: str) -> tuple[str, str]:
    driver.get(url)
    status = driver.find_element(By.CSS_SELECTOR, "rect.status")
    texts = driver.find_elements(By.CSS_SELECTOR, "text")
    return texts[-1].text, status.get_attribute("fill")


def test_the_badge_turns_red_when_a_newer_commit_fails(driver: WebDriver, web: Web,
                                                       store: Store, tmp_path: Path) -> None:
    finish(store, claim(store, 1, subject="green"))
    badge = f"{web.url}/badge/{RID}/main.svg"
    assert badge_text_and_colour(driver, badge) == ("passing", "#2da44e")
    red = claim(store, 2, subject="red")
    finish(store, red, {"tests/test_a.py::test_ok": "failed"})
    assert badge_text_and_colour(driver, badge) == ("failing", "#d73a49")
    # And the repositories page shows it next to the branch
    finish(store, claim(store, 3, "feature/x", subject="green on a branch"),
           branch="feature/x")
    claim(store, 4, "feature/y", subject="queued on a branch")
    driver.get(f"{web.url}/")
    images = driver.find_elements(By.CSS_SELECTOR, "img.badge")
    assert len(images) == 3
    assert all(driver.execute_script("return arguments[0].naturalWidth > 0", i) for i in images)
    shot(driver, tmp_path, "repositories", keep=True)
