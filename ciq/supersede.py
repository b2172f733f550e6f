"""What happens to a branch's older commits when a newer one is claimed: the policy per
branch, and the small pure decisions around it. Standard library only (the push path,
`ciq enqueue`, decides the policy while it claims).

Three policies:

``cancel``
    The default of every branch but the default one. When a newer commit of the branch
    is claimed, its older commits without a report are marked superseded in the same
    atomic step (``lua/claim.lua``: ``superseded_by``, ``superseded_at`` in the commit's
    hash). A worker that takes one stores a `cancelled` report at once, without a
    checkout; a running one stops at its next heartbeat (``lua/renew.lua``) and keeps
    the results it has. Nobody reads the 19 runs of a 20-push burst.
``deprioritise``
    The default of the default branch: every commit is still tested, newest first. A
    worker that takes a commit while a newer commit of its branch waits unstarted puts
    it on the queue's backfill list (``lua/acquire.lua``), which workers take only when
    nothing else waits.
``none``
    Every commit in the order it was pushed.

The policy is decided when a commit is claimed, from the operator's settings of the
repository (a commit's own settings are read only once it runs, too late for this).
"""

from __future__ import annotations

import fnmatch
from typing import Any

POLICIES = ("cancel", "deprioritise", "none")
#: The policy of a branch that is not the repository's default branch.
DEFAULT_POLICY = "cancel"
#: The policy of the repository's default branch: never cancel there by default.
DEFAULT_BRANCH_POLICY = "deprioritise"
#: Branch names taken as the default branch when the operator names none.
DEFAULT_BRANCHES = ("main", "master")
#: kombu's Redis transport keeps one list per priority step of a queue, named
#: ``queue + sep + str(step)`` (priority 0: the bare name), and its BRPOP names a
#: queue's lists in step order, so the list of step 9 is taken from only when the
#: lower steps' lists are empty (kombu/transport/redis.py 5.7: ``sep = '\x06\x16'``,
#: ``PRIORITY_STEPS = [0, 3, 6, 9]``, ``Channel._q_for_pri``, ``Channel._brpop_start``).
#: ciq keeps ``sep`` and ``priority_steps`` at their defaults (worker_config).
PRIORITY_SEP = "\x06\x16"
BACKFILL_PRIORITY = 9


def is_default_branch(branch: str, config: dict[str, Any] | None) -> bool:
    """Whether ``branch`` is the repository's default branch: the operator's
    ``default_branch``, else "main" or "master"."""
    named = (config or {}).get("default_branch")
    if isinstance(named, str) and named:
        return branch == named
    return branch in DEFAULT_BRANCHES


def policy_for(branch: str | None, config: dict[str, Any] | None) -> str:
    """The policy of ``branch`` under the operator's settings of its repository (as
    stored: :meth:`ciq.repoconfig.RepoConfig.to_dict`). A commit of no branch (`ciq
    enqueue` of a bare SHA) supersedes nothing and is never superseded."""
    if not branch:
        return "none"
    config = config or {}
    if is_default_branch(branch, config):
        chosen = config.get("supersede_default", DEFAULT_BRANCH_POLICY)
    else:
        chosen = config.get("supersede", DEFAULT_POLICY)
        for pattern, policy in (config.get("supersede_branches") or {}).items():
            if fnmatch.fnmatchcase(branch, pattern):
                chosen = policy
                break
    # Stored settings were checked when stored; an unknown value keeps the old way.
    return chosen if chosen in POLICIES else "none"


def reason(by: str, at: str) -> str:
    """The message of a superseded commit's `cancelled` report."""
    return f"superseded by {by[:12]}, pushed at {at}"


def backfill_list(queue: str) -> str:
    """The broker list of ``queue``'s backfill (its lowest priority step)."""
    return f"{queue}{PRIORITY_SEP}{BACKFILL_PRIORITY}"


def problem(value: Any) -> str | None:
    """What is wrong with ``value`` as a policy, or None."""
    if value in POLICIES:
        return None
    return " or ".join(f'"{p}"' for p in POLICIES)
