"""The TUI's pure parts: table cells, the folded stats, the service map drawing, the filter
line and the bounded buffer."""

from __future__ import annotations

import pytest
from rich.console import Console

from flowscope.errors import UsageError
from flowscope.flow.model import LostEvent, LostEventSource, Verdict
from flowscope.proto import flow_pb2
from tests.tui.flows import T0, S, dns_nxdomain, flow, http_response
from tui import columns, servicemap
from tui.buffer import FlowBuffer
from tui.filtertext import filter_text, parse_filters
from tui.flowtable import column_widths
from tui.stats import DROP_WINDOW, FlowStats


def test_row_cells_of_a_drop_a_service_flow_and_l7() -> None:
    drop = flow(0, verdict=Verdict.DROPPED, service="shop/api")
    assert columns.row(drop) == (
        "21:52:51",
        "shop/web-1",
        "shop/api-1",
        "shop/api",
        "8080/TCP",
        "DROPPED",
        "POLICY_DENIED",
        "",
    )
    assert columns.l7_summary(http_response(0)) == "503 GET http://api.shop/cart 3ms"
    assert columns.l7_summary(dns_nxdomain(0)) == "DNS NXDOMAIN nope.shop.svc."
    assert columns.port(dns_nxdomain(0)) == "53/UDP"
    lost = LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 7, time_ns=T0, node_name="node-2")
    assert columns.row(lost) == (
        "21:52:51",
        "node-2",
        "",
        "",
        "",
        "LOST",
        "7 lost",
        "PERF_EVENT_RING_BUFFER",
    )


def test_column_widths_fill_the_width_at_80_and_wider() -> None:
    for width in (80, 120, 200):
        widths = column_widths(width)
        assert sum(widths) + len(widths) - 1 == width
        assert widths[columns.COLUMNS.index("VERDICT")] >= len("TRANSLATED")


def test_drops_by_reason_and_pod_with_rates() -> None:
    stats = FlowStats()
    # 20 s of traffic: one forwarded flow a second; drops in the last DROP_WINDOW seconds only
    stats.add(flow(i * S) for i in range(20))
    stats.add(flow(i * S, verdict=Verdict.DROPPED, ingress=True) for i in range(10, 20))
    stats.add([flow(19 * S, src="shop/db-1", verdict=Verdict.DROPPED, drop_reason=181)])
    reasons = stats.drop_reasons.top(5, stats.now)
    assert [(c.key, c.total) for c in reasons] == [("POLICY_DENIED", 10), ("POLICY_DENY", 1)]
    assert reasons[0].rate == pytest.approx(10 / DROP_WINDOW)
    pods = {c.key: c.total for c in stats.drop_pods.top(5, stats.now)}
    # an ingress drop belongs to the receiver, an egress one to the sender
    assert pods == {"shop/api-1": 10, "shop/db-1": 1}
    assert stats.flows == 31
    assert stats.top_talkers(1) == [("shop/web-1", "shop/api-1", 30)]


def test_rates_per_verdict_per_second() -> None:
    stats = FlowStats()
    stats.add(flow(i * S // 4) for i in range(8))  # 4 a second for 2 s
    stats.add([flow(2 * S, verdict=Verdict.DROPPED)])
    series = stats.rates.series("FORWARDED")
    assert len(series) == 60 and series[-3:] == [4, 4, 0]
    assert stats.rates.series("DROPPED")[-1] == 1
    assert stats.rates.current("FORWARDED") == 4


def test_service_map_edges_between_workloads_coloured_by_verdict() -> None:
    stats = FlowStats()
    stats.add(flow(i) for i in range(3))
    stats.add([flow(5, src="shop/web-2", verdict=Verdict.DROPPED)])
    stats.add([flow(6, dst="kube-system/coredns-1", port=53, udp=True)])
    edges = {(e.source, e.destination): e for e in stats.service_edges()}
    assert set(edges) == {("shop/web", "shop/api"), ("shop/web", "kube-system/coredns")}
    web_api = edges[("shop/web", "shop/api")]
    assert web_api.verdicts == {"FORWARDED": 3, "DROPPED": 1}
    assert web_api.colour_verdict == "DROPPED"
    drawing = servicemap.draw(stats.service_edges(), 70)
    console = Console(width=70, record=True, color_system="truecolor")
    console.print(drawing)
    text = console.export_text()
    assert "shop/web ──" in text and "▶ shop/api" in text and "▶ kube-system/coredns" in text
    # the dropped edge is drawn red, the DNS one green
    red = [s for s in drawing.spans if str(s.style) == "red"]
    green = [s for s in drawing.spans if str(s.style) == "green"]
    assert red and green
    assert "shop/web -> shop/api: DROPPED 1, FORWARDED 3" in text


def test_service_map_without_flows_says_so() -> None:
    assert "no flows yet" in servicemap.draw([], 80).plain


def test_filter_line_is_observes_language() -> None:
    f = parse_filters("--from-pod shop/web --verdict DROPPED --not --to-port 53")
    assert list(f.whitelist) == [
        flow_pb2.FlowFilter(source_pod=["shop/web"], verdict=[flow_pb2.DROPPED])
    ]
    assert list(f.blacklist) == [flow_pb2.FlowFilter(destination_port=["53"])]
    assert parse_filters("").empty
    with pytest.raises(UsageError, match="--to-port"):
        parse_filters("--to-port eighty")
    with pytest.raises(UsageError, match="unrecognized arguments: --frm-pod"):
        parse_filters("--frm-pod x")
    with pytest.raises(UsageError, match="filters are flags"):
        parse_filters("web")
    with pytest.raises(UsageError, match="No closing quotation"):
        parse_filters("--from-pod 'x")
    ops = [("from-pod", "shop/web"), ("not", []), ("verdict", "DROPPED")]
    assert filter_text(ops) == "--from-pod shop/web --not --verdict DROPPED"


def test_buffer_is_bounded_and_counts_what_fell_out() -> None:
    buf = FlowBuffer(capacity=3)
    buf.extend(flow(i) for i in range(5))
    assert len(buf) == 3 and buf.overflowed == 2 and buf.received == 5
    assert [f.time_ns - T0 for f in buf.drain()] == [2, 3, 4]
    assert len(buf) == 0
    with pytest.raises(ValueError, match="capacity"):
        FlowBuffer(0)
