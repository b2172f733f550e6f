"""What the CLI prints: the status table and a report, as text, in colour on a terminal.

Everything a repository wrote (subjects, branch names, test ids, messages, output) goes
through :func:`ciq.text.printable` first. Standard library only: `ciq status` renders
on its fast path, without click; the colours are click's (ANSI SGR) codes.
"""

from __future__ import annotations

from typing import Any

from ..flaky import runs_line
from ..report import Report
from ..text import age, printable

STATUS_COLOURS = {"passed": "green", "failed": "red", "error": "magenta", "timeout": "yellow",
                  "flaky": "yellow", "cancelled": "blue", "running": "cyan", "queued": "blue"}
_FG = {"red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35, "cyan": 36}


def style(text: str, fg: str | None = None, bold: bool = False, dim: bool = False) -> str:
    """``text`` in a colour, as click.style writes it."""
    codes = ([f"\x1b[{_FG[fg]}m"] if fg else []) + (["\x1b[1m"] if bold else []) + (
        ["\x1b[2m"] if dim else [])
    return "".join(codes) + text + "\x1b[0m"


def status_table(rows: list[dict[str, Any]], colour: bool) -> str:
    """The rows of `ciq status` as a table per repository (rows are grouped by it)."""
    lines: list[str] = []
    current = None
    header = f"{'SHA':<12}  {'BRANCH':<16} {'STATUS':<8} {'PASS':>5} {'FAIL':>5} " \
             f"{'TIME':>7}  {'WORKER':<16} {'AGE':>4}  SUBJECT"
    for r in rows:
        if r["repo"] != current:
            current = r["repo"]
            if lines:
                lines.append("")
            lines += [style(current, bold=True) if colour else current, header]
        s = r["summary"] or {}
        passed = str(s["passed"]) if s else "-"
        failed = str(s["failed"] + s["errors"]) if s else "-"
        took = f"{r['duration']:.1f}s" if r["duration"] is not None else "-"
        state = f"{r['status']:<8}"
        if colour:
            state = style(state, fg=STATUS_COLOURS.get(r["status"]))
        branch = printable(r["branch"] or "-")[:16]
        worker = printable(r["worker"] or "-")[:16]
        lines.append(
            f"{r['commit'][:12]}  {branch:<16} {state} {passed:>5} {failed:>5} {took:>7}  "
            f"{worker:<16} {age(r['enqueued_at'], unknown='-'):>4}  "
            f"{printable(r['subject'])[:60]}")
    return "\n".join(lines)


def report_text(r: Report, colour: bool) -> str:
    """A report as `ciq report` prints it: the verdict first, then failures, then output."""
    def paint(text: str, **kw: Any) -> str:
        return style(text, **kw) if colour else text

    s = r.summary
    out = [f"{paint(r.status.upper(), fg=STATUS_COLOURS[r.status], bold=True)}  "
           f"{r.commit}  {printable(r.branch or '-')}  {r.repo}",
           f"{s.total} tests: {s.passed} passed, {s.failed} failed, {s.errors} errors, "
           f"{s.skipped} skipped in {r.duration:.2f}s on {r.worker} "
           f"(attempt {r.attempts}, {r.finished_at})"]
    if r.command:
        out.append(f"command: {printable(r.command)}")
    if r.environment:
        e, t = r.environment, r.timings
        how = "cached" if e.get("cache_hit") else f"built in {e.get('build_seconds', 0):.1f}s"
        out.append(f"environment: Python {e.get('python')}, {e.get('key')} ({how}); "
                   f"setup {t.get('setup', 0):.2f}s, tests {t.get('test', 0):.2f}s")
    if r.shards:
        chunks = r.shards.get("chunks", [])
        ran = ", ".join(f"{c.get('worker') or '-'} {c.get('seconds', 0):.1f}s"
                        for c in chunks if "seconds" in c)
        imbalance = r.shards.get("imbalance")
        out.append(f"sharded: {r.shards.get('count')} chunks"
                   + (f", imbalance {imbalance:.2f} (longest ÷ mean)" if imbalance else "")
                   + (f"; {ran}" if ran else ""))
    if r.message:
        out.append(printable(r.message))
    if r.not_run:
        out.append(f"not run ({len(r.not_run)}): "
                   + ", ".join(printable(i) for i in r.not_run[:10])
                   + (" ..." if len(r.not_run) > 10 else ""))
    for bad in (t for t in r.tests if t.outcome in ("failed", "error")):
        muted = r.quarantined.get(bad.id)
        if muted is not None:  # its failure did not decide the status
            out.append(paint(f"\n{bad.outcome.upper()} (quarantined) {printable(bad.id)}",
                             fg="yellow"))
            out.append(f"    quarantined by {printable(muted.get('owner'))} until "
                       f"{printable(muted.get('expires_at'))}: {printable(muted.get('reason'))}")
        else:
            out.append(paint(f"\n{bad.outcome.upper()} {printable(bad.id)}", fg="red"))
        out.append("    " + printable(bad.message).replace("\n", "\n    ")[:2000])
        if bad.attempts:
            out.append(f"    {bad.verdict}: {printable(runs_line(bad))}")
    for flake in r.flaky:
        out.append(paint(f"\n{flake.verdict.upper()} {printable(flake.id)}", fg="yellow"))
        out.append(f"    {printable(runs_line(flake))}")
        first = next((a for a in flake.attempts if a.outcome != "passed"), None)
        if first is not None:
            out.append("    " + printable(first.message).replace("\n", "\n    ")[:2000])
    if r.status not in ("passed", "flaky") and r.output:
        out.append(paint("\n--- output ---", dim=True))
        out.append(printable(r.output)[-8000:])
    return "\n".join(out)
