"""bench.collector's machinery at a tiny size: events made in the kernel by the flood program
all reach the real collector or are counted lost (produced = collected + lost), both paths of
the baseline drain every event, and the report prints its figures. No timing is asserted."""

from __future__ import annotations

import pytest

from bench import collector

pytestmark = pytest.mark.privileged


def test_collector_bench_counts_add_up_at_a_tiny_size() -> None:
    lines: list[str] = []
    results = collector.run(rates=(20_000,), seconds=0.2, cost_events=2_000, log=lines.append)
    (run,) = results.runs
    assert run.produced == 20 * 200  # 20 events a 1 ms slice, 200 slices
    assert run.produced == run.collected + run.lost
    assert run.collected > 0 and run.wall_s > 0 and run.cpu_s > 0
    assert results.baseline_ns > 0 and results.columnar_ns > 0
    report = collector.report(results)
    assert report[0].startswith("kernel -> collector at 20,000/s asked: ")
    assert f"produced {run.produced:,} = collected {run.collected:,} + lost {run.lost}" in report[0]
    assert report[1].startswith("target >= 1,000,000 events/s at <= 10% of a core with 0 lost: ")
    assert report[1].endswith("NOT met")  # 20,000 events/s
    assert "CPU per event: columnar" in report[2]
    assert len(lines) == 2
