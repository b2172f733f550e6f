"""The plan and the merge of sharded runs (ciq.sharding), and what the runner plans from
(pytest's count of a collection) and points a chunk's pytest at: pure functions, no Redis."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from ciq.report import Report, Summary, TestResult
from ciq.runner.outcome import chunk_targets, collected_count, collected_ids, not_to_plan
from ciq.sharding.merge import ChunkResult, merge
from ciq.sharding.plan import estimates, plan_chunks, simulate

SHA = "a" * 40


def suite() -> dict[str, float]:
    """40 tests like the benchmark's: 12 of 2 s, 8 of 1 s, 20 of 0.1 s."""
    d = {f"tests/test_slow.py::test_{i}": 2.0 for i in range(12)}
    d.update({f"tests/test_mid.py::test_{i}": 1.0 for i in range(8)})
    d.update({f"tests/test_fast.py::test_{i}": 0.1 for i in range(20)})
    return d


def test_every_test_is_in_exactly_one_chunk_and_the_first_chunks_are_the_largest():
    d = suite()
    chunks = plan_chunks(list(d), d, workers=4, min_chunk=2.0)
    flat = [i for c in chunks for i in c]
    assert sorted(flat) == sorted(d) and len(flat) == len(set(flat))
    sizes = [sum(d[i] for i in c) for c in chunks]
    assert sizes[0] == max(sizes)
    # Work stealing needs more chunks than workers: smaller than an even 1/N split.
    assert len(chunks) > 4
    assert max(sizes) < sum(d.values()) / 4 * 1.1


def test_a_duplicate_id_is_planned_once():
    assert plan_chunks(["a", "b", "a"], {}, 2, 0.1) in ([["a"], ["b"]], [["b"], ["a"]])


def test_new_tests_are_estimated_at_the_median_of_the_known_ones():
    assert estimates(["old1", "old2", "old3", "new"], {"old1": 1, "old2": 3, "old3": 10}) == {
        "old1": 1, "old2": 3, "old3": 10, "new": 3}
    assert estimates(["x"], {}) == {"x": 0.5}


def test_the_plan_beats_a_static_even_split_when_the_estimates_are_wrong():
    d = suite()
    # The estimates say every test is alike; in truth the "slow" ones take 2 s.
    flat = {i: 1.0 for i in d}
    ours = plan_chunks(list(d), flat, workers=4, min_chunk=2.0)
    static = [list(d)[i::4] for i in range(4)]  # 4 shards fixed up front
    static[0] = [i for i in d if "slow" in i][:10]  # one unlucky shard
    static[1:] = [[i for i in d if i not in static[0]][k::3] for k in range(3)]
    assert simulate(ours, d, 4, overhead=0.5) < simulate(static, d, 4, overhead=0.5)


def test_a_tiny_last_chunk_goes_into_the_one_before():
    d = {"a": 3.0, "b": 3.0, "c": 0.01}
    chunks = plan_chunks(list(d), d, workers=2, min_chunk=2.0)
    assert sum(len(c) for c in chunks) == 3
    assert all(sum(d[i] for i in c) >= 1.0 for c in chunks)


def chunk_report(tests: list[TestResult], status: str = "passed", worker: str = "w1",
                 output: str = "", message: str = "") -> Report:
    return Report(repo="/r", commit=SHA, status=status, tests=tuple(tests),
                  summary=Summary.of(tests), worker=worker, output=output, message=message,
                  timings={"test": sum(t.duration for t in tests)}, exit_code=0)


HEAD = Report(repo="/r", commit=SHA, status="passed", branch="main", worker="w0",
              started_at="2026-01-01T00:00:00.000+00:00", command="python -m pytest tests")


def test_the_merge_has_every_test_once_and_the_worst_status():
    chunks = [["t::a", "t::b"], ["t::c"]]
    results = [
        ChunkResult(0, chunk_report([TestResult("t::a", "passed", 2.0),
                                     TestResult("t::b", "passed", 1.0)], worker="w1")),
        ChunkResult(1, chunk_report([TestResult("t::c", "failed", 1.0, "boom")], "failed",
                                    worker="w2", output="c failed")),
    ]
    merged = merge(HEAD, chunks, results, "2026-01-01T00:00:05.000+00:00", 5.0, 10_000)
    assert merged.status == "failed"
    assert sorted(t.id for t in merged.tests) == ["t::a", "t::b", "t::c"]
    assert merged.summary == Summary(total=3, passed=2, failed=1)
    assert merged.shards["count"] == 2
    assert [c["worker"] for c in merged.shards["chunks"]] == ["w1", "w2"]
    assert merged.shards["imbalance"] == pytest.approx(3.0 / 2.0)
    assert merged.branch == "main" and merged.command == "python -m pytest tests"
    assert "c failed" in merged.output
    # Idempotent: the same results merge into the same report.
    again = merge(HEAD, chunks, list(reversed(results)), "2026-01-01T00:00:05.000+00:00",
                  5.0, 10_000)
    assert again == merged


