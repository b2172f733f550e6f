"""What ciq accepts as a revision, a SHA and a repository before git sees it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciq.errors import BadInput
from ciq.gitrepo import normalise_repo, validate_rev, validate_sha, validate_sha_prefix


@pytest.mark.parametrize("value", ["--upload-pack=touch x", "-x", "HEAD..main", "a b", "",
                                   "main;rm", "$(id)"])
def test_revisions_that_git_could_misread_are_refused(value: str) -> None:
    with pytest.raises(BadInput):
        validate_rev(value)


def test_plain_revisions_pass() -> None:
    for rev in ("HEAD", "main", "v1.0", "HEAD~2", "feature/x", "refs/heads/main", "abc123^"):
        assert validate_rev(rev) == rev


def test_shas_are_full_hex_and_prefixes_have_four_digits() -> None:
    assert validate_sha("A" * 40) == "a" * 40
    for bad in ("a" * 39, "g" * 40, "--all", "-" + "a" * 39):
        with pytest.raises(BadInput):
            validate_sha(bad)
    assert validate_sha_prefix("abcd") == "abcd"
    with pytest.raises(BadInput):
        validate_sha_prefix("abc")


def test_repositories_normalise(tmp_path: Path) -> None:
    assert normalise_repo(str(tmp_path) + "/") == str(tmp_path.resolve())
    assert normalise_repo("https://example.org/lib.git/") == "https://example.org/lib.git"
    assert normalise_repo("git@example.org:team/lib.git") == "git@example.org:team/lib.git"
    for bad in ("--upload-pack=x", "ext::sh -c touch% /tmp/pwned", "/no/such/dir",
                "https://exa mple.org/x"):
        with pytest.raises(BadInput):
            normalise_repo(bad)
