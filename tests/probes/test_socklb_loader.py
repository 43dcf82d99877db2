"""probes/socklb.py loading and attachment: a restarted agent adopts the maps and their ids, a
second attach replaces the older instance on the cgroup (never two translating), detach removes
only ours, and bad arguments are refused by name."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataplane.maps.lbmap import Backend, Service
from flowscope.errors import FlowscopeError, UsageError
from probes import libbpf, socklb
from probes.socklb import ATTACH_TYPES, SocketLB
from tests.conftest import unique

pytestmark = pytest.mark.privileged

CGROUP2 = Path("/sys/fs/cgroup/unified")
WEB = Service("10.96.0.10", 80, "TCP", (Backend("10.244.0.11", 8080),), affinity_timeout=30)


@pytest.fixture
def cgroup() -> Iterator[Path]:
    path = CGROUP2 / unique("fslbl")
    path.mkdir()
    try:
        yield path
    finally:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.02)
    assert not path.exists()


def attached_ids(cgroup: Path) -> dict[str, list[int]]:
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {name: libbpf.prog_query(fd, t) for name, t in ATTACH_TYPES.items()}
    finally:
        os.close(fd)


def prog_id(lb: SocketLB, name: str) -> int:
    return libbpf.prog_info(lb.prog_fd(name)).id


def test_a_restarted_agent_adopts_services_and_takes_over_the_cgroup(
    pin_root: Path, cgroup: Path
) -> None:
    first = SocketLB.load(pin_root / "n")
    second = None
    try:
        entry = first.maps.upsert_service(WEB)
        first.attach(cgroup)
        first.attach(cgroup)  # idempotent
        assert attached_ids(cgroup) == {n: [prog_id(first, n)] for n in socklb.PROGRAMS}
        first.close()  # kill -9: pins and the attachment remain
        second = SocketLB.load(pin_root / "n")
        assert all(second.adopted.values()), second.adopted
        assert second.maps.entries() == [entry]
        second.attach(cgroup)
        # the new instance replaced the old one: exactly one of each program, the new one
        assert attached_ids(cgroup) == {n: [prog_id(second, n)] for n in socklb.PROGRAMS}
        assert all(second.attached(cgroup).values())
        assert second.detach() == 4
        assert attached_ids(cgroup) == {n: [] for n in socklb.PROGRAMS}
        assert second.detach() == 0
    finally:
        if second is not None:
            second.detach(cgroup)
            second.unpin()
            second.close()
        else:
            first.detach(cgroup)
            first.unpin()
    assert not (pin_root / "n").exists()


def test_detach_leaves_programs_of_other_owners(pin_root: Path, cgroup: Path) -> None:
    lb = SocketLB.load(pin_root / "n")
    # another owner's program on the same hook: a copy of ours under another name
    other = libbpf.prog_load_attach_type(
        libbpf.BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        "other_connect4",
        _return_one(),
        "GPL",
        libbpf.BPF_CGROUP_INET4_CONNECT,
    )
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libbpf.prog_attach(other, fd, libbpf.BPF_CGROUP_INET4_CONNECT, libbpf.BPF_F_ALLOW_MULTI)
        lb.attach(cgroup)
        assert len(attached_ids(cgroup)[socklb.CONNECT4]) == 2
        assert lb.detach() == 4
        assert attached_ids(cgroup)[socklb.CONNECT4] == [libbpf.prog_info(other).id]
    finally:
        with contextlib.suppress(OSError):
            libbpf.prog_detach(other, fd, libbpf.BPF_CGROUP_INET4_CONNECT)
        os.close(fd)
        os.close(other)
        lb.detach(cgroup)
        lb.unpin()
        lb.close()


def _return_one() -> bytes:
    # r0 = 1; exit
    return bytes([0xB7, 0, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])


def test_bad_arguments_name_the_field(pin_root: Path) -> None:
    with pytest.raises(UsageError, match="events_bytes: 5000"):
        SocketLB.load(pin_root / "n", events_bytes=5000)
    with pytest.raises(UsageError, match="service_slots: 0"):
        SocketLB.load(pin_root / "n", service_slots=0)
    lb = SocketLB.load(pin_root / "n", service_slots=1024, backends=256)
    try:
        with pytest.raises(FlowscopeError, match="cannot open cgroup"):
            lb.attach(pin_root / "no-such-cgroup")
        assert lb.maps.usage()["lb_services"] == (0, 1024)
    finally:
        lb.unpin()
        lb.close()