def test_a_collected_test_no_chunk_reported_is_an_error_never_dropped():
    chunks = [["t::a", "t::b"], ["t::c"]]
    # Chunk 0's pytest died after one test: no word of t::b.
    results = [ChunkResult(0, chunk_report([TestResult("t::a", "passed")],
                                           message="killed by signal 9")),
               ChunkResult(1, chunk_report([TestResult("t::c", "passed")]))]
    merged = merge(HEAD, chunks, results, "x", 1.0, 10_000)
    lost = [t for t in merged.tests if t.id == "t::b"]
    assert len(lost) == 1 and lost[0].outcome == "error"
    assert "chunk 1 of 2" in lost[0].message and "signal 9" in lost[0].message
    assert merged.status == "error"


def test_a_chunk_without_a_result_makes_its_tests_errors_or_not_run_when_failing_fast():
    chunks = [["t::a"], ["t::b", "t::c"]]
    results = [ChunkResult(0, chunk_report([TestResult("t::a", "failed", 1.0, "no")],
                                           "failed"))]
    lost = merge(HEAD, chunks, results, "x", 1.0, 10_000)
    assert {t.id: t.outcome for t in lost.tests} == {
        "t::a": "failed", "t::b": "error", "t::c": "error"}
    fast = merge(HEAD, chunks, results, "x", 1.0, 10_000, not_run_reason="fail fast")
    assert fast.status == "failed"
    assert [t.id for t in fast.tests] == ["t::a"]
    assert fast.not_run == ("t::b", "t::c")
    assert "2 tests did not run" in fast.message


def test_an_id_spelled_differently_in_junit_stands_for_its_planned_one():
    # A parametrised id, and an item of another plugin whose JUnit id lost its middle
    chunks = [["t.py::test[a b]", "t.py::other", "t.yaml::group::case"]]
    results = [ChunkResult(0, chunk_report([TestResult("t.py::test[a_b]", "passed"),
                                            TestResult("t.py::other", "passed"),
                                            TestResult("t.yaml::case", "failed")],
                                           "failed"))]
    merged = merge(HEAD, chunks, results, "x", 1.0, 10_000)
    assert merged.status == "failed" and merged.summary.total == 3
    # Under the collection's spelling: the next plan finds its duration
    assert [t.id for t in merged.tests] == ["t.py::test[a b]", "t.py::other",
                                            "t.yaml::group::case"]
    assert merged.tests[2].outcome == "failed"


def test_a_test_reported_twice_counts_once_with_the_worse_outcome():
    # pytest writes a test that fails and then errors in its teardown twice in JUnit XML
    chunks = [["t::a", "t::b"], ["t::c"]]
    results = [
        ChunkResult(0, chunk_report([TestResult("t::a", "failed", 1.0, "assert 0"),
                                     TestResult("t::a", "error", 0.5, "teardown boom"),
                                     TestResult("t::b", "passed", 1.0)], "failed")),
        ChunkResult(1, chunk_report([TestResult("t::c", "passed", 1.0)])),
    ]
    merged = merge(HEAD, chunks, results, "x", 1.0, 10_000)
    assert merged.summary == Summary(total=3, passed=2, errors=1)
    a = next(t for t in merged.tests if t.id == "t::a")
    assert a.outcome == "error" and a.duration == 1.5
    assert "teardown boom" in a.message and "assert 0" in a.message


def test_a_result_outside_the_chunks_plan_is_not_counted():
    # Chunk 1 ran t::a too (its selection failed): t::a is chunk 0's, counted once
    chunks = [["t::a"], ["t::b"]]
    results = [ChunkResult(0, chunk_report([TestResult("t::a", "passed")])),
               ChunkResult(1, chunk_report([TestResult("t::a", "failed", 1.0, "flaky"),
                                            TestResult("t::b", "passed")], "failed"))]
    merged = merge(HEAD, chunks, results, "x", 1.0, 10_000)
    assert merged.summary == Summary(total=2, passed=2)
    assert [c.get("unplanned") for c in merged.shards["chunks"]] == [None, 1]


