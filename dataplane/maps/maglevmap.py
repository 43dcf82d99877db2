"""The NodePort Maglev tables (probes/nodeport.c `np_maglev`), seen from Python.

    np_maglev  service id -> u16 slot[MAGLEV_M]: for each table entry, the backend slot (1..count
               of np_services) a connection hashing there goes to

The table itself is computed by dataplane.services.maglev (pure); this module only stores it.
Entries are 32 KiB each and allocated on demand (BPF_F_NO_PREALLOC), so only Maglev services
cost memory.
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Sequence

from dataplane.maps.bpfmap import MapError
from dataplane.maps.lbmap import Table
from dataplane.services.maglev import DEFAULT_TABLE_SIZE

MAGLEV_MAP = "np_maglev"
TABLE_SIZE = DEFAULT_TABLE_SIZE  # MAGLEV_M in nodeport.c


class MaglevTable(ct.Structure):
    """struct np_maglev_table."""

    _fields_ = (("slot", ct.c_uint16 * TABLE_SIZE),)


LAYOUT: tuple[type, type] = (ct.c_uint32, MaglevTable)


def table_value(table: Sequence[int]) -> MaglevTable:
    """The map value of a lookup table of backend indices (0-based, as maglev.lookup_table gives
    them): the kernel stores slots, index + 1."""
    if len(table) != TABLE_SIZE:
        raise MapError(f"maglev table: {len(table)} entries, the datapath needs {TABLE_SIZE}")
    value = MaglevTable()
    value.slot[:] = [i + 1 for i in table]
    return value


class MaglevMap:
    """Write, read and delete services' tables over a table store (kernel or fake)."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def put(self, service_id: int, table: Sequence[int]) -> None:
        self.table.put(ct.c_uint32(service_id), table_value(table))

    def get(self, service_id: int) -> tuple[int, ...] | None:
        """The stored slots (1-based) of a service's table, or None."""
        value = self.table.get(ct.c_uint32(service_id))
        return None if value is None else tuple(value.slot)

    def delete(self, service_id: int) -> bool:
        return self.table.delete(ct.c_uint32(service_id))

    def ids(self) -> set[int]:
        """The services holding a table (key by key: values are 32 KiB each)."""
        bpfmap = getattr(self.table, "map", None)
        if bpfmap is not None:
            return {int(k.value) for k in bpfmap.keys()}  # noqa: SIM118 (a BpfMap, not a dict)
        return {int(k.value) for k, _ in self.table.items()}
