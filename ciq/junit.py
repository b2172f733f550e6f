"""JUnit XML in and out.

The XML read here is written by the code under test, so it is untrusted: it is parsed
with defusedxml (no DTDs, no entities, no external references) and its size is capped
before parsing.
"""

from __future__ import annotations

import hashlib
import os
import re
from xml.etree.ElementTree import Element, SubElement, tostring

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .errors import JUnitError
from .report import Report, TestResult
from .text import xml_safe

#: Bytes of JUnit XML ciq agrees to parse; a larger file is junk or an attack.
MAX_JUNIT_BYTES = 50 * 1024 * 1024
#: Characters of a failure message kept per test.
MAX_MESSAGE_CHARS = 4000
#: How the error of a run that wrote no JUnit XML at all starts.
NO_JUNIT = "no JUnit XML was written"
#: Test cases ciq keeps from one run: more is junk (or a suite no report can hold).
MAX_TESTS = 100_000
#: Characters of a test id kept; a longer one is cut and made unique by a digest.
MAX_ID_CHARS = 1000


def _test_id(case: Element) -> str:
    name = case.get("name", "?")
    classname = case.get("classname", "")
    path = case.get("file")
    if path:
        # pytest's xunit1 output: classname "tests.test_x.TestY", file "tests/test_x.py".
        module = path[:-3].replace("/", ".") if path.endswith(".py") else ""
        inside = module and classname.startswith(module)
        rest = classname[len(module) :].lstrip(".") if inside else ""
        return _capped("::".join(p for p in (path, *rest.split(".")) if p) + "::" + name)
    return _capped(f"{classname}::{name}" if classname else name)


def _capped(test_id: str) -> str:
    if len(test_id) <= MAX_ID_CHARS:
        return test_id
    digest = hashlib.sha256(test_id.encode("utf-8", "replace")).hexdigest()[:12]
    return f"{test_id[: MAX_ID_CHARS - 20]}…[{digest}]"


def _outcome(case: Element) -> tuple[str, str]:
    for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        child = case.find(tag)
        if child is not None:
            message = child.get("message") or ""
            text = (child.text or "").strip()
            if outcome != "skipped" and text:
                message = f"{message}\n{text}" if message else text
            return outcome, message[:MAX_MESSAGE_CHARS]
    return "passed", ""


def parse_junit(path: str | os.PathLike[str]) -> list[TestResult]:
    """Return the test results in a JUnit XML file, in file order."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise JUnitError(f"{NO_JUNIT} ({exc.strerror})") from None
    if size > MAX_JUNIT_BYTES:
        raise JUnitError(f"JUnit XML is {size} bytes, over the {MAX_JUNIT_BYTES} byte limit")
    results: list[TestResult] = []
    try:
        # Streamed, each test case dropped once read: a file near the size cap would
        # otherwise cost the worker ten times its size in memory.
        events = SafeET.iterparse(path, events=("start", "end"), forbid_dtd=True)
        _, root = next(events)
        if root.tag not in ("testsuites", "testsuite"):
            raise JUnitError(f"JUnit XML has root <{root.tag[:40]}>, not <testsuites>")
        for event, case in events:
            if event != "end" or case.tag != "testcase":
                continue
            if len(results) == MAX_TESTS:
                raise JUnitError(f"JUnit XML lists more than {MAX_TESTS} test cases")
            outcome, message = _outcome(case)
            try:
                duration = max(0.0, float(case.get("time") or 0.0))
            except ValueError:
                duration = 0.0
            results.append(TestResult(_test_id(case), outcome, round(duration, 6), message))
            case.clear()
            root.clear()
    except (SafeET.ParseError, DefusedXmlException, ValueError, StopIteration) as exc:
        raise JUnitError(f"JUnit XML is not readable: {exc}") from None
    return results


#: An exception's name at the start of a failure message ("ValueError: ..."): its type.
_TYPE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Failed|Interrupt))\b")


def _reruns(case: Element, t: TestResult) -> None:
    """The failed runs of a rerun test, the way Surefire writes them (and Jenkins, GitLab
    read them): ``<flakyFailure>``/``<flakyError>`` in a test that passed in the end,
    ``<rerunFailure>``/``<rerunError>`` in one that kept failing; message and type as
    attributes, the text in ``<stackTrace>``."""
    if not t.attempts:
        return
    prefix = "flaky" if t.outcome == "passed" else "rerun"
    failed = [a for a in t.attempts if a.outcome in ("failed", "error")]
    if prefix == "rerun":
        failed = failed[1:]  # the first is the testcase's own <failure>
    for a in failed:
        tag = prefix + ("Failure" if a.outcome == "failed" else "Error")
        first = a.message.split("\n", 1)[0]
        found = _TYPE.match(first)
        child = SubElement(case, tag, message=xml_safe(first),
                           type=xml_safe(found.group(1) if found else a.outcome))
        SubElement(child, "stackTrace").text = xml_safe(a.message)


def to_junit(report: Report) -> str:
    """Render a report as JUnit XML (for `ciq report --junit`)."""
    s = report.summary
    suites = Element("testsuites")
    suite = SubElement(
        suites,
        "testsuite",
        name=f"{report.repo}@{report.commit[:12]}",
        tests=str(s.total),
        failures=str(s.failed),
        errors=str(s.errors + (1 if report.status in ("error", "timeout") else 0)),
        skipped=str(s.skipped),
        time=f"{report.duration:.3f}",
        timestamp=report.started_at or "",
        hostname=report.worker or "",
    )
    for t in report.tests:
        path, _, name = t.id.rpartition("::")
        case = SubElement(suite, "testcase", classname=xml_safe(path), name=xml_safe(name),
                          time=f"{t.duration:.3f}")
        muted = report.quarantined.get(t.id)
        if muted is not None:  # its failure did not decide the report's status
            SubElement(SubElement(case, "properties"), "property", name="ciq.quarantined",
                       value=xml_safe(f"{muted.get('owner', '')} until "
                                      f"{muted.get('expires_at', '')}: {muted.get('reason', '')}"))
        if t.outcome in ("failed", "error", "skipped"):
            tag = {"failed": "failure", "error": "error", "skipped": "skipped"}[t.outcome]
            child = SubElement(case, tag, message=xml_safe(t.message.split("\n", 1)[0]))
            child.text = xml_safe(t.message)
        _reruns(case, t)
    if report.status in ("error", "timeout"):
        case = SubElement(suite, "testcase", classname="ciq", name=report.status)
        SubElement(case, "error", message=xml_safe(report.message)).text = xml_safe(report.output)
    return tostring(suites, encoding="unicode", xml_declaration=True)
