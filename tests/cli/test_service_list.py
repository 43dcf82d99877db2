"""`flowscope service list`: rows from the socket LB's maps (dict-backed tables of the same layout,
and the real pinned maps of a loaded SocketLB), owners from Services, the table, missing maps."""

from __future__ import annotations

import asyncio
import ctypes as ct
import shutil
import tempfile
from pathlib import Path

import pytest

from dataplane.maps.lbmap import Backend, FakeLBMaps, Service, svc_key
from flowscope.cli.service import (
    ROW_SOURCES,
    MapsMissing,
    format_table,
    socket_lb_rows,
    socket_lb_rows_from,
    with_owners,
)
from flowscope.paths import ClusterPaths
from tests.conftest import unique
from tests.fakecluster import CLI, write_cluster

VIP = "10.0.0.10"
WEB = {
    "metadata": {"name": "web", "namespace": "y"},
    "spec": {"clusterIP": VIP, "ports": [{"port": 8000, "protocol": "TCP"}]},
}


def fake_maps() -> FakeLBMaps:
    maps = FakeLBMaps()
    maps.upsert_service(
        Service(VIP, 8000, "TCP", (Backend("10.244.1.5", 80), Backend("10.244.2.7", 80)))
    )
    maps.upsert_service(
        Service("10.0.0.11", 53, "UDP", (Backend("10.244.1.5", 53),), affinity_timeout=60)
    )
    return maps


def rows_of(maps: FakeLBMaps):
    return socket_lb_rows_from("node-1", maps.tables[0].items(), maps.tables[1].items())


def test_rows_show_each_frontend_with_its_backends_in_slot_order() -> None:
    maps = fake_maps()
    rows = rows_of(maps)
    assert [(r.frontend, r.type, r.service) for r in rows] == [
        ("10.0.0.10:8000/TCP", "ClusterIP", ""),
        ("10.0.0.11:53/UDP", "ClusterIP", ""),
    ]
    entry = maps.lookup(VIP, 8000, "TCP")
    assert rows[0].id == entry.revnat_id
    assert [(b.index, b.id, b.address, b.state) for b in rows[0].backends] == [
        (1, entry.backend_ids[0], "10.244.1.5:80/TCP", "active"),
        (2, entry.backend_ids[1], "10.244.2.7:80/TCP", "active"),
    ]
    assert rows[1].flags == ("affinity=60s",) and rows[0].flags == ()


def test_a_slot_naming_an_absent_backend_reads_as_missing() -> None:
    maps = fake_maps()
    services, backends = maps.tables[0], maps.tables[1]
    bid = maps.lookup(VIP, 8000, "TCP").backend_ids[1]
    backends.delete(ct.c_uint32(bid))  # as a reader may catch an update half way
    assert services.get(svc_key(maps.lookup(VIP, 8000, "TCP").service.frontend, 2)) is not None
    states = [b.state for b in rows_of(maps)[0].backends]
    assert states == ["active", "missing"]


def test_owners_come_from_services_and_the_table_reads_like_cilium() -> None:
    rows = with_owners(rows_of(fake_maps()), [WEB])
    assert [(r.service, r.type) for r in rows] == [("y/web", "ClusterIP"), ("", "ClusterIP")]
    text = format_table(rows, node_column=False).splitlines()
    assert text[0].split() == ["ID", "Frontend", "Service", "Type", "Backend", "Service"]
    assert "10.0.0.10:8000/TCP" in text[1] and "1 => 10.244.1.5:80/TCP (active)" in text[1]
    assert "y/web" in text[1]
    assert text[2].strip() == "2 => 10.244.2.7:80/TCP (active)"  # frontend columns left blank
    assert "- [affinity=60s]" in text[3]
    assert format_table(rows, node_column=True).splitlines()[1].startswith("node-1 ")


def test_a_node_without_maps_says_so() -> None:
    paths = ClusterPaths(unique("h3nomaps"))
    with pytest.raises(MapsMissing) as err:
        socket_lb_rows(paths, "node-1")
    assert "no socket-LB maps" in str(err.value) and "agent" in err.value.hint
    assert "socket-lb" in ROW_SOURCES  # the first source; NodePort adds its own


@pytest.mark.privileged
def test_rows_from_the_pinned_kernel_maps_while_their_owner_holds_them() -> None:
    from probes.socklb import SocketLB

    paths = ClusterPaths(unique("h3svc"))
    lb = SocketLB.load(paths.node_bpf_dir("node-1") / "socklb", service_slots=64, backends=64)
    try:
        lb.maps.upsert_service(Service(VIP, 8000, "TCP", (Backend("10.244.1.5", 80),)))
        rows = socket_lb_rows(paths, "node-1")
        assert [(r.frontend, [b.address for b in r.backends]) for r in rows] == [
            ("10.0.0.10:8000/TCP", ["10.244.1.5:80/TCP"])
        ]
        lb.maps.upsert_service(Service(VIP, 8000, "TCP", (Backend("10.244.2.7", 80),)))
        assert [b.address for b in socket_lb_rows(paths, "node-1")[0].backends] == [
            "10.244.2.7:80/TCP"
        ]
        # reading wrote nothing: the owner's view and the maps still agree
        assert lb.maps.services() == [Service(VIP, 8000, "TCP", (Backend("10.244.2.7", 80),))]
    finally:
        lb.unpin()
        lb.close()
        shutil.rmtree(paths.bpf_dir, ignore_errors=True)


async def test_the_command_fails_clearly_when_no_node_has_maps() -> None:
    run_root = Path(tempfile.mkdtemp(prefix="h3svc"))
    name = unique("h3svc")
    write_cluster(run_root, name, nodes=["node-1"])
    try:
        for extra, code, text in (
            ((), 1, "no socket-LB maps"),
            (("--node", "node-9"), 1, "node-9"),
            (("-o", "yaml"), 2, "invalid choice"),
        ):
            proc = await CLI(run_root, name).start("service", "list", *extra)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == code and text in err.decode(), err.decode()
            assert "Traceback" not in err.decode()
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
