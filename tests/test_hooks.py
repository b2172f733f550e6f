"""Git hooks (`ciq hook install`): a commit or a push is enqueued the moment it lands,
with no observer, and never waits for ciq or fails because of it."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ciq import hooks, urls
from ciq.settings import Settings
from ciq.store import Store

from .helpers import (
    PASSING,
    GitRepo,
    assert_one_line_error,
    ciq_env,
    free_port,
    run_ciq,
    wait_for,
    wait_report,
)

FOREIGN = "#!/bin/sh\necho \"$0 ran\" >> \"$(git rev-parse --git-dir)/foreign.log\"\n"


def developer_env() -> dict[str, str]:
    """A developer's shell: no CIQ_* variables at all."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CIQ_")}


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """git as a developer runs it (hooks on, no CIQ_* variables); must succeed."""
    done = subprocess.run(["git", *args], cwd=cwd, env=developer_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def commit(repo: GitRepo, message: str, files: dict[str, str] | None = None) -> float:
    """`git commit` in a developer's environment; returns the seconds it took."""
    for name, text in (files or {}).items():
        (repo.path / name).parent.mkdir(parents=True, exist_ok=True)
        (repo.path / name).write_text(text)
    git(repo.path, "add", "-A")
    started = time.monotonic()
    git(repo.path, "commit", "-q", "--allow-empty", "-m", message)
    return time.monotonic() - started


def log_text(git_dir: Path) -> str:
    try:
        return (git_dir / hooks.LOG_NAME).read_text()
    except FileNotFoundError:
        return ""


def wait_log(git_dir: Path, *words: str, timeout: float = 30) -> str:
    wait_for(lambda: all(w in log_text(git_dir) for w in words), timeout,
             f"{words} in the hook log:\n{log_text(git_dir)}")
    return log_text(git_dir)


def install(settings: Settings, repo: Path | str, *args: str) -> str:
    """`ciq hook install`, which must succeed with the test's Redis baked in (a hook
    without it would enqueue into the default Redis at 127.0.0.1:6379)."""
    done = run_ciq(settings, "hook", "install", str(repo), *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_ours(path: Path, settings: Settings) -> None:
    text = path.read_text()
    assert hooks.is_ours(path)
    assert f"CIQ_BROKER_URL={shlex.quote(settings.broker_url)}; export" in text
    assert path.stat().st_mode & stat.S_IXUSR


@pytest.mark.slow
def test_a_commit_is_tested_without_an_observer(
    settings: Settings, store: Store, make_repo, worker
) -> None:
    # Given ciq's post-commit hook in a working repository, and a worker
    repo = make_repo(PASSING)
    out = install(settings, repo.path)
    hook = repo.path / ".git" / "hooks" / "post-commit"
    assert f"post-commit hook installed {hook}" in out
    assert "ciq hook uninstall" in out
    assert_ours(hook, settings)
    # which calls this ciq by absolute path
    assert f"{shlex.join(hooks.ciq_command())} enqueue --branch" in hook.read_text()
    worker()
    # When a developer commits with plain git and no CIQ_* variables (no observer runs)
    took = commit(repo, "add a second test", {"tests/test_two.py": "def test_two():\n    pass\n"})
    sha = repo.head()
    # Then the commit did not wait for ciq, and its report arrives
    assert took < 5
    report = wait_report(store, str(repo.path), sha, timeout=120)
    assert report.status == "passed" and report.summary.passed == 2
    assert report.branch == "main"
    assert f"post-commit main {sha}: enqueued" in wait_log(repo.path / ".git", sha)


@pytest.mark.slow
def test_pushed_branches_are_tested_and_tags_and_deletions_are_not(
    settings: Settings, store: Store, make_repo, worker, tmp_path: Path
) -> None:
    # Given a bare server repository with ciq's hook (post-receive: the default there)
    server = tmp_path / "server.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(server))
    assert f"post-receive hook installed {server / 'hooks' / 'post-receive'}" in install(
        settings, server)
    assert_ours(server / "hooks" / "post-receive", settings)
    clone = make_repo(PASSING)
    clone.git("remote", "add", "origin", str(server))
    worker()
    name = str(server)

    # When a new branch is pushed: its head is tested, as the observer would
    pushed = git(clone.path, "push", "-q", "origin", "main")
    assert "ciq: testing 1 new commit(s)" in pushed.stderr
    assert wait_report(store, name, clone.head(), timeout=120).branch == "main"

    # When two commits are pushed at once: each is tested, on main
    commit(clone, "second", {"tests/test_b.py": "def test_b():\n    pass\n"})
    second = clone.head()
    commit(clone, "third", {"tests/test_c.py": "def test_c():\n    pass\n"})
    third = clone.head()
    pushed = git(clone.path, "push", "-q", "origin", "main")
    assert "ciq: testing 2 new commit(s)" in pushed.stderr
    for sha in (second, third):
        report = wait_report(store, name, sha, timeout=120)
        assert report.status == "passed" and report.branch == "main"
    assert [r["commit"] for r in store.recent(name)] == [third, second, clone.git(
        "rev-parse", "HEAD~2")]

    # When a tag (on a commit of no branch) is pushed, and a branch is deleted
    clone.git("checkout", "-q", "-b", "side")
    tagged = clone.commit({"x": "1"}, "tagged only")
    clone.git("tag", "v1")
    git(server, "branch", "gone", "main")
    by_tag = git(clone.path, "push", "-q", "origin", "v1")
    by_delete = git(clone.path, "push", "-q", "origin", ":gone")
    # Then the hook enqueues nothing
    assert "ciq:" not in by_tag.stderr + by_delete.stderr
    time.sleep(1)
    assert store.commit(name, tagged) == {}
    assert len(store.recent(name)) == 3
    assert log_text(server).count(": enqueued") == 3


def test_redis_away_never_fails_or_delays_a_commit(settings: Settings, make_repo) -> None:
    # Given a hook whose Redis is a closed port
    dead = f"redis://127.0.0.1:{free_port()}/0"
    gone = Settings(broker_url=dead, result_backend=dead, data_dir=settings.data_dir)
    repo = make_repo(PASSING)
    install(gone, repo.path)
    # When a developer commits
    took = commit(repo, "while Redis is down")
    sha = repo.head()
    # Then the commit succeeds at once, and the log says why nothing was enqueued
    assert took < 5
    text = wait_log(repo.path / ".git", "NOT enqueued")
    line = next(line for line in text.splitlines() if sha in line)
    assert f"post-commit main {sha}: NOT enqueued: ciq: cannot reach Redis" in line
    assert "the commit itself is safe" in line and "ciq observe" in line
    assert f"enqueue {repo.path} {sha} --branch main" in line


def test_a_detached_head_is_logged_not_enqueued(settings: Settings, store: Store,
                                                make_repo) -> None:
    repo = make_repo(PASSING)
    install(settings, repo.path)
    repo.git("checkout", "-q", "--detach")
    commit(repo, "in a rebase")
    sha = repo.head()
    assert "not on a branch" in wait_log(repo.path / ".git", sha)
    assert store.commit(str(repo.path), sha) == {}


def test_another_programs_hook_is_never_overwritten(settings: Settings, store: Store,
                                                    make_repo) -> None:
    # Given a post-commit hook of another program
    repo = make_repo(PASSING)
    hook = repo.path / ".git" / "hooks" / "post-commit"
    hook.write_text(FOREIGN)
    hook.chmod(0o750)
    # When ciq is asked to install its own: one line that says what to do, nothing changed
    done = run_ciq(settings, "hook", "install", str(repo.path))
    assert_one_line_error(done, str(hook), "another program's hook", "--force")
    assert hook.read_text() == FOREIGN and stat.S_IMODE(hook.stat().st_mode) == 0o750
    # And uninstall leaves it alone too
    done = run_ciq(settings, "hook", "uninstall", str(repo.path))
    assert done.returncode == 0 and "nothing to do" in done.stdout
    assert hook.read_text() == FOREIGN

    # When installed with --force: theirs is kept and still runs, before ciq's
    out = install(settings, repo.path, "--force")
    saved = hook.with_name("post-commit.pre-ciq")
    assert f"runs {saved}" in out
    assert saved.read_text() == FOREIGN and stat.S_IMODE(saved.stat().st_mode) == 0o750
    assert_ours(hook, settings)
    commit(repo, "both hooks run")
    sha = repo.head()
    assert f"{saved} ran" in (repo.path / ".git" / "foreign.log").read_text()
    wait_log(repo.path / ".git", f"main {sha}: enqueued")
    assert store.commit(str(repo.path), sha)["branch"] == "main"

    # When uninstalled: theirs is back in its place, as it was
    done = run_ciq(settings, "hook", "uninstall", str(repo.path))
    assert done.returncode == 0 and f"removed {hook}" in done.stdout
    assert "put back" in done.stdout
    assert hook.read_text() == FOREIGN and stat.S_IMODE(hook.stat().st_mode) == 0o750
    assert not saved.exists()


def test_install_twice_and_uninstall(settings: Settings, make_repo) -> None:
    repo = make_repo(PASSING)
    hook = repo.path / ".git" / "hooks" / "post-commit"
    install(settings, repo.path)
    first = hook.read_text()
    # Installing again changes nothing and says so
    assert "already installed" in install(settings, repo.path)
    assert hook.read_text() == first
    assert sorted(p.name for p in hook.parent.iterdir() if not p.name.endswith(".sample")) == [
        "post-commit"]
    # With other settings, ciq's own hook is rewritten
    db3 = settings.broker_url.rsplit("/", 1)[0] + "/3"
    other = Settings(broker_url=db3, result_backend=db3, data_dir=settings.data_dir)
    assert "hook updated" in install(other, repo.path)
    assert f"CIQ_BROKER_URL={shlex.quote(db3)}; export" in hook.read_text()
    # `show` tells whose hooks these are
    shown = run_ciq(settings, "hook", "show", str(repo.path))
    assert shown.returncode == 0
    assert f"post-commit   ciq's {hook}" in shown.stdout
    assert "post-receive  none" in shown.stdout
    # uninstall removes ours, once
    done = run_ciq(settings, "hook", "uninstall", str(repo.path))
    assert done.returncode == 0 and f"removed {hook}" in done.stdout and not hook.exists()
    again = run_ciq(settings, "hook", "uninstall", str(repo.path))
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_core_hooks_path_quoting_and_a_shared_hooks_folder(
    settings: Settings, store: Store, make_repo, tmp_path: Path
) -> None:
    # Given two repositories sharing one hooks folder (core.hooksPath), one of them at a
    # path a shell would split, on a branch with shell characters in its name
    shared = tmp_path / "shared hooks"
    mine = GitRepo(tmp_path / "it's mine $HOME")
    theirs = make_repo()
    for repo in (mine, theirs):
        repo.git("config", "core.hooksPath", str(shared))
    mine.git("checkout", "-q", "-b", "fix&'it'")
    install(settings, mine.path)
    hook = shared / "post-commit"
    assert_ours(hook, settings)
    assert not (mine.path / ".git" / "hooks" / "post-commit").exists()
    # When each repository gets a commit
    commit(theirs, "not for ciq")
    commit(mine, "for ciq")
    # Then only the one the hook was installed for is enqueued, with its branch
    sha = mine.head()
    wait_log(mine.path / ".git", f"fix&'it' {sha}: enqueued")
    assert store.commit(str(mine.path), sha)["branch"] == "fix&'it'"
    assert store.commit(str(theirs.path), theirs.head()) == {}
    assert log_text(theirs.path / ".git") == ""


def test_a_relative_core_hooks_path(settings: Settings, make_repo) -> None:
    repo = make_repo(PASSING)
    repo.git("config", "core.hooksPath", ".githooks")
    assert f"installed {repo.path / '.githooks' / 'post-commit'}" in install(settings, repo.path)
    commit(repo, "through .githooks")
    wait_log(repo.path / ".git", f"main {repo.head()}: enqueued")


@pytest.mark.parametrize("args, words", [
    (["install", "https://example.org/lib.git"], ["is a URL", "local repository"]),
    (["install", "git@example.org:lib.git"], ["is a URL"]),
    (["uninstall", "ssh://example.org/lib.git"], ["is a URL"]),
    (["install", "/no/such/repo"], ["no such directory"]),
    (["show", "/no/such/repo"], ["no such directory"]),
    (["install", "--", "--upload-pack=x"], ["not a repository"]),
    (["install"], ["Missing argument"]),
    (["install", ".", "--kind", "pre-commit"], ["--kind"]),
])  # fmt: skip
def test_bad_arguments_are_one_line(settings: Settings, args: list[str], words: list[str]
                                    ) -> None:
    assert_one_line_error(run_ciq(settings, "hook", *args), *words)


def test_not_a_repository_or_not_its_top(settings: Settings, make_repo, tmp_path: Path
                                         ) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    assert_one_line_error(run_ciq(settings, "hook", "install", str(folder)),
                          "not a git repository")
    repo = make_repo(PASSING)
    assert_one_line_error(run_ciq(settings, "hook", "install", str(repo.path / "tests")),
                          "inside the repository", str(repo.path))
    assert_one_line_error(run_ciq(settings, "hook", "install", str(repo.path / ".git")),
                          "git folder")
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    assert_one_line_error(run_ciq(settings, "hook", "install", str(bare), "--kind",
                                  "post-commit"), "bare", "--kind post-receive")
    assert not (repo.path / ".git" / "hooks" / "post-commit").exists()
    assert not (bare / "hooks" / "post-commit").exists()


def test_enqueue_records_a_given_branch(settings: Settings, store: Store, make_repo) -> None:
    repo = make_repo(PASSING)
    first = repo.head()
    second = repo.commit({"x": "1"}, "second")
    # the fast path (what hooks run) and click's, which reads options anywhere
    for args, sha, branch in (
        (["--branch", "release/1.x", str(repo.path), first], first, "release/1.x"),
        ([str(repo.path), second, "--branch=a,b"], second, "a,b"),
    ):
        done = run_ciq(settings, "enqueue", *args)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == sha
        assert store.commit(str(repo.path), sha)["branch"] == branch
    for bad in ("-x", "two words"):
        assert_one_line_error(run_ciq(settings, "enqueue", "--branch", bad, str(repo.path)),
                              "not a valid branch name")


def test_what_a_hook_fixes(settings: Settings, tmp_path: Path) -> None:
    url = settings.broker_url
    # only what the installer was given: the committer's environment decides the rest
    assert hooks.pinned(settings, {}) == {}
    assert hooks.pinned(settings, {"CIQ_BROKER_URL": url}) == {
        "CIQ_BROKER_URL": url, "CIQ_RESULT_BACKEND": url}
    assert hooks.pinned(Settings(queue="ci"), {"CIQ_QUEUE": "ci"}) == {"CIQ_QUEUE": "ci"}
    assert set(hooks.pinned(settings)) == {"CIQ_BROKER_URL", "CIQ_RESULT_BACKEND", "CIQ_QUEUE"}
    assert urls.redacted("redis://u:s3cret@h:1/0") == "redis://u:***@h:1/0"
    assert urls.redacted("redis://:s3cret@h:1/0") == "redis://:***@h:1/0"
    assert urls.redacted(url) == url
    # this ciq, by absolute path; a venv's python is not resolved to its base
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    assert hooks.ciq_command(str(venv / "python")) == [str(venv / "python"), "-m", "ciq"]
    (venv / "ciq").write_text("#!/bin/sh\n")
    (venv / "ciq").chmod(0o755)
    assert hooks.ciq_command(str(venv / "python")) == [str(venv / "ciq")]


def test_a_password_in_the_url_keeps_the_hook_private(settings: Settings, make_repo) -> None:
    repo = make_repo(PASSING)
    url = "redis://:s3cret@127.0.0.1:1/0"
    secret = Settings(broker_url=url, result_backend=url, data_dir=settings.data_dir)
    out = install(secret, repo.path)
    assert "s3cret" not in out and "redis://:***@127.0.0.1:1/0" in out
    hook = repo.path / ".git" / "hooks" / "post-commit"
    assert stat.S_IMODE(hook.stat().st_mode) == 0o700


@pytest.mark.slow
def test_up_hook_points_the_hook_at_its_private_redis(settings: Settings, make_repo,
                                                       tmp_path: Path) -> None:
    repo = make_repo(PASSING)
    env = {k: v for k, v in ciq_env(settings).items()
           if k not in ("CIQ_BROKER_URL", "CIQ_RESULT_BACKEND")}
    env["CIQ_DATA_DIR"] = str(tmp_path / "up")
    done = subprocess.run([sys.executable, "-m", "ciq", "up", str(repo.path), "--hook", "--once"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    url = done.stdout.split("private Redis at ", 1)[1].split()[0]
    hook = repo.path / ".git" / "hooks" / "post-commit"
    assert f"{hook} now enqueues each new commit at once (Redis {url};" in done.stdout
    assert f"ciq hook uninstall {repo.path}" in done.stdout
    assert f"CIQ_BROKER_URL={shlex.quote(url)}; export" in hook.read_text()
    # A URL cannot take a hook; nothing is started
    bad = subprocess.run([sys.executable, "-m", "ciq", "up", "https://example.org/x.git",
                          "--hook"], env=env, capture_output=True, text=True, timeout=60)
    assert_one_line_error(bad, "is a URL")
