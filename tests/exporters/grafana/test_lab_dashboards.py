"""The dashboards over a real lab's traffic: a 2-node lab with Kafka, a client probing a server
(allowed on port 80, denied by a NetworkPolicy on 81), the flows read from the lab's broker by
the export runner (prometheus section of exporters/grafana/prometheus-section.yaml), scraped by
a real Prometheus. Every panel's query is run; the panels whose numbers follow from the records
alone are compared with counts made from the same topic read independently (`observe --kafka
--all -o json`).

Live counters do not all grow alike, so the panels are evaluated over totals: the query with
rate(...[$__rate_interval]) and increase(...[$__range]) read as the counter itself (grouping,
filters, topk and ratios stay the panel's own). Rates themselves are checked exactly by
test_panel_queries.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from dataplane.lab import kafka
from exporters.runner import Runner
from flowscope import clusterinfo
from tests.conftest import free_port, unique
from tests.e2e.lab import Lab, kafka_lab
from tests.exporters.grafana.dashboards import DASHBOARDS, load, queries
from tests.exporters.grafana.test_panel_queries import instant, start_prometheus, wait_for

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

NS = "fsgr"
SECTION = Path(__file__).resolve().parents[3] / "exporters" / "grafana" / "prometheus-section.yaml"


@pytest.fixture(scope="module")
def lab():
    with kafka_lab(unique("fsgr"), NS) as lab:
        yield lab


def totals(expr: str) -> str:
    """The panel's query over counter totals instead of their rates."""
    expr = re.sub(r"\[\$__(rate_interval|range)\]", "", expr)
    return expr.replace("rate(", "(").replace("increase(", "(")


def topic_records(lab: Lab, bootstrap: str) -> list[dict]:
    out = lab.run("observe", "--kafka", bootstrap, "-o", "json", "--all").stdout
    return [json.loads(line) for line in out.splitlines()]


def L(**labels: str) -> frozenset:
    return frozenset((k, v) for k, v in labels.items() if v)


def pod_context(ep: dict) -> str:
    """Hubble's "pod|reserved-identity" source context of an endpoint's JSON."""
    pod, ns = ep.get("pod_name", ""), ep.get("namespace", "")
    if pod:
        return f"{ns}/{pod}" if ns else pod
    labels = ep.get("labels", [])
    if "reserved:kube-apiserver" in labels:
        return "reserved:kube-apiserver"
    return next((lb for lb in labels if lb.startswith("reserved:")), "")


def expected(records: list[dict]) -> dict[str, dict[frozenset, float]]:
    """What the record-derived panels must show, counted here from the JSON."""
    flows = [r["flow"] for r in records if "flow" in r]
    lost = [r["lost_events"] for r in records if "lost_events" in r]
    verdicts = Counter(f.get("verdict", "VERDICT_UNKNOWN") for f in flows)
    protocols = Counter(next(iter(f["l4"])) if f.get("l4") else "Unknown flow" for f in flows)
    drops = [f for f in flows if f.get("verdict") == "DROPPED"]
    reasons = Counter(f.get("drop_reason_desc", "DROP_REASON_UNKNOWN") for f in drops)
    by_pod = Counter(
        (pod_context(f.get("source", {})), f.get("drop_reason_desc", "DROP_REASON_UNKNOWN"))
        for f in drops
    )
    ports: Counter = Counter()
    for f in flows:
        if (
            f.get("verdict") in ("FORWARDED", "REDIRECTED")
            and f.get("l4")
            and (f.get("is_reply") is False)
        ):
            ((proto, l4),) = f["l4"].items()
            port = str(l4.get("destination_port", 0)) if proto in ("TCP", "UDP", "SCTP") else "0"
            ports[(proto, port)] += 1
    return {
        "Flows by verdict": {L(verdict=v): n for v, n in verdicts.items()},
        "Flows by protocol": {L(protocol=p): n for p, n in protocols.items()},
        "Dropped share of flows": {L(): verdicts["DROPPED"] / len(flows)},
        "Drops by reason": {L(reason=r): n for r, n in reasons.items()},
        "Drops by pod and reason (top 10)": {
            L(source=s, reason=r): n for (s, r), n in by_pod.most_common(10)
        },
        "Top destination ports": {
            L(protocol=p, port=port): n for (p, port), n in ports.most_common(10)
        },
        "Records consumed by type": {
            k: v for k, v in {L(type="flow"): len(flows), L(type="lost_events"): len(lost)}.items()
            if v
        },
    }  # fmt: skip


async def test_panels_answer_the_labs_traffic(lab: Lab, tmp_path: Path):
    pods = {p["metadata"]["name"]: p for p in lab.pods(NS)}
    server = pods["server"]["status"]["podIP"]
    for _ in range(3):
        assert (await asyncio.to_thread(lab.probe, f"{NS}/client", f"{server}:80"))["connected"]
    for _ in range(2):
        denied = await asyncio.to_thread(lab.probe, f"{NS}/client", f"{server}:81", "TCP", 1.0)
        assert not denied["connected"]

    info = kafka.of(clusterinfo.load(lab.name))
    assert info is not None
    raw = yaml.safe_load(SECTION.read_text())
    port = free_port()
    raw.update(listen=f"127.0.0.1:{port}", group=unique("fsgrp"))
    path = tmp_path / "export.yaml"
    path.write_text(yaml.safe_dump({"source": {"kafka": {"bootstrap": info.bootstrap}},
                                    "prometheus": raw}))  # fmt: skip
    runner = Runner(path, reload_poll=1.0)
    await runner.start()
    task = asyncio.create_task(runner.run())
    proc = None
    try:
        proc, base = await start_prometheus(tmp_path, f"127.0.0.1:{port}")
        # a snapshot the exporter and the topic agree on (the lab may still be talking)
        records: list[dict] = []
        for _ in range(10):
            records = await asyncio.to_thread(topic_records, lab, info.bootstrap)
            n = sum(1 for r in records if "flow" in r)
            await wait_for(base, 'flowscope_export_records_total{type="flow"}', n, timeout=30)
            again = await asyncio.to_thread(topic_records, lab, info.bootstrap)
            if again == records:
                break
        want = expected(records)
        denied_drops = L(source=f"{NS}/client", reason="POLICY_DENIED")
        assert want["Drops by pod and reason (top 10)"].get(denied_drops, 0) >= 2, want

        checked = set()
        for dashboard in DASHBOARDS:
            for title, _ref, expr in queries(load(dashboard)):
                got = await instant(base, totals(expr))  # fails on a query Prometheus refuses
                if title in want:
                    assert set(got) == set(want[title]), (title, got, want[title])
                    for labels, value in want[title].items():
                        assert got[labels] == pytest.approx(value), (title, labels, got)
                    checked.add(title)
        assert checked == set(want)
    finally:
        if proc is not None:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)
        runner.stop()
        await asyncio.wait_for(task, 30)
