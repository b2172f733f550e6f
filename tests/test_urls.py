"""URLs as ciq prints them: never a password."""

from __future__ import annotations


def test_printed_urls_hide_every_password() -> None:
    from ciq.urls import redacted

    url = "sentinel://:pw1@h1:26379/0;sentinel://:pw2@h2:26379/0?master_name=m"
    assert redacted(url) == ("sentinel://:***@h1:26379/0;"
                             "sentinel://:***@h2:26379/0?master_name=m")
    assert redacted("redis://u:secret@h:6379/0") == "redis://u:***@h:6379/0"


def test_repositories_named_by_url_or_path() -> None:
    from ciq.urls import is_url, repo_name

    assert is_url("https://example.org/team/lib.git") and is_url("git@example.org:team/lib")
    assert not is_url("/srv/git/lib") and not is_url("lib")
    assert repo_name("https://example.org/team/lib.git/") == "lib"
    assert repo_name("git@example.org:lib.git") == "lib"
    assert repo_name("/srv/git/lib") == "lib"
