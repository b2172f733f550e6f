"""JUnit XML: real pytest output in, hostile XML rejected, reports out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ciq.junit import MAX_JUNIT_BYTES, JUnitError, parse_junit, to_junit
from ciq.report import Report, Summary, TestResult


def test_ids_and_outcomes_come_from_real_pytest_output(tmp_path: Path) -> None:
    (tmp_path / "tests" / "sub").mkdir(parents=True)
    (tmp_path / "tests" / "sub" / "test_mix.py").write_text(
        "import pytest\n"
        "def test_pass(): pass\n"
        "def test_fail(): assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skip(reason='a skipped outcome for the parser to read')\n"
        "def test_skip(): pass\n"
        "class TestGroup:\n"
        "    def test_method(self): pass\n"
        "@pytest.fixture\n"
        "def broken(): raise RuntimeError('fixture broke')\n"
        "def test_error(broken): pass\n"
    )
    xml = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "tests", f"--junitxml={xml}", "-o",
                    "junit_family=xunit1", "-p", "no:cacheprovider", "-q"], cwd=tmp_path,
                   capture_output=True, check=False)
    results = {t.id: t for t in parse_junit(xml)}
    base = "tests/sub/test_mix.py::"
    assert {k: v.outcome for k, v in results.items()} == {
        base + "test_pass": "passed",
        base + "test_fail": "failed",
        base + "test_skip": "skipped",
        base + "TestGroup::test_method": "passed",
        base + "test_error": "error",
    }
    assert "one is not two" in results[base + "test_fail"].message
    assert "fixture broke" in results[base + "test_error"].message
    assert Summary.of(list(results.values())) == Summary(5, 2, 1, 1, 1)


@pytest.mark.parametrize("xml", [
    # billion laughs: entity expansion
    '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><testsuite><testcase name="&b;"/></testsuite>',
    # external entity reading a local file
    '<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    '<testsuite><testcase name="&x;"/></testsuite>',
    "<testsuite><testcase name='unclosed'>",
    "not xml at all \x00\x01",
    "<html><body>nope</body></html>",
])
def test_hostile_or_broken_xml_is_refused(tmp_path: Path, xml: str) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(xml)
    with pytest.raises(JUnitError):
        parse_junit(path)


def test_a_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    with path.open("wb") as fh:
        fh.truncate(MAX_JUNIT_BYTES + 1)  # sparse: no real disk used
    with pytest.raises(JUnitError, match="byte limit"):
        parse_junit(path)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(JUnitError, match="no JUnit XML"):
        parse_junit(tmp_path / "absent.xml")


def test_report_as_junit_reads_back_with_control_characters(tmp_path: Path) -> None:
    tests = (TestResult("tests/test_a.py::test_ok", "passed", 0.5),
             TestResult("tests/test_a.py::test_bad", "failed", 0.1, "boom \x1b[31mred\x00"))
    report = Report(repo="/r", commit="a" * 40, status="failed", tests=tests,
                    summary=Summary.of(list(tests)), output="\x07bell <script>")
    path = tmp_path / "out.xml"
    path.write_text(to_junit(report))
    back = {t.id: t for t in parse_junit(path)}
    assert back["tests/test_a.py::test_bad"].outcome == "failed"
    assert "red" in back["tests/test_a.py::test_bad"].message
    assert back["tests/test_a.py::test_ok"].outcome == "passed"


def test_junk_junit_is_capped_and_never_read_as_a_pass(tmp_path) -> None:
    from ciq.errors import JUnitError
    from ciq.junit import MAX_ID_CHARS, MAX_TESTS, parse_junit
    from ciq.report import Summary
    from ciq.runner.outcome import verdict
    from ciq.runner.process import Completed

    many = tmp_path / "many.xml"
    many.write_text("<testsuite>" + '<testcase classname="t" name="x"/>' * (MAX_TESTS + 1)
                    + "</testsuite>")
    with pytest.raises(JUnitError, match=f"more than {MAX_TESTS} test cases"):
        parse_junit(many)
    long = tmp_path / "long.xml"
    long.write_text(f'<testsuite><testcase classname="t" name="{"y" * 50_000}"/>'
                    f'<testcase classname="t" name="{"y" * 49_999}z"/></testsuite>')
    ids = [t.id for t in parse_junit(long)]
    assert all(len(i) <= MAX_ID_CHARS for i in ids) and len(set(ids)) == 2
    # exit 0 with unreadable results: an error, not a pass (pytest always writes them)
    done = Completed(0, False, "", 1.0)
    assert verdict(done, False, "JUnit XML is not readable: x", Summary.of([]))[0] == "error"
    assert verdict(done, False, "no JUnit XML was written (x)", Summary.of([]),
                   pytest_codes=False)[0] == "passed"  # another tool may write none
