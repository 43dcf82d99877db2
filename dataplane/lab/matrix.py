"""The reachability matrix: every ordered pod pair probed at once, printed as the Kubernetes e2e
NetworkPolicy suite prints its truth tables ('.' connected, 'X' blocked; rows from, columns to).

Pure parts first (which pods, which pairs, in which batches; the table and JSON lines), then the
runner. The runner forks one child per source pod (podexec.run_in_pods), and that child probes
all of its targets at once from inside the pod with dataplane.lab.probe, so a blocked probe costs
one timeout for the whole row rather than one per pair. Concurrency is bounded twice: source
pods per batch and probes per source, so that a few hundred pods still fit in the process table.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from flowscope.paths import ClusterPaths

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
DEFAULT_TIMEOUT = 1.0  # seconds before a probe counts as blocked
MAX_SOURCES_AT_ONCE = 32  # forked children at a time
MAX_PROBES_PER_SOURCE = 64  # probes one child runs at a time

T = TypeVar("T")


@dataclass(frozen=True, order=True)
class MatrixPod:
    namespace: str
    name: str
    ip: str
    node: str
    uid: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PairResult:
    source: str  # NS/POD
    target: str  # NS/POD
    port: int
    protocol: str
    connected: bool

    def to_json(self) -> str:
        return json.dumps(
            {
                "from": self.source,
                "to": self.target,
                "port": self.port,
                "protocol": self.protocol,
                "connected": self.connected,
            }
        )


def select_pods(pods: Iterable[dict], namespaces: Sequence[str] | None) -> list[MatrixPod]:
    """The Running pods with an IP in `namespaces` (None: every non-system namespace), sorted."""
    wanted = set(namespaces) if namespaces is not None else None
    selected = []
    for pod in pods:
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        ns = meta.get("namespace", "default")
        if wanted is not None and ns not in wanted:
            continue
        if wanted is None and ns in SYSTEM_NAMESPACES:
            continue
        node = pod.get("spec", {}).get("nodeName")
        if status.get("phase") != "Running" or not status.get("podIP") or not node:
            continue
        selected.append(MatrixPod(ns, meta["name"], status["podIP"], node, meta.get("uid", "")))
    return sorted(selected)


def plan_rows(pods: Sequence[MatrixPod]) -> list[tuple[MatrixPod, list[MatrixPod]]]:
    """Each source pod with its targets: every pod, itself included (the e2e suite probes the
    diagonal too), in table order."""
    return [(source, list(pods)) for source in pods]


def batches(items: Sequence[T], size: int) -> list[list[T]]:
    if size < 1:
        raise ValueError(f"batch size {size} must be at least 1")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def render_table(
    froms: Sequence[str], tos: Sequence[str], connected: Mapping[tuple[str, str], bool]
) -> str:
    """The e2e suite's TruthTable.PrettyPrint: tab-separated, '-' in the corner, '.' connected,
    'X' blocked, '?' not probed."""
    lines = ["\t".join(["-", *tos])]
    for source in froms:
        marks = []
        for target in tos:
            value = connected.get((source, target))
            marks.append("?" if value is None else "." if value else "X")
        lines.append("\t".join([source, *marks]))
    return "\n".join(lines)


def table_of(pods: Sequence[MatrixPod], results: Iterable[PairResult]) -> str:
    keys = [p.key for p in pods]
    return render_table(keys, keys, {(r.source, r.target): r.connected for r in results})


def probe_row(
    source: str, targets: Sequence[tuple[str, str]], port: int, protocol: str, timeout: float
) -> list[bool]:
    """Inside the source pod (a forked child): probe every (key, ip) target at once."""
    from dataplane.lab.probe import probe

    def one(target: tuple[str, str]) -> bool:
        key, ip = target
        return bool(probe(source, key, ip, port, protocol, timeout)["connected"])

    # threads made after the child joined the pod's namespace are in it too
    with ThreadPoolExecutor(max_workers=max(1, min(len(targets), MAX_PROBES_PER_SOURCE))) as pool:
        return list(pool.map(one, targets))


def probe_matrix(
    paths: ClusterPaths,
    pods: Sequence[MatrixPod],
    port: int,
    protocol: str,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[PairResult]:
    """Probe every ordered pair of `pods`; results in table order. Raises RuntimeError naming
    the source pod when a probing child could not run there (e.g. its pod went away)."""
    from dataplane.lab.podexec import run_in_pods
    from dataplane.lab.sandbox import Sandbox

    results: list[PairResult] = []
    for batch in batches(plan_rows(pods), MAX_SOURCES_AT_ONCE):
        jobs = []
        for source, targets in batch:
            fn = functools.partial(
                probe_row, source.key, [(t.key, t.ip) for t in targets], port, protocol, timeout
            )
            jobs.append((Sandbox.for_pod(paths, source.node, source.uid), fn))
        for (source, targets), row in zip(batch, run_in_pods(jobs), strict=True):
            if isinstance(row, Exception):
                raise RuntimeError(f"probing from {source.key} failed: {row}")
            results.extend(
                PairResult(source.key, t.key, port, protocol, ok)
                for t, ok in zip(targets, row, strict=True)
            )
    return results
