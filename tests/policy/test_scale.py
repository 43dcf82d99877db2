"""1,000 policies x 1,000 pods: a one-policy change recompiles only what it touches, and the
incremental result equals a fresh compile. Times are printed, not asserted: the benchmark
(`python -m bench policy_apply`) measures them against a baseline."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import bench.policy_apply as workload
from dataplane.policy.compiler import (
    Compiler,
    PodInfo,
    compile_policies,
    namespace_labels,
    on_node,
    pod_info,
    required_prefixes,
)
from tests.policy.truthtable import allocate, stored


def cluster() -> tuple[list[dict[str, Any]], list[PodInfo], dict[str, dict[str, str]]]:
    """The shape `python -m bench policy_apply` measures: 20 namespaces x 10 deployments x
    5 replicas, 1,000 policies of five kinds."""
    nss = namespace_labels(workload.namespaces())
    pods = [replace(pod_info(obj), ip=workload.pod_ip(i)) for i, obj in enumerate(workload.pods())]
    pols = stored(workload.policy(i) for i in range(workload.POLICIES))
    return pols, pods, nss


def test_thousand_policies_thousand_pods() -> None:
    pols, pods, nss = cluster()
    ids, cidrs = allocate(pods, nss, required_prefixes(pols))
    compiler = Compiler()
    t0 = time.perf_counter()
    first = compiler.compile(pols, pods, nss, ids, cidrs)
    full = time.perf_counter() - t0
    assert len(first.endpoints) == 1000 and len(first.cookies) >= 1000

    # one ingress policy of ns5/app0 becomes a default deny
    pols[5] = {**pols[5], "spec": {**pols[5]["spec"], "ingress": []}}
    t0 = time.perf_counter()
    second = compiler.compile(pols, pods, nss, ids, cidrs)
    again = time.perf_counter() - t0
    changed = {k for k in second.endpoints if second.endpoints[k] is not first.endpoints[k]}
    assert changed == {("ns5", f"app0-{r}") for r in range(5)}
    assert second.endpoints == compile_policies(pols, pods, nss, ids, cidrs).endpoints

    t0 = time.perf_counter()
    node = Compiler().compile(pols, pods, nss, ids, cidrs, local=on_node("node-1"))
    one_node = time.perf_counter() - t0
    assert set(node.endpoints) == {p.key for p in pods if p.node == "node-1"}

    print(
        f"\n1,000 policies x 1,000 pods: full {full:.3f}s, after one change {again:.3f}s, "
        f"one node from scratch {one_node:.3f}s"
    )
