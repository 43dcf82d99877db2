"""Background traffic for a lab: every running pod calls, in turn, the services and the other
pods' containerPorts it can see, and one outside name, so that `observe --follow` and
`flowscope tui` always have live flows (allowed and dropped, with DNS lookups) to show.

`flowscope lab traffic` runs it in the foreground; `--detach` runs it as one of the lab's
daemons, which `lab down` ends. Pure planning (`plan`), then a loop of probes made in forked
children that enter the source pod, as `lab probe` does.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

OUTSIDE_TARGET = ("api.example.com", 80, "TCP")  # the lab's outside world, by name
SYSTEM_NAMESPACES = frozenset({"kube-system"})


@dataclass(frozen=True)
class Call:
    source: str  # NS/POD
    target: str  # a name the pod resolves, or an IP
    port: int
    protocol: str  # TCP | UDP

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}:{self.port}/{self.protocol}"


def _running(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [
        p
        for p in pods
        if (p.get("status") or {}).get("phase") == "Running"
        and (p.get("status") or {}).get("podIP")
        and (p.get("metadata") or {}).get("namespace") not in SYSTEM_NAMESPACES
    ]


def plan(pods: Iterable[Mapping[str, Any]], services: Iterable[Mapping[str, Any]]) -> list[Call]:
    """Every call the lab's traffic makes, in a stable order: each running pod to each
    service port (by name, through the cluster DNS), to each other pod's containerPorts (by
    IP), and to the outside world."""
    running = _running(pods)
    targets: list[tuple[str, int, str]] = []
    for svc in services:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        if meta.get("namespace") in SYSTEM_NAMESPACES or spec.get("clusterIP") in (None, "None"):
            continue
        for port in spec.get("ports") or ():
            name = f"{meta['name']}.{meta.get('namespace', 'default')}"
            targets.append((name, int(port["port"]), port.get("protocol", "TCP")))
    calls = []
    for src in running:
        src_meta = src["metadata"]
        source = f"{src_meta['namespace']}/{src_meta['name']}"
        for dst in running:
            if dst is src:
                continue
            for container in (dst.get("spec") or {}).get("containers") or ():
                for port in container.get("ports") or ():
                    calls.append(
                        Call(
                            source,
                            dst["status"]["podIP"],
                            int(port["containerPort"]),
                            port.get("protocol", "TCP"),
                        )
                    )
        calls += [Call(source, *t) for t in targets]
        calls.append(Call(source, *OUTSIDE_TARGET))
    return calls


async def _snapshot(info) -> tuple[list[Call], dict[str, dict]]:
    from flowscope.connect import cluster_store

    async with cluster_store(info) as store:
        pods = await store.list("Pod", None)
        services = await store.list("Service", None)
    by_ref = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in pods}
    return plan(pods, services), by_ref


def run(info, every: float, duration: float | None, timeout: float = 0.5, say=print) -> int:
    """Make calls until `duration` passes (None: until stopped); the plan is read again every
    few seconds, so pods and services that come and go are followed. Returns the calls made."""
    from dataplane.lab.cluster import pod_sandbox
    from dataplane.lab.podexec import collect, fork_in_pod
    from dataplane.lab.probe import probe, probe_name

    started = time.monotonic()
    made = 0
    calls: list[Call] = []
    pods: dict[str, dict] = {}
    refreshed = 0.0
    cycle = iter(())
    while duration is None or time.monotonic() - started < duration:
        if time.monotonic() - refreshed > 5 or not calls:
            calls, pods = asyncio.run(_snapshot(info))
            random.shuffle(calls)  # interleave sources and targets
            cycle = itertools.cycle(calls) if calls else iter(())
            refreshed = time.monotonic()
        call = next(cycle, None)
        if call is None:
            time.sleep(every)
            continue
        pod = pods.get(call.source)
        try:
            sandbox = pod_sandbox(info, pod) if pod else None
        except Exception:  # the pod is going away: the next refresh drops it
            sandbox = None
        if sandbox is not None:
            # probe and probe_name take the same arguments: (source, target, ip or name, ...)
            fn = probe if call.target[0].isdigit() else probe_name
            args = (call.source, call.target, call.target, call.port, call.protocol, timeout)
            pid, fd = fork_in_pod(sandbox, lambda f=fn, a=args: f(*a))
            result = collect(pid, fd)
            made += 1
            say(f"{call}: {'answered' if result.get('connected') else result.get('error')}")
        time.sleep(every)
    return made
