"""Cluster state storage: a small key-value interface with etcd semantics (revisions, CAS, watch).

`EtcdKV` (flowscope.store.etcd) is the real store; `MemoryKV` serves unit tests only.
"""

from flowscope.store.kv import KV, Compare, Delete, KeyValue, Put, WatchEvent
from flowscope.store.memory import MemoryKV

__all__ = ["KV", "Compare", "Delete", "KeyValue", "MemoryKV", "Put", "WatchEvent"]
