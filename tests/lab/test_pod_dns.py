"""The pod runtime's DNS pieces: which pods run the cluster DNS, and the pod's resolv.conf as
its processes see it (a private mount namespace that leaves the host's file alone)."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest

from dataplane.lab import netns
from dataplane.lab.kubelet import image_name, runs_cluster_dns
from dataplane.lab.podexec import collect, exec_in_pod, fork_in_pod
from dataplane.lab.sandbox import Sandbox
from flowscope.paths import CGROUP_ROOT
from tests.conftest import unique


def test_image_names() -> None:
    assert image_name("mcr.microsoft.com/oss/kubernetes/coredns:v1.9.4") == "coredns"
    assert image_name("coredns/coredns@sha256:abc") == "coredns"
    assert image_name("registry:5000/coredns") == "coredns"
    assert image_name("agnhost") == "agnhost"
    dns_pod = {"spec": {"containers": [{"image": "flowscope/coredns:lab"}]}}
    assert runs_cluster_dns(dns_pod)
    assert not runs_cluster_dns({"spec": {"containers": [{"image": "corednsx"}]}})
    assert not runs_cluster_dns({"spec": {}})


@pytest.fixture
def sandbox(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.fail("needs root (run via `make test`)")
    box = Sandbox(
        f"fs.{unique('h2rc')}.pod", CGROUP_ROOT / "tests" / unique("cg"), tmp_path / "sandbox"
    )
    box.create("nameserver 10.0.0.10\nsearch x.svc.cluster.local\noptions ndots:5\n")
    try:
        yield box
    finally:
        box.destroy()
        netns.remove(box.netns)
        for parent in (box.cgroup.parent, CGROUP_ROOT):
            with contextlib.suppress(OSError):
                parent.rmdir()


def read_resolv_conf() -> str:
    return Path("/etc/resolv.conf").read_text()


def resolv_conf_mounts() -> list[str]:
    """The host's mounts over /etc/resolv.conf (usually none; a container may have one)."""
    return [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4] == "/etc/resolv.conf"
    ]


@pytest.mark.privileged
def test_pod_processes_see_the_pods_resolv_conf_and_nothing_leaks(sandbox: Sandbox) -> None:
    host = read_resolv_conf()
    before = resolv_conf_mounts()
    assert sandbox.resolv_conf and Path(sandbox.resolv_conf).read_text().startswith("nameserver")
    seen = collect(*fork_in_pod(sandbox, read_resolv_conf))
    assert seen == Path(sandbox.resolv_conf).read_text()
    # a command too (lab exec), and its exit status comes back
    assert exec_in_pod(sandbox, ["grep", "-q", "10.0.0.10", "/etc/resolv.conf"]) == 0
    # the host: same file, no mount over it
    assert read_resolv_conf() == host
    # (only resolv.conf: other namespaces come and go in the host's mount table meanwhile)
    assert resolv_conf_mounts() == before


@pytest.mark.privileged
def test_a_pod_without_a_resolv_conf_sees_the_hosts(sandbox: Sandbox, tmp_path: Path) -> None:
    plain = Sandbox(sandbox.netns, sandbox.cgroup, tmp_path / "other")
    plain.run_dir.mkdir()
    assert plain.resolv_conf is None
    assert collect(*fork_in_pod(plain, read_resolv_conf)) == read_resolv_conf()


@pytest.mark.privileged
def test_destroy_removes_the_run_dir(tmp_path: Path) -> None:
    box = Sandbox(f"fs.{unique('h2rc')}.pod", CGROUP_ROOT / "tests" / unique("cg"), tmp_path / "b")
    box.create("nameserver 10.0.0.10\n")
    try:
        assert box.resolv_conf
    finally:
        box.destroy()
        with contextlib.suppress(OSError):
            box.cgroup.parent.rmdir()
    assert not box.run_dir.exists() and not box.exists()


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"clusterIP": "10.0.0.20", "selector": {"app": "web"}, "ports": [{"port": 80}]},
}


@pytest.mark.privileged
async def test_a_pod_resolves_through_the_dns_server_in_its_namespace(tmp_path: Path) -> None:
    """No lab: the DNS server's sockets made inside a namespace, a pod there whose resolv.conf
    names it, and glibc's resolver (getaddrinfo) in a forked child, as `lab probe` runs it."""
    import asyncio

    from dataplane.dns.server import ClusterDNS, listen, netns_socket_factory
    from dataplane.lab.probe import probe_name
    from flowscope.apis.objectstore import ObjectStore
    from flowscope.store import MemoryKV

    if os.geteuid() != 0:
        pytest.fail("needs root (run via `make test`)")
    box = Sandbox(f"fs.{unique('h2rs')}.pod", CGROUP_ROOT / "tests" / unique("cg"), tmp_path / "b")
    resolv = "nameserver 127.0.0.1\nsearch default.svc.cluster.local\noptions ndots:5\n"
    kv = MemoryKV()
    await ObjectStore(kv, service_cidr="10.0.0.0/16").apply([SERVICE])
    server = ClusterDNS(kv)
    await server.load()
    transport = tcp = None
    try:
        await asyncio.to_thread(box.create, resolv)  # pyroute2 runs its own loop: not this one
        new_socket = netns_socket_factory(box.netns_path)
        transport, tcp = await listen(server, new_socket, "127.0.0.1", 53)

        def resolve(name: str):
            return collect(*fork_in_pod(box, lambda: socket.gethostbyname(name)))

        for name in ("web", "web.default.svc.cluster.local"):
            assert await asyncio.to_thread(resolve, name) == "10.0.0.20"
        with pytest.raises(RuntimeError, match="gaierror"):
            await asyncio.to_thread(resolve, "nope.default.svc.cluster.local")
        # lab probe's path: a name that does not resolve is a result, not an exception
        result = await asyncio.to_thread(
            lambda: collect(*fork_in_pod(box, lambda: probe_name("s", "t", "nope", 80, "TCP", 1)))
        )
        assert not result["connected"] and "cannot resolve 'nope'" in result["error"]
        # the host's view is untouched (the pod's file was only ever seen inside the children)
        assert "127.0.0.1" not in read_resolv_conf().split("nameserver", 1)[-1].split()[:1]
    finally:
        if transport is not None and tcp is not None:
            transport.close()
            tcp.close()
        await asyncio.to_thread(box.destroy)
        with contextlib.suppress(OSError):
            box.cgroup.parent.rmdir()
