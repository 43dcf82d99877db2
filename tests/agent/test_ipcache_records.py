"""IP records name the pod's workload: JSON old and new decoders read, the agent publishes it,
and the collector's Enricher puts it into the flow's endpoint (Hubble's `workloads`)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address

from collector.enrich import Enricher
from dataplane.agent import ipcache_records
from dataplane.agent.ipcache_records import IPRecord
from dataplane.identity.model import Identity, pod_labels
from flowscope.apis.objectstore import ObjectStore
from flowscope.flow.model import Workload
from tests.agent.test_enforcement import add, endpoint, namespace, pod, running

IP, NODE_IP = IPv4Address("10.244.0.10"), IPv4Address("10.224.0.4")
OLD_JSON = (
    b'{"host_ip": "10.224.0.4", "identity": 300, "ip": "10.244.0.10", "namespace": "x", '
    b'"node": "n1", "pod": "a"}'
)


def test_records_round_trip_with_and_without_a_workload() -> None:
    with_workload = IPRecord(IP, 300, "n1", NODE_IP, "x", "a", Workload("web", "Deployment"))
    doc = json.loads(with_workload.to_json())
    assert doc["workload"] == {"name": "web", "kind": "Deployment"}
    assert ipcache_records.decode("k", with_workload.to_json()) == with_workload
    bare = IPRecord(IP, 300, "n1", NODE_IP, "x", "a")
    assert "workload" not in json.loads(bare.to_json())  # as the records before the field
    assert bare.to_json() == OLD_JSON


def test_records_written_before_the_field_and_after_later_ones_still_decode() -> None:
    assert ipcache_records.decode("k", OLD_JSON) == IPRecord(IP, 300, "n1", NODE_IP, "x", "a")
    later = json.loads(OLD_JSON) | {
        "zone": "eu-1",
        "workload": {"name": "db", "kind": "ReplicaSet"},
    }
    record = ipcache_records.decode("k", json.dumps(later).encode())
    assert record is not None and record.workload == Workload("db", "ReplicaSet")
    broken = json.loads(OLD_JSON) | {"workload": "web"}
    assert ipcache_records.decode("k", json.dumps(broken).encode()) is None


class Directory:
    version = 0

    def __init__(self, record: IPRecord) -> None:
        self.records = {str(record.ip): record}

    def record(self, ip: str) -> IPRecord | None:
        return self.records.get(ip)

    def identity(self, identity_id: int) -> Identity | None:
        return Identity(identity_id, pod_labels("x", {"app": "web"}, {}))

    def rule(self, cookie: int):
        return None


def test_the_enricher_puts_the_workload_into_the_endpoint() -> None:
    record = IPRecord(IP, 300, "n1", NODE_IP, "x", "web-7d9c-abcde", Workload("web", "Deployment"))
    ep = Enricher(Directory(record), "lab").endpoint(str(IP), 300, 7)
    assert ep.workloads == (Workload("web", "Deployment"),)
    assert ep.to_dict()["workloads"] == [{"name": "web", "kind": "Deployment"}]
    bare = Enricher(Directory(IPRecord(IP, 300, "n1", NODE_IP, "x", "a")), "lab")
    assert bare.endpoint(str(IP), 300, 7).workloads == ()
    assert "workloads" not in bare.endpoint(str(IP), 300, 7).to_dict()


async def test_the_agent_publishes_the_workload_of_a_deployments_pod(kv) -> None:
    store = ObjectStore(kv)
    owned = pod("x", "web-7d9c-abcde", {"app": "web", "pod-template-hash": "7d9c"})
    owned["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "web-7d9c",
            "uid": "rs-uid",
            "controller": True,
        }
    ]
    await store.apply([namespace("x"), owned, pod("x", "bare", {"app": "web"})])
    async with running(kv, "n1") as (enf, _):
        await add(kv, enf, endpoint("n1", "x", "web-7d9c-abcde", "10.244.0.10", 7))
        await add(kv, enf, endpoint("n1", "x", "bare", "10.244.0.11", 8))
        published = ipcache_records.decode(
            "", (await kv.get(ipcache_records.PREFIX + "10.244.0.10")).value
        )
        assert published is not None and published.workload == Workload("web", "Deployment")
        bare = (await kv.get(ipcache_records.PREFIX + "10.244.0.11")).value
        assert ipcache_records.decode("", bare).workload is None
        # the directory the node's collector reads answers the same for its local pods
        assert enf.record("10.244.0.10").workload == Workload("web", "Deployment")
        ep = Enricher(enf, "lab").by_ip("10.244.0.10")
        assert ep.workloads == (Workload("web", "Deployment"),) and ep.pod_name == "web-7d9c-abcde"
