"""The live view of a commit in `ciq web`: the API route /api/repos/{rid}/commits/{sha}/live
and the commit page while it runs. The real `ciq web` over a private redis-server, the
stream written by :class:`~ciq.store.live.LiveResults` (the worker's own writer), and
once end to end with a real worker."""

from __future__ import annotations

import time
from typing import Any

import pytest
from markupsafe import escape

from ciq.settings import Settings
from ciq.store import Store
from ciq.store.keys import repo_id
from ciq.store.live import LiveResults

from .helpers import REPO, RID, XSS, Web, claim, finish, run_ciq, wait_for, wait_report
from .test_live import EARLY_FAILURE
from .test_web_browser import driver  # noqa: F401 - a fixture

RUN = "run-live-1"


def running(store: Store, n: int | str, run_id: str = RUN, branch: str = "main") -> str:
    """A commit claimed and leased by ``run_id``, as a worker running it has it."""
    commit = claim(store, n, branch)
    assert store.acquire(REPO, commit, run_id, 30, "w1@host") == 1
    return commit


def outcome(test: str, result: str = "passed", message: str = "") -> dict[str, Any]:
    entry: dict[str, Any] = {"id": test, "outcome": result, "duration": 0.25,
                             "when": time.time()}
    if result in ("failed", "error"):
        entry["message"] = message
    return entry


