"""Each Hubble metric over hand-made flows: which flows count, under which labels (Hubble's
names and values), with context options and filters."""

from __future__ import annotations

import pytest

from exporters.exporter import ExportBatch
from exporters.prometheus import KIND, PrometheusExporter
from flowscope.flow.model import LostEvent, LostEventSource, TrafficDirection, Verdict
from tests.exporters.prometheus import flows as f


def exporter(*metrics, pipeline: bool = False, limit: int = 0) -> PrometheusExporter:
    raw = {"listen": "127.0.0.1:0", "metrics": list(metrics), "pipeline": pipeline}
    raw["cardinalityLimit"] = limit
    return KIND.build(KIND.parse(raw, "prometheus"))


def values(exp: PrometheusExporter, name: str) -> dict:
    """label dict (as a frozenset of pairs) -> value of one family."""
    family = next(x for x in exp.metrics.families if x.name == name)
    return {
        frozenset(zip(family.label_names, key, strict=True)): v for key, v in family.values.items()
    }


def labels(**kw: str) -> frozenset:
    return frozenset(kw.items())


def feed(exp: PrometheusExporter, *records) -> None:
    exp.count(ExportBatch(tuple(records)))


def test_flows_processed_type_subtype_verdict_protocol():
    exp = exporter("flow")
    feed(
        exp,
        f.tcp(),
        f.tcp(),
        f.tcp(verdict=Verdict.DROPPED, drop_reason=133),
        f.policy_verdict(),
        f.dns(reply=False),
        f.http(response=True),
    )
    got = values(exp, "hubble_flows_processed_total")
    assert got == {
        labels(protocol="TCP", type="Trace", subtype="to-endpoint", verdict="FORWARDED"): 2,
        labels(protocol="TCP", type="Drop", subtype="", verdict="DROPPED"): 1,
        labels(protocol="TCP", type="PolicyVerdict", subtype="", verdict="DROPPED"): 1,
        labels(protocol="DNS", type="L7", subtype="DNS", verdict="FORWARDED"): 1,
        labels(protocol="HTTP", type="L7", subtype="HTTP", verdict="FORWARDED"): 1,
    }


def test_drop_reason_protocol_and_source_context():
    exp = exporter({"name": "drop", "contextOptions": {"sourceContext": "pod"}})
    feed(
        exp,
        f.tcp(verdict=Verdict.DROPPED, drop_reason=133),
        f.tcp(verdict=Verdict.DROPPED, drop_reason=133),
        f.tcp(verdict=Verdict.DROPPED, drop_reason=134, src=f.CLIENT),
        f.tcp(),  # forwarded: not a drop
    )
    assert values(exp, "hubble_drop_total") == {
        labels(source="default/web-7d4b9c-x2k1p", reason="POLICY_DENIED", protocol="TCP"): 2,
        labels(source="shop/client-66b8d-qwert", reason="INVALID_PACKET_DROPPED",
               protocol="TCP"): 1,
    }  # fmt: skip


def test_tcp_flags_only_forwarded_with_family():
    exp = exporter("tcp")
    feed(
        exp,
        f.tcp(flags=0x02),  # SYN
        f.tcp(flags=0x12),  # SYN-ACK
        f.tcp(flags=0x11),  # FIN ACK
        f.tcp(flags=0x04),  # RST
        f.tcp(flags=0x05),  # RST FIN: both counted
        f.tcp(flags=0x02, verdict=Verdict.DROPPED, drop_reason=133),  # not forwarded
    )
    assert values(exp, "hubble_tcp_flags_total") == {
        labels(flag="SYN", family="IPv4"): 1,
        labels(flag="SYN-ACK", family="IPv4"): 1,
        labels(flag="FIN", family="IPv4"): 2,
        labels(flag="RST", family="IPv4"): 2,
    }


def test_port_distribution_skips_replies_and_unknown_direction():
    exp = exporter("port-distribution")
    feed(
        exp,
        f.tcp(dport=5432),
        f.tcp(dport=5432),
        f.tcp(dport=5432, reply=True),
        f.tcp(dport=5432, reply=None),  # not known to be a request
        f.udp(dport=53),
        f.tcp(dport=80, verdict=Verdict.DROPPED, drop_reason=133),
    )
    assert values(exp, "hubble_port_distribution_total") == {
        labels(protocol="TCP", port="5432"): 2,
        labels(protocol="UDP", port="53"): 1,
    }


