"""The plan and the merge of sharded runs (ciq.sharding): pure functions, no Redis."""

from __future__ import annotations

import pytest

from ciq.report import Report, Summary, TestResult
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


def test_ids_spelled_differently_in_junit_count_when_the_numbers_match():
    chunks = [["t.py::test[a b]"]]
    results = [ChunkResult(0, chunk_report([TestResult("t.py::test[a_b]", "passed")]))]
    merged = merge(HEAD, chunks, results, "x", 1.0, 10_000)
    assert merged.status == "passed" and merged.summary.total == 1


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
