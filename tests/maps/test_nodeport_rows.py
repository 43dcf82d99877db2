"""`flowscope service list` rows from the NodePort maps: the dict-backed tables of the same
layout, and the real pinned map of a loaded NodePort instance."""

from __future__ import annotations

import shutil

import pytest

from dataplane.maps.nodeportmap import FakeNodePortMaps, NodePortBackend, NodePortService
from flowscope.cli.service import (
    ROW_SOURCES,
    MapsMissing,
    format_table,
    nodeport_rows,
    nodeport_rows_from,
    with_owners,
)
from flowscope.paths import ClusterPaths
from tests.conftest import unique

SERVICES = [
    NodePortService(
        30080,
        "TCP",
        (NodePortBackend("10.244.1.5", 80), NodePortBackend("10.244.2.7", 80, remote=True)),
        maglev=True,
    ),
    NodePortService(
        30053, "UDP", (NodePortBackend("10.244.1.5", 53),), local=True, affinity_timeout=60
    ),
    NodePortService(80, "TCP", (NodePortBackend("10.244.1.5", 80),), address="10.225.0.7"),
]
WEB = {
    "metadata": {"name": "web", "namespace": "y"},
    "spec": {
        "type": "LoadBalancer",
        "clusterIP": "10.0.0.10",
        "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}],
    },
    "status": {"loadBalancer": {"ingress": [{"ip": "10.225.0.7"}]}},
}


def test_rows_show_each_nodeport_with_its_backends_and_settings() -> None:
    maps = FakeNodePortMaps()
    maps.sync(SERVICES)
    rows = nodeport_rows_from("node-1", maps.tables[0].items())
    assert [(r.frontend, r.type, r.flags) for r in rows] == [
        ("0.0.0.0:30053/UDP", "NodePort", ("eTP=Local", "affinity=60s")),
        ("0.0.0.0:30080/TCP", "NodePort", ("maglev",)),
        ("10.225.0.7:80/TCP", "LoadBalancer", ()),
    ]
    assert [(b.address, b.state) for b in rows[1].backends] == [
        ("10.244.1.5:80/TCP", "active"),
        ("10.244.2.7:80/TCP", "active, remote (SNAT)"),
    ]
    assert rows[1].id == maps.lookup(30080, "TCP").id
    named = with_owners(rows, [WEB])
    assert [(r.service, r.type) for r in named] == [
        ("", "NodePort"),
        ("y/web", "NodePort"),
        ("y/web", "LoadBalancer"),
    ]
    text = format_table(named, node_column=False).splitlines()
    assert text[0].split()[:3] == ["ID", "Frontend", "Service"]
    assert "0.0.0.0:30080/TCP" in text[2] and "y/web [maglev]" in text[2]
    assert "nodeport" in ROW_SOURCES


def test_a_node_without_nodeport_maps_says_so() -> None:
    with pytest.raises(MapsMissing, match="no NodePort maps") as err:
        nodeport_rows(ClusterPaths(unique("h1nomaps")), "node-1")
    assert "agent" in err.value.hint


@pytest.mark.privileged
def test_rows_from_the_pinned_kernel_map() -> None:
    from probes.nodeport import NodePort

    paths = ClusterPaths(unique("h1rows"))
    n = NodePort.load(paths.node_bpf_dir("node-1") / "nodeport")
    try:
        n.maps.sync(SERVICES)
        rows = nodeport_rows(paths, "node-1")
        assert [(r.port, len(r.backends)) for r in rows] == [(30053, 1), (30080, 2), (80, 1)]
        assert n.maps.services() == sorted(SERVICES, key=lambda s: s.frontend)  # nothing written
    finally:
        n.unpin()
        n.close()
        shutil.rmtree(paths.bpf_dir, ignore_errors=True)
