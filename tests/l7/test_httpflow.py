"""The L7 flows made of requests and responses (pure), and how Hubble's tools read them."""

from __future__ import annotations

from dataplane.l7.httpflow import Connection, request_flow, response_flow
from dataplane.l7.httpmessage import RequestHead, ResponseHead
from dataplane.l7.redact import REDACTED, Redaction
from flowscope.flow.compact import format_flow
from flowscope.flow.model import Endpoint, Flow, IPVersion, L7FlowType, TrafficDirection, Verdict

PODS = {
    "10.0.1.5": Endpoint(identity=1234, namespace="default", pod_name="client"),
    "10.0.2.7": Endpoint(identity=5678, namespace="default", pod_name="web"),
}
CONN = Connection(("10.0.1.5", 40000), ("10.0.2.7", 80), "node-1", describe=PODS.get)
REQ = RequestHead("GET", "/v1/items?id=3", (("Host", "web"), ("Cookie", "c=1")))


def test_request_flow_fields_and_json_round_trip() -> None:
    flow = request_flow(CONN, REQ, Verdict.DROPPED, Redaction(), time_ns=1_764_000_000 * 10**9)
    assert flow.drop_reason == 133 and flow.node_name == "node-1"
    assert (flow.source.pod_name, flow.destination.pod_name) == ("client", "web")
    assert flow.traffic_direction == TrafficDirection.INGRESS
    d = flow.to_dict()
    assert d["Type"] == "L7" and d["event_type"] == {"type": 129}
    assert d["drop_reason_desc"] == "POLICY_DENIED" and d["is_reply"] is False
    assert d["l7"]["type"] == "REQUEST"
    assert d["l7"]["http"]["url"] == f"http://web/v1/items?{REDACTED}"
    assert {"key": "Cookie", "value": REDACTED} in d["l7"]["http"]["headers"]
    assert Flow.from_json(flow.to_json()) == flow
    # a denial carries the 403 it was answered with (no response flow follows it)
    assert d["l7"]["http"]["code"] == 403
    allowed = request_flow(CONN, REQ, Verdict.FORWARDED, Redaction())
    assert allowed.l7.http.code == 0 and allowed.drop_reason == 0


def test_response_flow_swaps_the_ends() -> None:
    resp = ResponseHead(404, "Not Found", (("Content-Length", "0"),), "1.0")
    flow = response_flow(CONN, REQ, resp, 1500, Redaction())
    assert flow.is_reply is True and flow.verdict == Verdict.FORWARDED
    assert (flow.ip.source, flow.ip.destination) == ("10.0.2.7", "10.0.1.5")
    assert (flow.l4.source_port, flow.l4.destination_port) == (80, 40000)
    assert flow.source.pod_name == "web"
    http = flow.l7.http
    assert flow.l7.type == L7FlowType.RESPONSE and flow.l7.latency_ns == 1500
    assert (http.code, http.method, http.protocol) == (404, "GET", "HTTP/1.0")


def test_compact_line_reads_as_hubble_prints_it() -> None:
    line = format_flow(request_flow(CONN, REQ, Verdict.DROPPED, Redaction()))
    assert "http-request DROPPED" in line and "GET" in line and "default/client" in line


def test_ipv6_and_missing_host() -> None:
    conn = Connection(("fd00::5", 40000), ("fd00::7", 8080))
    flow = request_flow(conn, RequestHead("GET", "/", (), "1.0"), Verdict.FORWARDED, Redaction())
    assert flow.ip.ip_version == IPVersion.IPv6
    assert flow.l7.http.url == "http://[fd00::7]:8080/"
    assert flow.source is None


def test_endpoints_are_described_once_per_connection_and_failures_leave_them_out() -> None:
    calls: list[str] = []

    def describe(ip: str) -> Endpoint | None:
        calls.append(ip)
        if ip == "10.0.2.7":
            raise KeyError(ip)
        return PODS[ip]

    conn = Connection(("10.0.1.5", 40000), ("10.0.2.7", 80), describe=describe)
    for _ in range(3):
        flow = request_flow(conn, REQ, Verdict.FORWARDED, Redaction())
    assert flow.source.pod_name == "client" and flow.destination is None
    assert calls == ["10.0.1.5", "10.0.2.7"]
