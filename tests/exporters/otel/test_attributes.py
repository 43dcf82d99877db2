from exporters.otel.attributes import flow_attributes, lost_attributes
from flowscope.flow.model import Verdict
from tests.exporters.otel.flows import dns_response, http_request, http_response, lost, tcp_flow


def test_l3_l4_flow_has_semantic_convention_attributes() -> None:
    a = flow_attributes(tcp_flow(3))
    assert a["network.transport"] == "tcp"
    assert a["network.type"] == "ipv4"
    assert (a["source.address"], a["source.port"]) == ("10.0.1.5", 40003)
    assert (a["destination.address"], a["destination.port"]) == ("10.0.2.7", 5432)
    # egress: the pod the flow was observed for is the source
    assert (a["k8s.namespace.name"], a["k8s.pod.name"]) == ("default", "web-1")
    assert a["k8s.node.name"] == "n1"
    assert a["flowscope.verdict"] == "FORWARDED"
    assert a["flowscope.source.identity"] == 1234
    assert a["flowscope.destination.identity"] == 5678
    assert a["flowscope.source.workload"] == "web"
    assert a["flowscope.destination.pod"] == "db-0"
    assert a["flowscope.tcp.flags"] == ("SYN",)
    assert "flowscope.drop_reason" not in a


def test_drop_names_its_reason() -> None:
    a = flow_attributes(tcp_flow(verdict=Verdict.DROPPED))
    assert a["flowscope.verdict"] == "DROPPED"
    assert a["flowscope.drop_reason"] == "POLICY_DENIED"


def test_ingress_names_the_destination_pod() -> None:
    a = flow_attributes(http_request())
    assert (a["k8s.namespace.name"], a["k8s.pod.name"]) == ("prod", "db-0")


def test_http_attributes() -> None:
    req = flow_attributes(http_request())
    assert req["http.request.method"] == "GET"
    assert "http.response.status_code" not in req
    assert req["url.path"] == "/orders"
    assert req["network.protocol.name"] == "http"
    assert req["network.protocol.version"] == "1.1"
    resp = flow_attributes(http_response(code=503))
    assert resp["http.response.status_code"] == 503
    assert resp["flowscope.l7.type"] == "RESPONSE"
    assert resp["flowscope.l7.latency_ns"] == 25_000_000


def test_dns_attributes() -> None:
    a = flow_attributes(dns_response())
    assert a["dns.question.name"] == "db.prod.svc.cluster.local"
    assert a["dns.answers"] == ("10.0.2.7",)
    assert a["network.transport"] == "udp"
    assert a["flowscope.dns.rcode"] == 0


def test_lost_event_attributes() -> None:
    a = lost_attributes(lost(n=9))
    assert a == {
        "flowscope.lost.source": "PERF_EVENT_RING_BUFFER",
        "flowscope.lost.events": 9,
        "k8s.node.name": "n1",
        "flowscope.lost.cpu": 1,
    }