def test_icmp_type_names_as_gopacket_prints_them():
    exp = exporter("icmp")
    feed(exp, f.icmp(8), f.icmp(0), f.icmp(0), f.icmp(3, 3), f.icmp(11, 0), f.icmp(3, 99))
    assert values(exp, "hubble_icmp_total") == {
        labels(family="IPv4", type="EchoRequest"): 1,
        labels(family="IPv4", type="EchoReply"): 2,
        labels(family="IPv4", type="DestinationUnreachable(Port)"): 1,
        labels(family="IPv4", type="TimeExceeded(TTLExceeded)"): 1,
        labels(family="IPv4", type="DestinationUnreachable(Code: 99)"): 1,
    }


def test_dns_queries_responses_and_types_with_query_option():
    exp = exporter("dns:query;ignoreAAAA")
    q = "db.default.svc.cluster.local."
    feed(
        exp,
        f.dns(reply=False),
        f.dns(reply=False, qtypes=("AAAA",)),  # ignoreAAAA
        f.dns(reply=True, ips=("10.0.2.7",), rrtypes=("A",)),
        f.dns(reply=True, query="nope.example.", rcode=3),
        f.dns(reply=False, query="evil.example.", verdict=Verdict.DROPPED),
    )
    assert values(exp, "hubble_dns_queries_total") == {
        labels(rcode="", qtypes="A", ips_returned="0", query=q): 1,
        labels(rcode="Policy denied", qtypes="A", ips_returned="0", query="evil.example."): 1,
    }
    assert values(exp, "hubble_dns_responses_total") == {
        labels(rcode="No Error", qtypes="A", ips_returned="1", query=q): 1,
        labels(rcode="Non-Existent Domain", qtypes="A", ips_returned="0", query="nope.example."): 1,
    }
    assert values(exp, "hubble_dns_response_types_total") == {
        labels(type="A", qtypes="A", query=q): 1
    }


def test_http_requests_responses_and_duration_histogram():
    exp = exporter({"name": "http", "contextOptions": {"destinationContext": "workload-name"}})
    feed(
        exp,
        f.http(response=False),
        f.http(response=False, method="POST", direction=TrafficDirection.INGRESS),
        f.http(response=True, code=200, latency_s=0.003),
        f.http(response=True, code=200, latency_s=0.2),
        f.http(response=True, code=503, latency_s=3.0),
    )
    assert values(exp, "hubble_http_requests_total") == {
        labels(destination="db", method="GET", protocol="HTTP/1.1", reporter="client"): 1,
        labels(destination="db", method="POST", protocol="HTTP/1.1", reporter="server"): 1,
    }
    assert values(exp, "hubble_http_responses_total") == {
        labels(destination="db", method="GET", protocol="HTTP/1.1", status="200",
               reporter="client"): 2,
        labels(destination="db", method="GET", protocol="HTTP/1.1", status="503",
               reporter="client"): 1,
    }  # fmt: skip
    family = next(x for x in exp.metrics.families if x.name.endswith("duration_seconds"))
    counts, total = family.values[("db", "GET", "client")]
    buckets = dict(zip((*family.buckets, float("inf")), counts, strict=True))
    assert buckets[0.005] == 1 and buckets[0.25] == 1 and buckets[5.0] == 1
    assert sum(counts) == 3 and total[0] == pytest.approx(3.203)


def test_http_v2_counts_responses_with_inverted_context():
    ctx = {"sourceContext": "app", "destinationContext": "app"}
    exp = exporter({"name": "httpV2", "contextOptions": ctx})
    feed(exp, f.http(response=False), f.http(response=True, src=f.DB, dst=f.WEB, latency_s=0.01))
    # the response goes db -> web; inverted, the labels name the request's ends: web -> db
    assert values(exp, "hubble_http_requests_total") == {
        labels(source="web", destination="db", method="GET", protocol="HTTP/1.1", status="200",
               reporter="client"): 1
    }  # fmt: skip


def test_policy_verdicts_l3l4_and_l7_host_ignored():
    exp = exporter("policy")
    feed(
        exp,
        f.policy_verdict(Verdict.DROPPED, match=0),
        f.policy_verdict(Verdict.FORWARDED, match=2),
        f.policy_verdict(Verdict.FORWARDED, match=2),
        f.policy_verdict(Verdict.FORWARDED, match=1, src=f.HOST),  # from the host: ignored
        f.http(response=False),  # an L7 access-log verdict
        f.tcp(),  # a trace: not a verdict
    )
    assert values(exp, "hubble_policy_verdicts_total") == {
        labels(direction="ingress", match="none", action="dropped"): 1,
        labels(direction="ingress", match="l3-l4", action="forwarded"): 2,
        labels(direction="egress", match="l7/http", action="forwarded"): 1,
    }


