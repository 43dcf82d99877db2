"""Opening a cluster's object store: every command and daemon reaches the cluster this way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from flowscope.apis.objectstore import ObjectStore
from flowscope.clusterinfo import ClusterInfo
from flowscope.store.etcd import EtcdKV


@asynccontextmanager
async def cluster_store(info: ClusterInfo) -> AsyncIterator[ObjectStore]:
    """The cluster's ObjectStore over its etcd, closed on exit."""
    kv = EtcdKV(info.etcd_url)
    try:
        yield ObjectStore(kv, service_cidr=info.service_cidr)
    finally:
        await kv.close()
