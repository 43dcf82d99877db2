"""flowscope.netns_sockets: pyroute2's namespace operations without fork (forking beside gRPC's
threads crashed children), checked against the kernel."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
from pyroute2 import IPRoute, netns

import flowscope.netns_sockets
from tests.conftest import unique

pytestmark = pytest.mark.privileged


def test_create_makes_a_new_namespace_and_leaves_the_process_where_it_was() -> None:
    name = unique("fs-nsc-")
    before = os.stat("/proc/self/ns/net").st_ino
    netns.create(name)
    try:
        assert os.stat(f"/run/netns/{name}").st_ino != before
        assert os.stat("/proc/self/ns/net").st_ino == before
        # a socket made for it lives in it: it sees only its own loopback
        with IPRoute(netns=name) as ipr:
            assert [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()] == ["lo"]
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert name in out
        # pyroute2's own create forks a child; ours is installed in its place
        assert netns.create is flowscope.netns_sockets.create_netns
    finally:
        netns.remove(name)
    assert not os.path.exists(f"/run/netns/{name}")


def test_create_works_beside_busy_threads() -> None:
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            time.sleep(0)

    threads = [threading.Thread(target=busy) for _ in range(4)]
    for t in threads:
        t.start()
    names = [unique("fs-nsb-") for _ in range(20)]
    try:
        for name in names:
            netns.create(name)
        assert all(os.path.exists(f"/run/netns/{n}") for n in names)
    finally:
        stop.set()
        for t in threads:
            t.join()
        for name in names:
            if os.path.exists(f"/run/netns/{name}"):
                netns.remove(name)