def test_a_lost_test_is_an_error_even_when_the_chunk_reported_as_many_tests():
    # The old tolerance forgave any lost test when the numbers matched: an id of another
    # file (another chunk's test) must not stand for it
    chunks = [["a.py::t1", "a.py::t2"], ["b.py::t3"]]
    results = [ChunkResult(0, chunk_report([TestResult("a.py::t1", "passed"),
                                            TestResult("b.py::t3", "passed")])),
               ChunkResult(1, chunk_report([TestResult("b.py::t3", "passed")]))]
    merged = merge(HEAD, chunks, results, "x", 1.0, 10_000)
    assert merged.status == "error" and merged.summary.total == 3
    assert {t.id: t.outcome for t in merged.tests}["a.py::t2"] == "error"
    assert "chunk 1 of 2 did not report 1 of its 2 tests (a.py::t2)" in merged.message


def test_a_failed_chunk_that_lost_tests_makes_an_error_naming_them():
    chunks = [[f"t.py::test_{i}" for i in range(6)]]
    results = [ChunkResult(0, chunk_report([TestResult("t.py::test_0", "failed", 1.0)],
                                           "failed", message="1 of 1 tests failed"))]
    merged = merge(HEAD, chunks, results, "x", 1.0, 10_000)
    assert merged.status == "error" and merged.summary.total == 6
    assert ("did not report 5 of its 6 tests (t.py::test_1, t.py::test_2, t.py::test_3 "
            "and 2 more)") in merged.message


def test_a_test_planned_in_two_chunks_counts_once():
    chunks = [["t::a", "t::b"], ["t::b", "t::c"]]
    results = [ChunkResult(0, chunk_report([TestResult("t::a", "passed"),
                                            TestResult("t::b", "passed")])),
               ChunkResult(1, chunk_report([TestResult("t::b", "passed"),
                                            TestResult("t::c", "passed")]))]
    merged = merge(HEAD, chunks, results, "x", 1.0, 10_000)
    assert merged.status == "passed" and merged.summary.total == 3
    assert sorted(t.id for t in merged.tests) == ["t::a", "t::b", "t::c"]


def test_the_merged_total_is_the_collected_count_whatever_the_chunks_reported():
    # Given 300 collected tests in 3 chunks, and chunks that report some tests twice,
    # some spelled differently, some not at all and some of other chunks
    rng = random.Random(14)
    ids = [f"tests/test_{i % 7}.py::test_{i}[{i % 3}]" for i in range(300)]
    chunks = [ids[0:100], ids[100:200], ids[200:300]]
    rolls = {i: rng.random() for i in ids}
    lost = {i for i in ids if rolls[i] < 0.1}
    results = []
    for index, planned in enumerate(chunks):
        reported = []
        for i in planned:
            roll = rolls[i]
            if roll < 0.1:
                continue
            spelled = i.replace("[", "[x") if roll < 0.2 else i
            reported.append(TestResult(spelled, "passed", 0.1))
            if roll > 0.9:
                reported.append(TestResult(spelled, "failed", 0.1))
        reported += [TestResult(rng.choice(sorted(set(ids) - lost)), "passed")
                     for _ in range(5)]
        results.append(ChunkResult(index, chunk_report(reported)))
    merged = merge(HEAD, chunks, results, "x", 1.0, 10_000)
    # Then the report has every collected test once, under its collected id, and each
    # lost one is an error: none is hidden by another chunk's test
    assert merged.summary.total == 300
    assert sorted(t.id for t in merged.tests) == sorted(ids)
    assert {t.id for t in merged.tests if t.outcome == "error"} == lost
    assert merged.status == "error" and "did not report" in merged.message


def test_a_plan_of_fifty_thousand_tests_has_each_in_exactly_one_chunk():
    ids = [f"tests/test_{i // 100}.py::test_{i}" for i in range(50_000)]
    durations = {i: (n * 37 % 100) / 100 for n, i in enumerate(ids[::2])}
    t0 = time.perf_counter()
    chunks = plan_chunks(ids, durations, workers=8, min_chunk=2.0)
    assert time.perf_counter() - t0 < 10
    flat = [i for c in chunks for i in c]
    assert len(flat) == 50_000 and set(flat) == set(ids)
    assert 8 < len(chunks) <= 8 + 64