def test_the_live_route_gives_outcomes_the_first_failure_and_counts(web: Web, store: Store):
    # Given a running commit whose run reported three outcomes, the second a failure
    commit = running(store, 1)
    live = LiveResults(store, REPO, commit, RUN)
    live([outcome("tests/test_a.py::test_1"),
          outcome("tests/test_a.py::test_2", "failed", "AssertionError: 1 != 2"),
          outcome("tests/test_a.py::test_3", "skipped")])

    # When the live route is read from the start
    got = web.json(f"/api/repos/{RID}/commits/{commit[:10]}/live")

    # Then it says running, names the first failure, and lists the outcomes in order
    assert got["commit"] == commit and got["state"] == "running"
    assert got["status"] == "running"
    ff = got["first_failure"]
    assert ff["id"] == "tests/test_a.py::test_2" and ff["outcome"] == "failed"
    assert ff["message"] == "AssertionError: 1 != 2" and ff["run_id"] == RUN
    assert [(o["id"], o["outcome"]) for o in got["outcomes"]] == [
        ("tests/test_a.py::test_1", "passed"), ("tests/test_a.py::test_2", "failed"),
        ("tests/test_a.py::test_3", "skipped")]
    assert got["outcomes"][1]["message"] == "AssertionError: 1 != 2"
    assert got["outcomes"][0]["duration"] == 0.25 and got["outcomes"][0]["run_id"] == RUN
    assert got["counts"] == {"passed": 1, "failed": 1, "error": 0, "skipped": 1}
    assert got["next"] == got["outcomes"][-1]["entry"]

    # And from `next` on, only what came since; the counts stay whole
    live([outcome("tests/test_b.py::test_4", "error", "boom")])
    more = web.json(f"/api/repos/{RID}/commits/{commit}/live?after={got['next']}")
    assert [o["id"] for o in more["outcomes"]] == ["tests/test_b.py::test_4"]
    assert more["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}
    assert more["first_failure"]["id"] == "tests/test_a.py::test_2"  # still the first
    same = web.json(f"/api/repos/{RID}/commits/{commit}/live?after={more['next']}")
    assert same["outcomes"] == [] and same["next"] == more["next"]

    # And once the report is stored, the state says so
    finish(store, commit, {"tests/test_a.py::test_2": "failed"})
    done = web.json(f"/api/repos/{RID}/commits/{commit}/live")
    assert done["state"] == "finished" and done["status"] == "failed"


def test_a_queued_commit_has_an_empty_live_view(web: Web, store: Store):
    commit = claim(store, 2)
    got = web.json(f"/api/repos/{RID}/commits/{commit}/live")
    assert got == {"commit": commit, "state": "queued", "status": "queued",
                   "first_failure": None, "outcomes": [], "next": "0-0",
                   "counts": {"passed": 0, "failed": 0, "error": 0, "skipped": 0}}


def test_one_call_gives_at_most_1000_outcomes_and_a_rerun_counts_once(web: Web, store: Store):
    # Given 1500 outcomes, then the same 1500 tests again (a run that died, run again)
    commit = running(store, 3)
    live = LiveResults(store, REPO, commit, RUN)
    tests = [outcome(f"tests/test_many.py::test_{i}") for i in range(1500)]
    live(tests)
    live(tests)
    first = web.json(f"/api/repos/{RID}/commits/{commit}/live")
    assert len(first["outcomes"]) == 1000
    assert first["counts"]["passed"] == 1500
    second = web.json(f"/api/repos/{RID}/commits/{commit}/live?after={first['next']}")
    assert len(second["outcomes"]) == 1000
    assert second["outcomes"][0]["id"] == "tests/test_many.py::test_1000"
    third = web.json(f"/api/repos/{RID}/commits/{commit}/live?after={second['next']}")
    assert len(third["outcomes"]) == 1000 and third["outcomes"][-1]["entry"] == third["next"]


@pytest.mark.parametrize("after", ["abc", "1-2-3", "1700000000000-", "-5",
                                   "99999999999999999999-0", "x" * 100])
def test_a_bad_after_is_a_400_with_one_line(web: Web, store: Store, after: str):
    commit = running(store, 4)
    reply = web.get(f"/api/repos/{RID}/commits/{commit}/live?after={after}")
    assert reply.status == 400, reply.text
    detail = reply.json()["detail"]
    assert "\n" not in detail and detail.startswith("bad after")


def test_unknown_commits_and_bad_shas_answer_like_the_other_routes(web: Web, store: Store):
    running(store, 5)
    assert web.get(f"/api/repos/{RID}/commits/{'f' * 40}/live").status == 404
    assert web.get(f"/api/repos/{'0' * 16}/commits/{'f' * 40}/live").status == 404
    assert web.get(f"/api/repos/{RID}/commits/zz/live").status == 400


def test_the_route_is_in_the_openapi_docs(web: Web, store: Store):
    schema = web.json("/openapi.json")
    route = schema["paths"]["/api/repos/{rid}/commits/{sha}/live"]["get"]
    assert route["summary"] == "One commit's live results"
    assert [p["name"] for p in route["parameters"]] == ["rid", "sha", "after"]
    assert {"400", "404", "503"} <= set(route["responses"])
    assert "/api/repos/{rid}/commits/{sha}/live" in web.get("/api").text


def test_the_page_of_a_running_commit_shows_its_first_failure_escaped(web: Web, store: Store):
    # Given a running commit whose first failure was written by hostile code
    commit = running(store, 6)
    bad_id = f"tests/test_x.py::test_{XSS}\x1b[31m"
    LiveResults(store, REPO, commit, RUN)([
        outcome("tests/test_x.py::test_ok"),
        outcome(bad_id, "failed", f"assert {XSS}\x07 is fine"),
    ])

    # When its page is loaded
    page = web.get(f"/repos/{RID}/commits/{commit}")

    # Then it shows the failure, escaped and without control characters, and the counts
    assert page.status == 200
    html = page.text
    assert XSS not in html and "\x1b" not in html and "\x07" not in html
    assert str(escape(f"tests/test_x.py::test_{XSS}")) in html
    assert str(escape(f"assert {XSS}? is fine")) in html
    assert 'class="failure first-failure"' in html and "None so far." in html
    assert '<span data-count="passed">1</span> passed' in html
    assert '<span data-count="failed">1</span> failed' in html
    assert f'data-api="/api/repos/{RID}/commits/{commit}/live"' in html
    assert '<script src="/static/live.js" defer></script>' in html
    assert web.get("/static/live.js").status == 200


def test_the_page_says_none_so_far_and_a_reported_page_has_no_live_view(web: Web, store: Store):
    commit = running(store, 7)
    html = web.get(f"/repos/{RID}/commits/{commit}").text
    assert '<section class="failure first-failure" hidden>' in html
    assert '<p class="muted no-failure">None so far.</p>' in html
    finish(store, commit)
    html = web.get(f"/repos/{RID}/commits/{commit}").text
    assert "live-results" not in html and "live.js" not in html


@pytest.mark.slow
def test_a_real_run_shows_its_first_failure_in_the_live_view_before_the_report(
    make_repo, worker, store: Store, settings: Settings, web: Web
):
    # Given a suite whose first test fails and whose other tests take 5 s, run by a worker
    # of the Redis the module's `ciq web` reads
    repo = make_repo(EARLY_FAILURE)
    path, head = str(repo.path), repo.head()
    worker()
    assert run_ciq(settings, "enqueue", path).returncode == 0
    rid = repo_id(path)

    # When the live route is polled
    def failed_live() -> dict[str, Any] | None:
        got = web.json(f"/api/repos/{rid}/commits/{head}/live")
        return got if got["first_failure"] else None

    got = wait_for(failed_live, 60, "the first failure in the live view")

    # Then it names the failure while the commit still runs, and the page shows it
    assert got["state"] == "running" and store.report(path, head) is None
    assert got["first_failure"]["id"] == "tests/test_a.py::test_fails"
    assert "early on purpose" in got["first_failure"]["message"]
    assert got["counts"]["failed"] == 1
    html = web.get(f"/repos/{rid}/commits/{head}").text
    assert "tests/test_a.py::test_fails" in html and "early on purpose" in html
    # And once the report lands the view says finished, with every outcome seen
    report = wait_report(store, path, head, timeout=60)
    done = web.json(f"/api/repos/{rid}/commits/{head}/live")
    assert done["state"] == "finished" and done["status"] == report.status == "failed"
    assert done["counts"] == {"passed": 5, "failed": 1, "error": 0, "skipped": 0}


@pytest.mark.slow
def test_in_a_browser_the_first_failure_appears_without_a_reload_as_text(
    driver, web: Web, store: Store  # noqa: F811 - test_web_browser's fixture
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Given the page of a running commit with no failure yet
    commit = running(store, 8)
    driver.get(f"{web.url}/repos/{RID}/commits/{commit}")
    first = driver.find_element(By.CSS_SELECTOR, ".first-failure")
    assert not first.is_displayed()
    driver.execute_script("window.ciqNoReload = 42;")

    # When its run reports a pass, then a failure whose id is markup
    live = LiveResults(store, REPO, commit, RUN)
    live([outcome("tests/test_x.py::test_ok")])
    live([outcome(f"tests/test_x.py::test_{XSS}", "failed", f"boom {XSS}")])

    # Then the failure shows, as text, without a reload, with the counts
    wait = WebDriverWait(driver, 10, poll_frequency=0.1)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".first-failure").is_displayed())
    assert driver.find_element(By.CSS_SELECTOR, ".first-failure .test-id").text == \
        f"tests/test_x.py::test_{XSS}"
    assert driver.find_element(By.CSS_SELECTOR, ".ff-message").text == f"boom {XSS}"
    assert driver.find_element(By.CSS_SELECTOR, '[data-count="failed"]').text == "1"
    assert driver.find_element(By.CSS_SELECTOR, '[data-count="passed"]').text == "1"
    assert not driver.find_element(By.CSS_SELECTOR, ".no-failure").is_displayed()
    assert driver.execute_script("return window.ciqNoReload;") == 42
    assert driver.find_elements(By.CSS_SELECTOR, ".live-failing li")[0].text.endswith(XSS)

    # And the page reloads into the report when it lands
    finish(store, commit, {f"tests/test_x.py::test_{XSS}": "failed"})
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".banner .state").text == "FAILED")
    assert not driver.find_elements(By.CSS_SELECTOR, "#live-results")
