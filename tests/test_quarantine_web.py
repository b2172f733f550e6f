"""Quarantine in `ciq web`: the real command as a subprocess, its API and its page, with
and without the operator token."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from ciq.processes import stop_process
from ciq.quarantine import apply, entry
from ciq.report import Report, Summary, TestResult
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.quarantine import Quarantine

from .helpers import REPO, RID, XSS, RedisServer, Reply, Web, claim, finish, start_web

TOKEN = "s3cret-operator-token-0123456789"
RED = "tests/test_a.py::test_flaky"
OWNER = "dev@example.org"


@pytest.fixture(scope="module")
def operator_web(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Web]:
    """A `ciq web` that takes quarantine changes from whoever gives :data:`TOKEN`."""
    folder = tmp_path_factory.mktemp("operator-web")
    settings = Settings(broker_url=redis_server.url, result_backend=redis_server.url,
                        data_dir=folder / "data")
    web = start_web(settings, folder / "web.log", CIQ_OPERATOR_TOKEN=TOKEN)
    yield web
    stop_process(web.proc)


def call(web: Web, method: str, path: str, body: Any = None, token: str | None = TOKEN,
         form: dict[str, str] | None = None) -> Reply:
    headers = {}
    data = None
    if token is not None and form is None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        headers["Content-Type"] = "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(web.url + path, data=data, headers=headers, method=method)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()},
                         r.read().decode())
    except urllib.error.HTTPError as e:
        return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode())


def quarantine_path(test: str = "") -> str:
    return f"/api/repos/{RID}/quarantine" + (f"?test={urllib.parse.quote(test)}" if test else "")


def test_the_api_adds_lists_renews_and_removes(operator_web: Web, store: Store) -> None:
    # Given a repository ciq knows, without quarantined tests
    finish(store, claim(store, 1))
    assert operator_web.json(quarantine_path()) == {"id": RID, "repo": REPO, "tests": []}

    # When an operator quarantines a test through the API
    body = {"test": RED, "owner": OWNER, "reason": "flaky on CI", "days": 3}
    added = call(operator_web, "POST", quarantine_path(), body)

    # Then it is created (201), listed, and kept in Redis for workers
    assert added.status == 201, added.text
    assert added.json()["test"] == RED and added.json()["state"] == "in force"
    assert added.json()["added_by"].startswith("web API")
    [listed] = operator_web.json(quarantine_path())["tests"]
    assert (listed["owner"], listed["reason"]) == (OWNER, "flaky on CI")
    assert set(Quarantine(store).in_force(REPO)) == {RED}
    assert operator_web.json("/api/quarantine") == [
        {"id": RID, "repo": REPO, "tests": [listed]}]

    # And again renews it (200); DELETE releases it, then says it is not quarantined
    assert call(operator_web, "POST", quarantine_path(), {**body, "days": 30}).status == 200
    gone = call(operator_web, "DELETE", quarantine_path(RED))
    assert gone.status == 200 and gone.json()["test"] == RED
    again = call(operator_web, "DELETE", quarantine_path(RED))
    assert again.status == 404 and "not quarantined" in again.json()["detail"]
    assert Quarantine(store).entries(REPO) == []


def test_writes_need_the_token(operator_web: Web, web: Web, store: Store) -> None:
    finish(store, claim(store, 1))
    body = {"test": RED, "owner": OWNER, "reason": "flaky"}
    # No token, or a wrong one: 401 with a challenge, nothing written
    for token in (None, "wrong-token-wrong-token"):
        refused = call(operator_web, "POST", quarantine_path(), body, token=token)
        assert refused.status == 401, refused.text
        assert refused.headers.get("www-authenticate") == "Bearer"
        assert "operator token" in refused.json()["detail"]
        assert call(operator_web, "DELETE", quarantine_path(RED), token=token).status == 401
    assert Quarantine(store).entries(REPO) == []
    # A ciq web without a token configured takes no writes at all, whatever is given
    for token in (None, TOKEN):
        refused = call(web, "POST", quarantine_path(), body, token=token)
        assert refused.status == 403 and "CIQ_OPERATOR_TOKEN" in refused.json()["detail"]
    assert call(web, "POST", f"/repos/{RID}/quarantine",
                form={"action": "add", "test": RED, "owner": OWNER, "reason": "r",
                      "days": "3", "token": TOKEN}).status == 403
    assert Quarantine(store).entries(REPO) == []
    # But anyone may read; its page offers no forms, only how to enable them
    assert web.json(quarantine_path())["tests"] == []
    page = web.get(f"/repos/{RID}/quarantine")
    assert page.status == 200 and "CIQ_OPERATOR_TOKEN" in page.text
    assert 'name="token"' not in page.text


@pytest.mark.parametrize("body, status, word", [
    ({"test": RED, "owner": "nobody", "reason": "r"}, 400, "e-mail"),
    ({"test": RED, "owner": OWNER, "reason": ""}, 400, "reason"),
    ({"test": RED, "owner": OWNER, "reason": "r", "days": 400}, 400, "days"),
    ({"test": "x" * 1001, "owner": OWNER, "reason": "r"}, 400, "1000"),
    ({"owner": OWNER, "reason": "r"}, 400, "test"),
    (b"{not json", 400, "bad"),
    ({"test": RED, "owner": OWNER, "reason": "r" * 20_000}, 413, "at most"),
])
def test_bad_writes_are_400s_that_say_why(operator_web: Web, store: Store, body, status,
                                          word) -> None:
    finish(store, claim(store, 1))
    refused = call(operator_web, "POST", quarantine_path(), body)
    assert refused.status == status, refused.text
    assert word in refused.json()["detail"]
    assert call(operator_web, "POST", "/api/repos/0123456789abcdef/quarantine",
                {"test": RED, "owner": OWNER, "reason": "r"}).status == 404


def test_the_page_lists_adds_and_releases(operator_web: Web, store: Store) -> None:
    finish(store, claim(store, 1))
    page = operator_web.get(f"/repos/{RID}/quarantine")
    assert page.status == 200 and "No quarantined tests" in page.text
    assert 'name="token"' in page.text  # the forms are there, with a token field

    # A form without the right token is refused on the page itself, its values kept
    form = {"action": "add", "test": RED + XSS, "owner": OWNER, "reason": "flaky " + XSS,
            "days": "5", "token": "wrong"}
    refused = call(operator_web, "POST", f"/repos/{RID}/quarantine", form=form)
    assert refused.status == 401 and "operator token" in refused.text
    assert XSS not in refused.text and "flaky &lt;script&gt;" in refused.text
    assert "wrong" not in refused.text  # the token is never shown again

    # With the token: back to the page, which lists it, escaped
    done = call(operator_web, "POST", f"/repos/{RID}/quarantine", form={**form, "token": TOKEN})
    assert done.status == 303 and done.headers["location"] == f"/repos/{RID}/quarantine"
    page = operator_web.get(f"/repos/{RID}/quarantine")
    assert "in 4d" in page.text and OWNER in page.text and XSS not in page.text
    assert Quarantine(store).entries(REPO)[0].added_by.startswith("web UI")

    # A bad value says why
    bad = call(operator_web, "POST", f"/repos/{RID}/quarantine",
               form={**form, "token": TOKEN, "days": "0"})
    assert bad.status == 400 and "days must be" in bad.text

    # Release it
    out = call(operator_web, "POST", f"/repos/{RID}/quarantine",
               form={"action": "remove", "test": RED + XSS, "token": TOKEN})
    assert out.status == 303
    assert Quarantine(store).entries(REPO) == []


def test_the_commit_page_marks_quarantined_tests(web: Web, store: Store) -> None:
    # Given a commit whose one failure is a quarantined test
    commit = claim(store, 1)
    Quarantine(store).add(REPO, entry(RED, OWNER, "flaky " + XSS))
    report = store.report(REPO, claim_and_report(store, commit))
    assert report is not None and report.status == "passed"

    # Then its page says passed with the quarantined failure, marked
    page = web.get(f"/repos/{RID}/commits/{commit}")
    assert page.status == 200
    assert "passed, 1 quarantined failure" in page.text
    assert page.text.count('class="flag quarantined"') == 2  # failures, and the tests table
    assert XSS not in page.text
    # And its JSON keeps the real outcome and the mark; its JUnit XML a property
    data = web.json(f"/api/repos/{RID}/commits/{commit}")
    assert {t["id"]: t["outcome"] for t in data["tests"]}[RED] == "failed"
    assert set(data["quarantined"]) == {RED}
    xml = web.get(f"/repos/{RID}/commits/{commit}/junit.xml").text
    assert 'name="ciq.quarantined"' in xml


def claim_and_report(store: Store, commit: str) -> str:
    """Store the report of an already claimed ``commit`` with RED failing, as a worker
    would under the quarantine."""
    tests = (TestResult("tests/test_a.py::test_ok", "passed", 0.01),
             TestResult(RED, "failed", 0.2, "AssertionError: flaky"))
    raw = Report(repo=REPO, commit=commit, branch="main", status="failed",
                 summary=Summary.of(list(tests)), tests=tests, exit_code=1,
                 message="1 of 2 tests failed", finished_at="2024-05-01T12:00:01+00:00")
    assert store.finish(apply(raw, Quarantine(store).in_force(REPO)))
    return commit