def test_the_merged_output_is_capped_with_failing_chunks_first():
    chunks = [["t::a"], ["t::b"]]
    results = [ChunkResult(0, chunk_report([TestResult("t::a", "passed")], output="A" * 500)),
               ChunkResult(1, chunk_report([TestResult("t::b", "failed")], "failed",
                                           output="B" * 500))]
    merged = merge(HEAD, chunks, results, "x", 1.0, 300)
    assert merged.output.startswith("=== chunk 2 of 2")
    assert len(merged.output) < 400


def test_a_report_keeps_its_shards_and_not_run_through_json():
    r = HEAD.replace(shards={"count": 2, "chunks": [], "imbalance": 1.1}, not_run=("t::x",))
    assert Report.from_dict(r.to_dict()) == r


# -- what a collection found, and what a chunk's pytest is pointed at ---------------------

@pytest.mark.parametrize(("tail", "count"), [
    ("3000 tests collected in 1.20s", (3000, 0)),
    ("1 test collected in 0.01s", (1, 0)),
    ("3/5 tests collected (2 deselected) in 0.02s", (3, 0)),
    ("no tests collected (4 deselected) in 0.02s", (0, 0)),
    ("no tests collected in 0.00s", (0, 0)),
    ("8 tests collected, 2 errors in 0.31s", (8, 2)),
    ("3/5 tests collected (2 deselected), 1 error in 0.1s", (3, 1)),
    ("\x1b[32m12 tests collected\x1b[0m\x1b[32m in 0.05s\x1b[0m", (12, 0)),  # PY_COLORS=1
    ("=================== 7 tests collected in 0.04s ===================", (7, 0)),  # -v
])
def test_pytests_count_is_read_from_the_end_of_its_collection_output(tail, count):
    listing = "t.py::a\nt.py::b\n\n=== warnings summary ===\n5 tests collected is a lie\n"
    assert collected_count(f"{listing}\n{tail}\n") == count
    assert collected_count("t.py::a\nt.py::b\n") is None  # -qq: no summary at all


def test_a_collection_is_planned_only_when_its_list_holds_what_pytest_counted():
    ids = ["t.py::a", "t.py::b[x y]", "t.py::c[é]"]
    assert collected_ids(json.dumps(ids)) == ids
    assert collected_ids("t.py::a\n") is None and collected_ids('{"a": 1}') is None
    assert not_to_plan(ids, (3, 0)) is None
    assert not_to_plan(ids, (4, 0)) == "pytest counted 4 tests but listed 3"
    assert not_to_plan(ids, (3, 1)) == "pytest counted 1 collection errors"
    assert not_to_plan(ids, None).startswith("pytest's output ends without")
    assert not_to_plan(None, (3, 0)).startswith("the collection wrote no")
    assert "2 tests under 1 distinct ids" in not_to_plan(["t::a", "t::a"], (2, 0))


def test_a_chunk_names_the_files_of_its_ids_unless_they_could_change_what_pytest_finds(
    tmp_path: Path,
):
    for name in ("tests/test_a.py", "tests/sub/test_b.py", "tests/deep/test_c.py",
                 "tests/deep/pytest.ini", "test_top.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    ids = ["tests/test_a.py::t[1]", "tests/sub/test_b.py::t", "tests/test_a.py::t[2]"]
    assert chunk_targets(tmp_path, ids) == ["tests/test_a.py", "tests/sub/test_b.py"]
    # Whole suite (the plugin deselects the rest) when the files could mislead pytest:
    # a configuration file below where the collection started
    assert chunk_targets(tmp_path, ["tests/deep/test_c.py::t"]) == ["tests"]
    # ids relative to another rootdir than the checkout, outside tests/, odd paths
    for odd in ("test_a.py::t", "test_top.py::t", "../x/test_a.py::t", "/etc/passwd::t",
                "-p::t", "tests/gone.py::t"):
        assert chunk_targets(tmp_path, [odd]) == ["tests"], odd
    # more files than a command line should carry
    many = [f"tests/test_{i:05d}_{'x' * 40}.py::t" for i in range(2000)]
    for i in many:
        (tmp_path / i.split("::")[0]).write_text("")
    assert chunk_targets(tmp_path, many) == ["tests"]
    assert chunk_targets(tmp_path, many[:100]) == [i.split("::")[0] for i in many[:100]]
