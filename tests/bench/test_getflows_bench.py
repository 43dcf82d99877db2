"""bench.getflows at a tiny size: a real Observer over a ring filled through the collector's
batch path answers each request with the same flows with and without its pre-filter, and the
report prints its figures. No timing is asserted."""

from __future__ import annotations

from bench import getflows


def test_getflows_bench_runs_tiny_and_reports_each_query() -> None:
    lines: list[str] = []
    results = getflows.run(
        capacity=20_000, batch=64, runs=2, baseline_runs=1, repeats=2, log=lines.append
    )
    queries = list(getflows.queries())
    assert len(results.timings) == 2 * len(queries) and len(lines) == len(results.timings)
    for query in queries:
        on, off = results.timing(query, True), results.timing(query, False)
        assert on.flows == off.flows  # the pre-filter changes the time, not the answer
        assert len(on.cold_ms) == 2 and len(off.cold_ms) == 1 and len(on.warm_ms) == 2
        assert all(ms > 0 for ms in on.cold_ms + on.warm_ms + off.cold_ms)
    assert results.timing(queries[2], True).flows == 20  # last 20
    assert 0 < results.timing(queries[0], True).flows < 20_000 * 0.01  # selective
    report = getflows.report(results)
    assert report[0].startswith("GetFlows over gRPC on a full ring of 20,000 flows")
    assert len(report) == len(queries) + 2
    assert all("baseline" in line for line in report[1:-1])
    assert report[-1].startswith("target: a selective request on a full ring <= 50 ms: ")