def test_flows_to_world_options():
    exp = exporter("flows-to-world:any-drop;port;syn-only")
    feed(
        exp,
        f.tcp(dst=f.WORLD, dport=443, flags=0x02),
        f.tcp(dst=f.WORLD, dport=443, flags=0x10),  # not a SYN: syn-only skips it
        f.tcp(dst=f.WORLD, dport=443, flags=0x12, reply=True),  # a reply
        f.tcp(dst=f.WORLD, dport=25, flags=0x02, verdict=Verdict.DROPPED, drop_reason=134),
        f.tcp(dst=f.DB, dport=443),  # not to the world
    )
    assert values(exp, "hubble_flows_to_world_total") == {
        labels(protocol="TCP", verdict="FORWARDED", port="443"): 1,
        labels(protocol="TCP", verdict="DROPPED", port="25"): 1,
    }
    plain = exporter("flows-to-world")
    feed(
        plain,
        f.tcp(dst=f.WORLD, flags=0x10),
        f.tcp(dst=f.WORLD, verdict=Verdict.DROPPED, drop_reason=134),  # not a policy drop
        f.tcp(dst=f.WORLD, verdict=Verdict.DROPPED, drop_reason=133),
    )
    assert values(plain, "hubble_flows_to_world_total") == {
        labels(protocol="TCP", verdict="FORWARDED"): 1,
        labels(protocol="TCP", verdict="DROPPED"): 1,
    }


def test_labels_context_and_direction_specific_context():
    exp = exporter(
        {
            "name": "flow",
            "contextOptions": [
                {"name": "labelsContext", "values": ["traffic_direction", "source_namespace"]},
                {"name": "sourceContext", "values": ["pod-name"]},
                {"name": "sourceIngressContext", "values": ["reserved-identity", "namespace"]},
            ],
        }
    )
    feed(exp, f.tcp(), f.policy_verdict(Verdict.FORWARDED, src=f.WORLD))
    got = values(exp, "hubble_flows_processed_total")
    keys = {dict(k)["traffic_direction"]: dict(k) for k in got}
    assert keys["egress"]["source_namespace"] == "default"
    assert keys["egress"]["source"] == "web-7d4b9c-x2k1p"
    assert keys["ingress"]["source"] == "reserved:world"  # ingress: reserved-identity first


def test_include_and_exclude_filters_in_both_forms():
    exp = exporter(
        {
            "name": "drop",
            "includeFilters": [{"source_pod": ["default/"]}],
            "excludeFilters": ["--drop-reason-desc POLICY_DENIED"],
        }
    )
    feed(
        exp,
        f.tcp(verdict=Verdict.DROPPED, drop_reason=133),  # excluded
        f.tcp(verdict=Verdict.DROPPED, drop_reason=134),
        f.tcp(verdict=Verdict.DROPPED, drop_reason=134, src=f.CLIENT),  # not included
    )
    want = labels(reason="INVALID_PACKET_DROPPED", protocol="TCP")
    assert values(exp, "hubble_drop_total") == {want: 1}


def test_pipeline_records_lost_and_lag():
    exp = exporter("flow", pipeline=True)
    lost = LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 17, node_name="node-2")
    lost2 = LostEvent(LostEventSource.PUBLISHER_SPOOL, 5, node_name="node-1")
    exp.count(ExportBatch((f.tcp(), f.tcp(), lost, lost2, lost), {("flowscope.flows", 2): 40}))
    assert values(exp, "flowscope_export_records_total") == {
        labels(type="flow"): 2,
        labels(type="lost_events"): 3,
    }
    assert values(exp, "flowscope_lost_events_total") == {
        labels(source="PERF_EVENT_RING_BUFFER", node="node-2"): 34,
        labels(source="PUBLISHER_SPOOL", node="node-1"): 5,
    }
    assert values(exp, "hubble_lost_events_total") == {
        labels(source="perf_event_ring_buffer"): 34,
        labels(source="publisher_spool"): 5,
    }
    assert values(exp, "flowscope_consumer_lag_records") == {
        labels(topic="flowscope.flows", partition="2"): 40
    }
