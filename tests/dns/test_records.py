"""The cluster's records as a pure function of Services and EndpointSlices (no network)."""

from __future__ import annotations

import dns.name
import dns.rcode
import dns.rdatatype as T

from dataplane.dns.records import TTL, ClusterRecords, cluster_records, resolve


def service(ns: str, name: str, cluster_ip: str, ports=(), **spec) -> dict:
    return {
        "metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": cluster_ip, "ports": list(ports), **spec},
    }


def port(name: str, number: int, protocol: str = "TCP") -> dict:
    return {"name": name, "port": number, "protocol": protocol}


def endpoint_slice(ns: str, svc: str, endpoints: list[tuple], ports=(), name=None) -> dict:
    """endpoints: (ip, ready) or (ip, ready, hostname)."""
    return {
        "metadata": {
            "namespace": ns,
            "name": name or f"{svc}-abc",
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "ports": list(ports),
        "endpoints": [
            {
                "addresses": [e[0]],
                "conditions": {"ready": e[1]},
                **({"hostname": e[2]} if len(e) > 2 else {}),
            }
            for e in endpoints
        ],
    }


def ask(records: ClusterRecords, name: str, qtype: int = T.A):
    return resolve(records, dns.name.from_text(name), qtype)


def addresses(answer) -> list[str]:
    return sorted(rd.address for rrset in answer.answer for rd in rrset if rrset.rdtype == T.A)


WEB = service("default", "web", "10.0.0.20", [port("http", 80), port("dns", 53, "UDP")])
DB = service("shop", "db", "None", [port("pg", 5432)])
DB_SLICE = endpoint_slice(
    "shop",
    "db",
    [("10.244.1.5", True), ("10.244.2.7", None, "db-0"), ("10.244.1.6", False)],
    [port("pg", 5432)],
)
RECORDS = cluster_records([WEB, DB], [DB_SLICE], ["default", "shop", "empty"], dns_ip="10.0.0.10")


def test_clusterip_service_answers_its_clusterip_case_insensitively() -> None:
    for name in ("web.default.svc.cluster.local.", "WEB.Default.SVC.cluster.LOCAL."):
        answer = ask(RECORDS, name)
        assert answer.rcode == dns.rcode.NOERROR
        assert addresses(answer) == ["10.0.0.20"]
        assert answer.answer[0].ttl == TTL
        assert answer.answer[0].name == dns.name.from_text(name)  # the asked spelling


def test_headless_service_answers_ready_endpoints_only() -> None:
    answer = ask(RECORDS, "db.shop.svc.cluster.local.")
    # ready True and ready absent (nil means ready) count; ready False does not
    assert addresses(answer) == ["10.244.1.5", "10.244.2.7"]
    assert addresses(ask(RECORDS, "db-0.db.shop.svc.cluster.local.")) == ["10.244.2.7"]
    assert addresses(ask(RECORDS, "10-244-1-5.db.shop.svc.cluster.local.")) == ["10.244.1.5"]
    assert ask(RECORDS, "10-244-1-6.db.shop.svc.cluster.local.").rcode == dns.rcode.NXDOMAIN


def test_publish_not_ready_addresses_publishes_all() -> None:
    db = service("shop", "db", "None", publishNotReadyAddresses=True)
    records = cluster_records([db], [DB_SLICE])
    assert len(addresses(ask(records, "db.shop.svc.cluster.local."))) == 3


def test_headless_without_endpoints_is_nodata() -> None:
    records = cluster_records([DB], [])
    answer = ask(records, "db.shop.svc.cluster.local.")
    assert answer.rcode == dns.rcode.NOERROR and not answer.answer
    assert answer.authority[0].rdtype == T.SOA


def test_other_types_of_existing_names_are_nodata_with_soa() -> None:
    answer = ask(RECORDS, "web.default.svc.cluster.local.", T.AAAA)
    assert answer.rcode == dns.rcode.NOERROR and not answer.answer
    (soa,) = answer.authority
    assert soa.rdtype == T.SOA and soa[0].minimum == TTL


def test_unknown_names_in_the_zone_are_nxdomain_with_soa() -> None:
    for name in (
        "nope.default.svc.cluster.local.",
        "web.nons.svc.cluster.local.",
        "nons.svc.cluster.local.",
        "a.b.c.d.e.f.cluster.local.",
        "web.default.cluster.local.",
    ):
        answer = ask(RECORDS, name)
        assert answer.rcode == dns.rcode.NXDOMAIN, name
        assert answer.authority[0].rdtype == T.SOA


def test_existing_namespaces_and_the_zone_structure_exist() -> None:
    for name in (
        "default.svc.cluster.local.",
        "empty.svc.cluster.local.",  # a namespace without services
        "svc.cluster.local.",
        "pod.cluster.local.",
    ):
        answer = ask(RECORDS, name)
        assert answer.rcode == dns.rcode.NOERROR and not answer.answer, name
    soa = ask(RECORDS, "cluster.local.", T.SOA)
    assert soa.answer[0].rdtype == T.SOA
    ns = ask(RECORDS, "cluster.local.", T.NS)
    assert str(ns.answer[0][0].target) == "ns.dns.cluster.local."
    assert addresses(ask(RECORDS, "ns.dns.cluster.local.")) == ["10.0.0.10"]


def test_srv_for_named_ports() -> None:
    answer = ask(RECORDS, "_http._tcp.web.default.svc.cluster.local.", T.SRV)
    (srv,) = answer.answer[0]
    assert (srv.port, str(srv.target)) == (80, "web.default.svc.cluster.local.")
    assert [str(r.name) for r in answer.additional] == ["web.default.svc.cluster.local."]
    (udp,) = ask(RECORDS, "_dns._udp.web.default.svc.cluster.local.", T.SRV).answer[0]
    assert udp.port == 53
    # the wrong protocol or an unknown port name: no such name
    assert ask(RECORDS, "_dns._tcp.web.default.svc.cluster.local.", T.SRV).rcode == 3
    assert ask(RECORDS, "_nope._tcp.web.default.svc.cluster.local.", T.SRV).rcode == 3
    # the name exists, but has no A
    assert ask(RECORDS, "_http._tcp.web.default.svc.cluster.local.").answer == ()


def test_srv_of_a_headless_service_names_each_endpoint() -> None:
    answer = ask(RECORDS, "_pg._tcp.db.shop.svc.cluster.local.", T.SRV)
    targets = sorted((str(r.target), r.port, r.weight) for r in answer.answer[0])
    assert targets == [
        ("10-244-1-5.db.shop.svc.cluster.local.", 5432, 50),
        ("db-0.db.shop.svc.cluster.local.", 5432, 50),
    ]
    assert {str(r.name) for r in answer.additional} == {t for t, _, _ in targets}


def test_srv_on_the_service_name_lists_every_port() -> None:
    answer = ask(RECORDS, "web.default.svc.cluster.local.", T.SRV)
    assert sorted(r.port for r in answer.answer[0]) == [53, 80]


def test_external_name_is_a_cname() -> None:
    ext = service("default", "ext", "", type="ExternalName", externalName="db.example.org")
    records = cluster_records([ext], [])
    answer = ask(records, "ext.default.svc.cluster.local.")
    assert answer.answer[0].rdtype == T.CNAME
    assert str(answer.answer[0][0].target) == "db.example.org."


def test_pod_names() -> None:
    assert addresses(ask(RECORDS, "10-244-3-9.any.pod.cluster.local.")) == ["10.244.3.9"]
    assert ask(RECORDS, "10-244-3.any.pod.cluster.local.").rcode == dns.rcode.NXDOMAIN
    assert ask(RECORDS, "1-2-3-999.any.pod.cluster.local.").rcode == dns.rcode.NXDOMAIN


def test_ptr_for_service_ips_and_headless_endpoints() -> None:
    answer = ask(RECORDS, "20.0.0.10.in-addr.arpa.", T.PTR)
    assert str(answer.answer[0][0].target) == "web.default.svc.cluster.local."
    answer = ask(RECORDS, "7.2.244.10.in-addr.arpa.", T.PTR)
    assert str(answer.answer[0][0].target) == "db-0.db.shop.svc.cluster.local."
    assert ask(RECORDS, "99.0.0.10.in-addr.arpa.", T.PTR) is None  # not ours: forwarded


def test_names_outside_the_zone_are_not_ours() -> None:
    assert ask(RECORDS, "example.com.") is None
    assert ask(RECORDS, "web.default.") is None
    assert ask(RECORDS, ".") is None


def test_other_domain() -> None:
    records = cluster_records([WEB], [], domain="lab.internal")
    assert addresses(ask(records, "web.default.svc.lab.internal.")) == ["10.0.0.20"]
    assert ask(records, "web.default.svc.cluster.local.") is None


def test_records_follow_the_objects() -> None:
    """Endpoint readiness and deletions change the answers: nothing is cached across builds."""
    ready = endpoint_slice("shop", "db", [("10.244.1.5", True)], [port("pg", 5432)])
    gone = endpoint_slice("shop", "db", [("10.244.1.5", False)], [port("pg", 5432)])
    assert addresses(ask(cluster_records([DB], [ready]), "db.shop.svc.cluster.local.")) == [
        "10.244.1.5"
    ]
    assert addresses(ask(cluster_records([DB], [gone]), "db.shop.svc.cluster.local.")) == []
    assert ask(cluster_records([], [ready]), "db.shop.svc.cluster.local.").rcode == 3


def test_garbage_objects_are_skipped_not_fatal() -> None:
    junk = [
        {},
        {"metadata": {}},
        {"metadata": {"name": "x"}, "spec": {"clusterIP": "not-an-ip", "ports": [{"port": "a"}]}},
    ]
    slices = [{}, {"metadata": {"labels": {"kubernetes.io/service-name": "x"}}, "endpoints": [{}]}]
    records = cluster_records(junk, slices)
    assert ask(records, "x.default.svc.cluster.local.").rcode == dns.rcode.NOERROR
