"""bench.tui's machinery at a tiny size: every generated flow reaches both tables and the
views' stats, the FlowTable keeps its scroll-back bound, and the report prints its figures. No
timing is asserted (the benchmark prints them)."""

from __future__ import annotations

from bench import tui as bench_tui


async def test_bench_tui_counts_add_up_at_a_tiny_size(monkeypatch) -> None:
    monkeypatch.setattr(bench_tui, "SCROLLBACK", 500)
    lines: list[str] = []
    report = await bench_tui.run(rate=2_000, seconds=0.5, log=lines.append)
    assert report.baseline_rows == 1_000
    assert report.table_added == 1_000 and report.folded == 1_000
    assert report.table_rows == 500  # bounded
    assert report.flowscope.catch_up is not None and report.baseline.catch_up is not None
    assert report.remove_row_s > 0
    assert lines[0] == "2,000 flows/s for 0.5 s, 160x48 headless, scroll-back 500 rows"
    assert lines[-1].startswith("ratios flowscope/baseline: CPU ")
    assert "flows folded into the views' stats: 1,000" in lines[-1]
