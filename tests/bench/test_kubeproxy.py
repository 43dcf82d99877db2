"""bench.kubeproxy writes what kube-proxy's iptables mode writes: its chain names, one
KUBE-SERVICES rule per service port, probabilities 1/(n-i), DNAT per endpoint; endpoints from
EndpointSlices as kube-proxy takes them. The text loads into iptables (a throwaway namespace)."""

from __future__ import annotations

import contextlib
import subprocess
from ipaddress import IPv4Address

import pytest
from pyroute2 import netns as pyroute2_netns

from bench import kubeproxy
from bench.kubeproxy import Endpoint, ServicePort
from tests.conftest import unique


def sp(name: str, ip: str, endpoints: int, port_name: str = "http") -> ServicePort:
    eps = tuple(Endpoint(IPv4Address(f"10.244.1.{i + 10}"), 8080) for i in range(endpoints))
    return ServicePort("back", name, port_name, "TCP", IPv4Address(ip), 80, eps)


def test_chain_names_are_kube_proxys() -> None:
    # names as any cluster shows them (`iptables -t nat -S`)
    kubernetes = ServicePort(
        "default", "kubernetes", "https", "TCP", IPv4Address("10.0.0.1"), 443, ()
    )
    dns = ServicePort("kube-system", "kube-dns", "dns", "UDP", IPv4Address("10.0.0.10"), 53, ())
    dns_tcp = ServicePort(
        "kube-system", "kube-dns", "dns-tcp", "TCP", IPv4Address("10.0.0.10"), 53, ()
    )
    assert kubeproxy.service_chain(kubernetes) == "KUBE-SVC-NPX46M4PTMTKRN6Y"
    assert kubeproxy.service_chain(dns) == "KUBE-SVC-TCOU7JCQXEZGVUNU"
    assert kubeproxy.service_chain(dns_tcp) == "KUBE-SVC-ERIFXISQEP7F7OF4"
    one = sp("a", "10.0.0.5", 2)
    seps = {kubeproxy.endpoint_chain(one, ep) for ep in one.endpoints}
    assert len(seps) == 2 and all(c.startswith("KUBE-SEP-") and len(c) == 25 for c in seps)


def test_ruleset_shape() -> None:
    services = [sp("a", "10.0.0.5", 3), sp("b", "10.0.0.6", 1), sp("empty", "10.0.0.7", 0)]
    text = kubeproxy.ruleset(services, "10.244.0.0/16")
    nat = text[text.index("*nat") :]
    rules = [line for line in nat.splitlines() if line.startswith("-A ")]
    svc_rules = [r for r in rules if r.startswith("-A KUBE-SERVICES ")]
    # one per service with endpoints, in order, then the NodePort tail-call last
    assert [r.split(" -d ")[1].split()[0] for r in svc_rules[:-1]] == ["10.0.0.5", "10.0.0.6"]
    assert svc_rules[-1].endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    assert "-A PREROUTING" in nat and "-A OUTPUT" in nat and "-A POSTROUTING" in nat

    a = kubeproxy.service_chain(services[0])
    a_rules = [r for r in rules if r.startswith(f"-A {a} ")]
    assert a_rules[0].endswith("! -s 10.244.0.0/16 -j KUBE-MARK-MASQ")
    picks = a_rules[1:]
    assert "--probability 0.3333333333" in picks[0] and "--probability 0.5000000000" in picks[1]
    assert "statistic" not in picks[2]  # the last endpoint takes what is left
    for ep in services[0].endpoints:
        sep = kubeproxy.endpoint_chain(services[0], ep)
        assert f":{sep} - [0:0]" in nat
        assert f"-A {sep} " in nat and f"-j DNAT --to-destination {ep}" in nat
    b = kubeproxy.service_chain(services[1])
    assert not any("statistic" in r for r in rules if r.startswith(f"-A {b} "))
    assert "10.0.0.7" not in text  # no endpoints: no nat rules (kube-proxy REJECTs in filter)
    # 7 fixed nat rules + 1 tail; a: 1+1+3+6, b: 1+1+1+2; filter: 12
    assert kubeproxy.rule_count(text) == 8 + 11 + 5 + 12


def test_service_ports_from_services_and_slices() -> None:
    def svc(name: str, ip: str | None) -> dict:
        spec = {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        if ip:
            spec["clusterIP"] = ip
        return {"metadata": {"namespace": "back", "name": name}, "spec": spec}

    def slice_(service: str, eps: list[tuple[str, bool | None]]) -> dict:
        return {
            "metadata": {
                "namespace": "back",
                "name": f"{service}-x",
                "labels": {kubeproxy.SERVICE_NAME_LABEL: service},
            },
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": [ip], **({"conditions": {"ready": r}} if r is not None else {})}
                for ip, r in eps
            ],
        }

    ports = kubeproxy.service_ports(
        [svc("web", "10.0.0.5"), svc("headless", None)],
        [slice_("web", [("10.244.1.2", True), ("10.244.1.3", False), ("10.244.1.4", None)])],
    )
    assert [p.port_name_string for p in ports] == ["back/web:http"]
    assert ports[0].endpoints == (
        Endpoint(IPv4Address("10.244.1.2"), 8080),
        Endpoint(IPv4Address("10.244.1.4"), 8080),
    )


@pytest.mark.privileged
@pytest.mark.parametrize("backend", ["iptables-legacy", "iptables-nft"])
def test_ruleset_loads_into_iptables(backend: str) -> None:
    """iptables-restore --test accepts it; loading and emptying leaves no rule behind."""
    name = unique("h4kp")
    services = [sp(f"s{i}", f"10.0.{i // 250}.{i % 250 + 1}", 1 + i % 3) for i in range(50)]
    text = kubeproxy.ruleset(services, "10.244.0.0/16")
    pyroute2_netns.create(name)
    try:

        def run(*argv: str, input: str | None = None) -> str:
            return subprocess.run(
                ["nsenter", f"--net=/run/netns/{name}", *argv],
                input=input,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout

        run(f"{backend}-restore", "--noflush", "--test", input=text)
        run(f"{backend}-restore", "--noflush", input=text)
        saved = run(f"{backend}-save")
        assert sum(line.startswith("-A ") for line in saved.splitlines()) == kubeproxy.rule_count(
            text
        )
        run(f"{backend}-restore", input=kubeproxy.empty_tables())
        assert not [line for line in run(f"{backend}-save").splitlines() if "-A " in line]
        with pytest.raises(subprocess.CalledProcessError):
            run(f"{backend}-restore", "--noflush", "--test", input=text.replace("COMMIT", "", 1))
    finally:
        with contextlib.suppress(OSError):
            pyroute2_netns.remove(name)
