"""Connectivity probes run from inside a pod, as the e2e suites' agnhost `connect` does.

A probe connected when a server answered: TCP through a completed handshake and an HTTP answer,
UDP through a reply datagram. What answered (the responder's pod name) and the latency are kept.
A target given by name is resolved first, inside the pod, by the pod's resolver (the cluster DNS
through the pod's resolv.conf), as a workload would; a name that does not resolve is a result.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ProbeResult:
    source: str  # NS/POD
    target: str  # as the user named it
    ip: str
    port: int
    protocol: str
    connected: bool
    answer: str | None = None
    latency_ms: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def tcp_hostname(ip: str, port: int, timeout: float) -> tuple[str, float]:
    """Connect, ask the responder for its name over HTTP; (answer, latency in ms)."""
    start = time.monotonic()
    with socket.create_connection((ip, port), timeout=timeout) as sock:
        sock.settimeout(max(0.05, timeout - (time.monotonic() - start)))
        sock.sendall(b"GET /hostname HTTP/1.0\r\nHost: probe\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
            if len(data) > 65536:
                break
    latency = (time.monotonic() - start) * 1000
    _head, _, body = data.partition(b"\r\n\r\n")
    return body.decode("utf-8", "replace").strip(), latency


def udp_hostname(ip: str, port: int, timeout: float) -> tuple[str, float]:
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((ip, port))
        sock.send(b"hostname")
        data = sock.recv(4096)
    return data.decode("utf-8", "replace").strip(), (time.monotonic() - start) * 1000


def probe(source: str, target: str, ip: str, port: int, protocol: str, timeout: float) -> dict:
    """One probe from the current namespace; a dict so that it crosses a fork as JSON."""
    fn = tcp_hostname if protocol == "TCP" else udp_hostname
    try:
        answer, latency = fn(ip, port, timeout)
        result = ProbeResult(source, target, ip, port, protocol, True, answer, round(latency, 3))
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        result = ProbeResult(source, target, ip, port, protocol, False, error=reason)
    return result.to_dict()


def probe_name(
    source: str, target: str, name: str, port: int, protocol: str, timeout: float
) -> dict:
    """Resolve `name` with the resolver of the current process (inside the pod), then probe.

    Each DNS query waits at most the probe's timeout, once (glibc's default, 5 s twice per
    search domain, would hold a probe of an unreachable DNS for 40 s); run it in a child.
    """
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    os.environ.setdefault("RES_OPTIONS", f"timeout:{max(1, math.ceil(timeout))} attempts:1")
    try:
        infos = socket.getaddrinfo(name, port, socket.AF_INET, kind)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        error = f"cannot resolve {name!r}: {reason}"
        return ProbeResult(source, target, "", port, protocol, False, error=error).to_dict()
    return probe(source, target, infos[0][4][0], port, protocol, timeout)
