"""`ciq web`: the real command as a subprocess, over a private redis-server holding
reports written the way workers write them (claim, then finish)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
import pytest
from markupsafe import escape

from ciq.processes import stop_process
from ciq.report import Report, TestResult
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.keys import repo_id

from .helpers import (
    REPO,
    RID,
    XSS,
    RedisServer,
    Web,
    as_json,
    ciq_env,
    claim,
    finish,
    free_port,
    run_ciq,
    sha,
    start_web,
    wait_report,
)


def test_repositories_show_the_newest_commit_of_each_branch(web: Web, store: Store) -> None:
    # Given main with a passing then a failing commit, and a branch with a queued one
    finish(store, claim(store, 1))
    red = claim(store, 2)
    finish(store, red, {"tests/test_a.py::test_ok": "failed"})
    queued = claim(store, 3, "feature/x")
    claim(store, 4, "main", repo="https://example.org/other.git")

    # Then the API lists both repositories, each branch with its newest commit
    repos = web.json("/api/repos")
    assert [r["repo"] for r in repos] == [REPO, "https://example.org/other.git"]
    project = repos[0]
    assert project["id"] == RID and project["commits"] == 3
    heads = {b["name"]: (b["head"]["commit"], b["head"]["status"]) for b in project["branches"]}
    assert heads == {"main": (red, "failed"), "feature/x": (queued, "queued")}
    assert [b["name"] for b in project["branches"]] == ["feature/x", "main"]  # newest first
    assert project["branches"][1]["badge"] == f"/badge/{RID}/main.svg"
    assert web.json(f"/api/repos/{RID}") == project

    # And the page links each repository and shows the states
    page = web.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert f'href="/repos/{RID}"' in page.text
    assert red[:12] in page.text and queued[:12] in page.text
    assert 'class="pill s-failed"' in page.text and 'class="pill s-queued"' in page.text


def test_commits_are_paged_newest_first(web: Web, store: Store) -> None:
    # Given 120 commits, every third one on branch dev, the newest five not reported yet
    shas = []
    for i in range(120):
        branch = "dev" if i % 3 == 0 else "main"
        shas.append(claim(store, i, branch))
        if i < 115:
            finish(store, shas[-1], branch=branch)
    newest = list(reversed(shas))

    # Then the API pages through them newest first
    first = web.json(f"/api/repos/{RID}/commits")
    assert first["total"] == 120 and first["limit"] == 50
    assert [c["commit"] for c in first["commits"]] == newest[:50]
    assert [c["status"] for c in first["commits"][:6]] == ["queued"] * 5 + ["passed"]
    assert first["commits"][5]["summary"] == {"total": 1, "passed": 1, "failed": 0,
                                              "errors": 0, "skipped": 0}
    third = web.json(f"/api/repos/{RID}/commits?page=3")
    assert [c["commit"] for c in third["commits"]] == newest[100:]
    assert web.json(f"/api/repos/{RID}/commits?offset=119&limit=5")["commits"][0][
        "commit"] == newest[119]
    assert web.json(f"/api/repos/{RID}/commits?offset=120")["commits"] == []
    dev = web.json(f"/api/repos/{RID}/commits?branch=dev&limit=10&offset=5")
    assert dev["total"] == 40
    assert [c["commit"] for c in dev["commits"]] == [s for s in newest if
                                                     shas.index(s) % 3 == 0][5:15]

    # And the pages show 50 rows each, 20 on the last, with links between them
    rows = re.compile(r'<tr data-sha="([0-9a-f]{40})" data-status="(\w+)">')
    page1 = web.get(f"/repos/{RID}")
    assert [m[0] for m in rows.findall(page1.text)] == newest[:50]
    assert f'href="/repos/{RID}?page=2" rel="next"' in page1.text
    assert "page 1 of 3" in page1.text
    page3 = web.get(f"/repos/{RID}?page=3")
    assert [m[0] for m in rows.findall(page3.text)] == newest[100:]
    assert "commits 101–120 of 120" in page3.text
    assert [m[0] for m in rows.findall(web.get(f"/repos/{RID}?offset=110").text)] \
        == newest[110:]
    on_dev = [m[0] for m in rows.findall(web.get(f"/repos/{RID}?branch=dev").text)]
    assert on_dev == [s for s in newest if shas.index(s) % 3 == 0]
    assert web.get(f"/repos/{RID}?branch=dev&page=2").status == 404  # 40 fit on one
    # The live view's fragment: the rows alone
    fragment = web.get(f"/repos/{RID}/rows?offset=0")
    assert fragment.text.lstrip().startswith("<tr") and "<html" not in fragment.text

    # Past the end or malformed: 404 and 400
    assert web.get(f"/repos/{RID}?page=4").status == 404
    assert "past the last page (3)" in web.get(f"/repos/{RID}?page=4").text
    for bad in ("page=0", "page=-1", "page=abc", "offset=-5"):
        name = bad.split("=")[0]
        page = web.get(f"/repos/{RID}?{bad}")
        assert (page.status, f"bad {name}" in page.text) == (400, True), bad
        reply = web.get(f"/api/repos/{RID}/commits?{bad}")
        assert reply.status == 400 and reply.json()["detail"].startswith(f"bad {name}: ")
    assert web.get(f"/api/repos/{RID}/commits?limit=1000").status == 400


def test_a_failing_commit_page_escapes_what_the_repository_wrote(web: Web,
                                                                 store: Store) -> None:
    # Given a failing report whose names, messages and output carry HTML
    commit = claim(store, "x", f"feat/{XSS}", subject=f"fix {XSS}\n\nbody",
                   author=f"Mallory {XSS}")
    bad_id = f"tests/test_x.py::test_{XSS}"
    report = finish(store, commit, {"tests/test_x.py::test_fine": "passed",
                                    bad_id: "failed", "tests/test_x.py::test_also": "passed"},
                    branch=f"feat/{XSS}", output=f"collected 3 items\n{XSS}\n\x1b[31mFAILED",
                    environment={"key": "0123abcd", "cache_hit": True, "python": "3.11.2"},
                    timings={"checkout": 0.1, "setup": 0.2, "test": 0.9})

    page = web.get(f"/repos/{RID}/commits/{commit[:8]}")
    assert page.status == 200
    # Then nothing from the repository is markup
    assert XSS not in page.text
    assert "<script" not in page.text.replace('<script src="/static/ciq.js" defer></script>', "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "\x1b" not in page.text
    # And the failure comes first, with its message, then the tests, then the output
    failures = page.text.index("Failures")
    assert page.text.index("test_&lt;script&gt;", failures) < page.text.index("Tests <span")
    assert page.text.index("AssertionError") < page.text.index("tests/test_x.py::test_fine")
    assert re.search(r'<pre class="output">collected 3 items\n&lt;script&gt;', page.text)
    for shown in ("FAILED", "python -m pytest", "0123abcd", "cached", "Python 3.11.2",
                  "w1@host", commit, f"/api/repos/{RID}/commits/{commit}",
                  f"/repos/{RID}/commits/{commit}/junit.xml"):
        assert shown in page.text or shown.lower() in page.text, shown
    assert report.summary.failed == 1

    # And the headers forbid inline script and sniffing
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    # Every place a repository's text shows is escaped: the lists too
    for path in ("/", f"/repos/{RID}", f"/repos/{RID}/tests", f"/repos/{RID}/rows"):
        text = web.get(path).text
        assert XSS not in text and "alert(1)" in text, path


def test_a_sharded_commit_shows_its_chunks_and_what_did_not_run(web: Web,
                                                               store: Store) -> None:
    commit = claim(store, "sharded")
    shards = {"count": 2, "imbalance": 1.5, "chunks": [
        {"index": 0, "tests": 1, "status": "failed", "worker": "w1@a", "seconds": 3.0,
         "attempts": 1},
        {"index": 1, "tests": 2, "status": "not run"}]}
    finish(store, commit, {"tests/test_a.py::test_red": "failed"}, shards=shards,
           not_run=("tests/test_b.py::test_" + XSS, "tests/test_b.py::test_two"))
    page = web.get(f"/repos/{RID}/commits/{commit}").text
    assert "2 chunks" in page and "imbalance 1.50" in page
    assert "w1@a" in page and 'class="pill s-not-run"' in page
    assert "Did not run" in page and str(escape(XSS)) in page and XSS not in page
    assert web.json(f"/api/repos/{RID}/commits/{commit}")["shards"] == shards


def test_the_json_of_a_commit_is_its_report(web: Web, store: Store) -> None:
    # Given a reported commit, a running one and a queued one
    done = claim(store, 1)
    report = finish(store, done, {"tests/t.py::test_a": "passed", "tests/t.py::test_b": "failed"})
    running = claim(store, 2)
    assert store.acquire(REPO, running, "run-2", 30, "w2@host") == 1
    queued = claim(store, 3)

    # Then the report's JSON is the report (by a prefix of its SHA too), state finished
    for name in (done, done[:7]):
        found = web.json(f"/api/repos/{RID}/commits/{name}")
        assert found.pop("state") == "finished"
        assert found == as_json(report.to_dict())
        assert Report.from_dict(found) == report
    # And the others say where they are
    run = web.json(f"/api/repos/{RID}/commits/{running}")
    assert (run["state"], run["worker"], run["attempts"]) == ("running", "w2@host", 1)
    assert web.json(f"/api/repos/{RID}/commits/{queued}")["state"] == "queued"
    page = web.get(f"/repos/{RID}/commits/{queued}")
    assert 'id="live"' in page.text and "queued" in page.text
    assert 'id="live"' not in web.get(f"/repos/{RID}/commits/{done}").text


def test_junit_xml_of_a_commit(web: Web, store: Store) -> None:
    commit = claim(store, 1)
    finish(store, commit, {"tests/t.py::test_a": "passed", f"tests/t.py::test_{XSS}": "failed"})
    reply = web.get(f"/repos/{RID}/commits/{commit}/junit.xml")
    assert reply.status == 200 and reply.headers["content-type"].startswith("application/xml")
    suite = SafeET.fromstring(reply.text.encode()).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases[f"test_{XSS}"].find("failure") is not None
    # A commit with no report has no JUnit XML yet
    queued = claim(store, 2)
    missing = web.get(f"/repos/{RID}/commits/{queued}/junit.xml")
    assert missing.status == 404 and "no report yet (queued)" in missing.json()["detail"]


def badge_of(web: Web, branch: str) -> tuple[str, str]:
    reply = web.get(f"/badge/{RID}/{branch}.svg")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("image/svg+xml")
    assert reply.headers["cache-control"] == "no-cache"
    svg = SafeET.fromstring(reply.text.encode())  # well-formed XML, branch and all
    ns = "{http://www.w3.org/2000/svg}"
    colour = svg.find(f".//{ns}rect[@class='status']").get("fill")
    texts = [t.text for t in svg.iter(f"{ns}text")]
    return texts[-1], colour


def test_the_badge_follows_the_newest_report_of_its_branch(web: Web, store: Store) -> None:
    branch = "release/1.x&<b>"
    quoted = urllib.request.quote(branch, safe="/")
    finish(store, claim(store, 1, branch), branch=branch)
    assert badge_of(web, quoted) == ("passing", "#2da44e")
    # A newer commit still running does not change it: the newest *finished* one counts
    running = claim(store, 2, branch)
    store.acquire(REPO, running, "r", 30, "w")
    assert badge_of(web, quoted) == ("passing", "#2da44e")
    finish(store, running, {"tests/t.py::test_a": "failed"}, branch=branch)
    assert badge_of(web, quoted) == ("failing", "#d73a49")
    finish(store, claim(store, 3, branch), branch=branch, status="error", message="no tests")
    assert badge_of(web, quoted) == ("error", "#b3287f")
    finish(store, claim(store, 4, branch), branch=branch, status="timeout")
    assert badge_of(web, quoted)[0] == "timeout"
    # Other branches are their own; one with nothing finished shows its state
    claim(store, 5, "main")
    assert badge_of(web, "main") == ("queued", "#6f8aa8")
    assert badge_of(web, "nope")[0] == "unknown"
    assert "&amp;&lt;b&gt;" in web.get(f"/badge/{RID}/{quoted}.svg").text
    status = web.json(f"/api/repos/{RID}/branches/{quoted}")
    assert (status["branch"], status["status"]) == (branch, "timeout")


def test_unknown_and_malformed_names(web: Web, store: Store) -> None:
    for twin in ("abcd" + "1" * 36, "abcd" + "2" * 36):
        assert store.claim(REPO, twin, "main", {})
    cases = {
        "/repos/0123456789abcdef": (404, "no repository has id"),
        "/repos/not-a-repo-id": (404, "no repository has id"),
        f"/repos/{RID}/commits/zz": (400, "not a commit id"),
        f"/repos/{RID}/commits/{'f' * 41}": (404, "no commit"),
        f"/repos/{RID}/commits/ffffff": (404, "no commit"),
        f"/repos/{RID}/commits/abcd": (400, "ambiguous"),
        f"/repos/{RID}/tests?n=0": (400, "bad n"),
        "/no/such/page": (404, "nothing at /no/such/page"),
    }
    for path, (status, words) in cases.items():
        page = web.get(path)
        assert (page.status, words in page.text) == (status, True), (path, page.text[-500:])
        assert page.headers["content-type"].startswith("text/html")
        api = web.get("/api" + path)
        assert api.status == status, path
        assert words.replace(" at /", " at /api/") in api.json()["detail"], path
    assert web.json(f"/api/repos/{RID}/commits/abcd1")["commit"] == "abcd" + "1" * 36
    # FastAPI's own docs load from a CDN: gone; ours is /api
    assert web.get("/docs").status == 404 and web.get("/redoc").status == 404


def test_test_history_marks_unstable_and_newly_broken_tests(web: Web, store: Store) -> None:
    # Given five reports, oldest first: one test flips, one breaks in the newest
    flaky = ["passed", "failed", "passed", "failed", "passed"]
    broken = ["passed", "passed", "passed", "passed", "failed"]
    shas = []
    for i in range(5):
        shas.append(claim(store, i))
        finish(store, shas[-1], {"tests/t.py::test_ok": "passed",
                                 "tests/t.py::test_flaky": flaky[i],
                                 "tests/t.py::test_broken": broken[i]})
    claim(store, 99)  # not reported: not in the history

    found = web.json(f"/api/repos/{RID}/tests")
    assert [c["commit"] for c in found["commits"]] == list(reversed(shas))
    tests = {t["id"]: t for t in found["tests"]}
    assert [t["id"] for t in found["tests"]] == ["tests/t.py::test_broken",
                                                 "tests/t.py::test_flaky",
                                                 "tests/t.py::test_ok"]
    assert tests["tests/t.py::test_broken"]["newly_broken"] is True
    assert tests["tests/t.py::test_broken"]["unstable"] is False
    assert tests["tests/t.py::test_flaky"]["unstable"] is True
    assert tests["tests/t.py::test_flaky"]["flakes"] == 0  # no same-commit evidence
    assert tests["tests/t.py::test_flaky"]["newly_broken"] is False
    assert tests["tests/t.py::test_flaky"]["outcomes"] == list(reversed(flaky))
    assert not tests["tests/t.py::test_ok"]["unstable"]
    # The window: the newest two only, where the flaky one flipped once
    two = web.json(f"/api/repos/{RID}/tests?n=2")
    assert len(two["commits"]) == 2
    assert not {t["id"]: t for t in two["tests"]}["tests/t.py::test_flaky"]["unstable"]

    page = web.get(f"/repos/{RID}/tests")
    rows = re.findall(r'<tr data-test="([^"]+)" class="([^"]*)">', page.text)
    assert [(t, c.split()) for t, c in rows] == [("tests/t.py::test_broken", ["newly"]),
                                                 ("tests/t.py::test_flaky", ["unstable"]),
                                                 ("tests/t.py::test_ok", [])]
    assert page.text.count('<td class="cell o-failed"') == 3


def test_the_api_page_lists_the_endpoints_without_a_cdn(web: Web, store: Store) -> None:
    schema = web.json("/openapi.json")
    assert {"/api/repos", "/api/repos/{rid}/commits", "/api/repos/{rid}/commits/{sha}",
            "/api/repos/{rid}/tests", "/badge/{rid}/{branch}.svg"} <= set(schema["paths"])
    page = web.get("/api")
    assert page.status == 200
    for path in schema["paths"]:
        assert path in page.text
    assert "http://" not in page.text.replace(web.url, "")
    assert "https://" not in page.text
    assert web.get("/static/ciq.js").headers["content-type"].startswith("text/javascript")


def test_redis_down_is_a_503_with_one_line(tmp_path: Path) -> None:
    # Given `ciq web` on a Redis of its own, which then stops
    server = RedisServer(tmp_path / "redis")
    server.start()
    settings = Settings(broker_url=server.url, result_backend=server.url,
                        data_dir=tmp_path / "data")
    web = start_web(settings, tmp_path / "web.log")
    try:
        assert web.get("/").status == 200
        assert web.json("/healthz") == {"status": "ok"}
        server.stop()
        assert web.get("/healthz").status == 503  # what Compose's health check sees
        # Then pages and API say so in one line, and the server stays up
        for path, kind in (("/", "text/html"), ("/api/repos", "application/json"),
                           (f"/repos/{RID}", "text/html"), (f"/badge/{RID}/main.svg", "")):
            reply = web.get(path)
            assert reply.status == 503, path
            assert reply.headers["content-type"].startswith(kind or "application/json")
            assert "Traceback" not in reply.text
        detail = web.get("/api/repos").json()["detail"]
        assert detail.startswith("cannot reach Redis") and "\n" not in detail
        assert "cannot reach Redis" in web.get("/").text
        assert "Traceback" not in web.log.read_text()
    finally:
        stop_process(web.proc)
        server.stop()
    # And SIGTERM stops it cleanly
    assert web.proc.returncode == 0


def test_ciq_web_on_a_port_in_use_is_one_line(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = run_ciq(settings, "web", "--port", str(port), timeout=20)
    assert done.returncode == 1
    assert done.stderr.strip() == f"ciq: port {port} is in use; choose another with --port"
    bad = run_ciq(settings, "web", "--port", "70000")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_ciq_web_without_redis_is_one_line(settings: Settings) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = ciq_env(settings, CIQ_BROKER_URL=dead, CIQ_RESULT_BACKEND=dead)
    done = subprocess.run([sys.executable, "-m", "ciq", "web", "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ciq: cannot reach Redis"), done.stderr


@pytest.mark.slow
def test_a_real_run_shows_on_the_pages(web: Web, make_repo, worker, store: Store,
                                       settings: Settings) -> None:
    # Given a repository with a passing and a failing test, run by a real worker
    repo = make_repo({
        "tests/test_real.py": (
            "def test_passes():\n    assert 1 + 1 == 2\n\n\n"
            "def test_fails():\n    print('<b>not bold</b>')\n    assert 'ciq' == 'cq'\n"
        ),
    }, message="add real tests\n\nwith a body")
    worker()
    done = run_ciq(settings, "enqueue", str(repo.path))
    assert done.returncode == 0, done.stderr
    commit = done.stdout.strip()
    report = wait_report(store, str(repo.path), commit, timeout=60)
    assert report.status == "failed"
    rid = repo_id(str(repo.path))

    # Then the list, the commit page and the JSON show that run
    rows = web.json(f"/api/repos/{rid}/commits")["commits"]
    assert [(r["commit"], r["status"], r["subject"]) for r in rows] == [
        (commit, "failed", "add real tests")]
    assert rows[0]["summary"]["passed"] == 1 and rows[0]["summary"]["failed"] == 1
    found = web.json(f"/api/repos/{rid}/commits/{commit[:10]}")
    assert found.pop("state") == "finished" and found == as_json(report.to_dict())
    page = web.get(f"/repos/{rid}/commits/{commit}").text
    assert page.index("tests/test_real.py::test_fails") < page.index(
        "tests/test_real.py::test_passes")
    failing = next(t for t in report.tests if t.outcome == "failed")
    assert str(escape(failing.message.splitlines()[0])) in page
    assert "<b>not bold</b>" not in page
    listing = web.get(f"/repos/{rid}").text
    assert commit[:12] in listing and "add real tests" in listing and "with a body" not in listing
    assert badge_of_repo(web, rid, "main") == "failing"


def badge_of_repo(web: Web, rid: str, branch: str) -> str:
    svg = SafeET.fromstring(web.get(f"/badge/{rid}/{branch}.svg").text.encode())
    return [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")][-1]


def test_history_rules_on_their_own() -> None:
    from ciq.web.history import history

    def reports(*columns: dict[str, str]) -> list[tuple[dict[str, Any], Report]]:
        """Reports newest first, one per column of outcomes."""
        found = []
        for i, outcomes in enumerate(columns):
            tests = tuple(TestResult(k, v) for k, v in outcomes.items())
            found.append(({"commit": sha(i)}, Report(REPO, sha(i), "passed",
                                                     tests=tests)))
        return found

    h = history(reports(
        {"new": "failed", "skip": "failed", "err": "error", "gone": "passed"},
        {"skip": "skipped", "err": "passed"},
        {"skip": "passed", "err": "error", "gone": "failed"},
    ))
    by_id = {t.id: t for t in h.tests}
    # A test new in the newest commit that fails there is failing, not newly broken
    assert (by_id["new"].newly_broken, by_id["new"].failing) == (False, True)
    # A skip between two runs is no flip; an error counts as a failure
    assert (by_id["skip"].flips, by_id["skip"].newly_broken) == (1, False)
    assert (by_id["err"].unstable, by_id["err"].newly_broken) == (True, True)
    assert by_id["gone"].outcomes == ("passed", None, "failed")
    assert [t.id for t in h.tests] == ["err", "new", "skip", "gone"]
    assert history([]).tests == ()
