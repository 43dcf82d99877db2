"""Every dashboard panel's PromQL against a real Prometheus (Debian's /usr/bin/prometheus, its
own data dir and port, started and ended by PID) scraping the exporter, which counts a known
set of flows (L3/L4, policy verdicts, DNS, HTTP, lost events; exporters/grafana's
prometheus-section.yaml, with port-distribution limited to 2 label sets so the fold shows).

The flows go in twice: once (every series is born), then three times more in one batch. Every
series so ends at 4x its first value, at the same scrape times, so Prometheus' rate
extrapolation scales them all alike: a panel's series keep exactly the proportions of the
counts, and ratios and quantiles come out exact. Gauges are compared as they are.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from exporters.exporter import ExportBatch
from exporters.prometheus import KIND
from flowscope.flow.model import LostEvent, LostEventSource, TrafficDirection, Verdict
from flowscope.proto import kafka_pb2
from tests.conftest import free_port
from tests.exporters.grafana.dashboards import DASHBOARDS, load, queries
from tests.exporters.prometheus import flows as f

ROOT = Path(__file__).resolve().parents[3]
SECTION = ROOT / "exporters" / "grafana" / "prometheus-section.yaml"
RULES = sorted((ROOT / "exporters" / "prometheus" / "rules").glob("*.yaml"))
REPEAT = 3  # the second batch: the first one this many times


def flows() -> list:
    """The first batch: 49 flows and 2 lost events (the counts below are of this batch)."""
    web_db = {"src": f.WEB, "dst": f.DB}
    out = []
    out += [f.tcp(**web_db, dport=5432) for _ in range(6)]
    out += [
        f.tcp(src=f.CLIENT, dst=f.WEB, dport=80, verdict=Verdict.DROPPED, drop_reason=133)
        for _ in range(2)
    ]
    out += [f.tcp(**web_db, verdict=Verdict.DROPPED, drop_reason=134)]
    out += [f.tcp(src=f.WEB, dst=f.WORLD, dport=443) for _ in range(3)]
    out += [f.icmp(8) for _ in range(2)]
    out += [f.policy_verdict(Verdict.DROPPED, match=0) for _ in range(2)]
    out += [f.policy_verdict(Verdict.FORWARDED, match=2) for _ in range(4)]
    out += [f.dns(reply=False) for _ in range(4)]
    out += [f.dns(reply=False, query="evil.example.", verdict=Verdict.DROPPED)]
    out += [f.dns(reply=True, ips=("10.0.2.7",), rrtypes=("A",)) for _ in range(3)]
    out += [f.dns(reply=True, query="nope.example.", rcode=3)]
    out += [f.http(response=False) for _ in range(10)]
    response = {"response": True, "src": f.DB, "dst": f.WEB, "direction": TrafficDirection.EGRESS}
    out += [f.http(**response, code=200, latency_s=0.02) for _ in range(9)]
    out += [f.http(**response, code=503, latency_s=0.4)]
    out += [
        LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 5, node_name="n1"),
        LostEvent(LostEventSource.PUBLISHER_SPOOL, 2, node_name="n2"),
    ]
    return out


def L(**labels: str) -> frozenset:
    """A series' labels as Prometheus has them: an empty label is no label."""
    return frozenset((k, v) for k, v in labels.items() if v)


WEB, CLIENT = "default/web-7d4b9c-x2k1p", "shop/client-66b8d-qwert"
# (panel title, refId) -> ("ratio" | "exact", {labels: value}) or ("between", (low, high))
EXPECTED: dict[tuple[str, str], tuple[str, object]] = {
    # flowscope / Flows
    ("Flows by verdict", "A"): ("ratio", {L(verdict="FORWARDED"): 43, L(verdict="DROPPED"): 6}),
    ("Flows by type", "A"): ("ratio", {
        L(type="Trace", subtype="to-endpoint"): 9, L(type="Trace", subtype="from-endpoint"): 2,
        L(type="Drop", subtype=""): 3, L(type="PolicyVerdict", subtype=""): 6,
        L(type="L7", subtype="DNS"): 9, L(type="L7", subtype="HTTP"): 20}),
    ("Dropped share of flows", "A"): ("exact", {L(): 6 / 49}),
    ("Flows by protocol", "A"): ("ratio", {
        L(protocol="TCP"): 18, L(protocol="ICMPv4"): 2, L(protocol="DNS"): 9,
        L(protocol="HTTP"): 20}),
    ("Drops by reason", "A"): ("ratio", {
        L(reason="POLICY_DENIED"): 4, L(reason="INVALID_PACKET_DROPPED"): 1,
        L(reason="DROP_REASON_UNKNOWN"): 1}),
    ("Drops by pod and reason (top 10)", "A"): ("ratio", {
        L(source=CLIENT, reason="POLICY_DENIED"): 4,
        L(source=WEB, reason="INVALID_PACKET_DROPPED"): 1,
        L(source=WEB, reason="DROP_REASON_UNKNOWN"): 1}),
    ("Top talkers: forwarded flows by source and destination", "A"): ("ratio", {
        L(source="default/web", destination="default/db"): 26,
        L(source="default/web", destination="reserved:world"): 3,
        L(source="shop/client", destination="default/web"): 4,
        L(source="default/db", destination="default/web"): 10}),
    # limited to 2 label sets: the first two ports seen; 80 and 53 folded into "other"
    ("Top destination ports", "A"): ("ratio", {
        L(protocol="TCP", port="5432"): 6, L(protocol="TCP", port="443"): 3,
        L(protocol="other", port="other"): 18}),
    ("TCP flags", "A"): ("ratio", {L(flag="SYN"): 13}),
    ("Flows to the world", "A"): ("ratio", {L(protocol="TCP", verdict="FORWARDED"): 3}),
    ("ICMP messages", "A"): ("ratio", {L(family="IPv4", type="EchoRequest"): 2}),
    # flowscope / Policy verdicts
    ("Policy verdicts by direction and action", "A"): ("ratio", {
        L(direction="ingress", action="dropped"): 2, L(direction="ingress", action="forwarded"): 4,
        L(direction="egress", action="forwarded"): 28, L(direction="egress", action="dropped"): 1}),
    ("Policy verdicts by match", "A"): ("ratio", {
        L(match="none", action="dropped"): 2, L(match="l3-l4", action="forwarded"): 4,
        L(match="l7/dns", action="forwarded"): 8, L(match="l7/dns", action="dropped"): 1,
        L(match="l7/http", action="forwarded"): 20}),
    ("Denied share of verdicts", "A"): ("exact", {L(): 3 / 35}),
    ("Policy denials by source pod (top 10)", "A"): ("ratio", {L(source=CLIENT): 4}),
    # flowscope / DNS and HTTP
    ("DNS queries by type", "A"): ("ratio", {L(qtypes="A"): 5}),
    ("DNS responses by rcode", "A"): ("ratio", {
        L(rcode="No Error"): 3, L(rcode="Non-Existent Domain"): 1}),
    ("DNS error share", "A"): ("exact", {L(): 0.25}),
    ("Top queried names", "A"): ("ratio", {
        L(query="db.default.svc.cluster.local."): 4, L(query="evil.example."): 1}),
    ("DNS answer record types", "A"): ("ratio", {L(type="A"): 3}),
    ("DNS queries denied by policy", "A"): ("ratio", {L(source=WEB): 1}),
    ("HTTP traffic: requests by destination", "A"): ("ratio", {L(destination="db"): 10}),
    ("HTTP errors: 5xx share by destination", "A"): ("exact", {L(destination="db"): 0.1}),
    # 10 responses: 9 in (0.01, 0.025], 1 in (0.25, 0.5]; Prometheus interpolates in a bucket
    ("HTTP latency by destination (p50, p95, p99)", "A"): (
        "exact", {L(destination="db"): 0.01 + 0.015 * 5 / 9}),
    ("HTTP latency by destination (p50, p95, p99)", "B"): ("exact", {L(destination="db"): 0.375}),
    ("HTTP latency by destination (p50, p95, p99)", "C"): ("exact", {L(destination="db"): 0.475}),
    ("HTTP requests by status", "A"): ("ratio", {L(status="200"): 9, L(status="503"): 1}),
    ("HTTP requests by method", "A"): ("ratio", {L(method="GET"): 10}),
    # flowscope / Pipeline health
    ("Records consumed by type", "A"): ("ratio", {L(type="flow"): 49, L(type="lost_events"): 2}),
    ("Lost events by source", "A"): ("ratio", {
        L(source="PERF_EVENT_RING_BUFFER"): 5, L(source="PUBLISHER_SPOOL"): 2}),
    ("Lost events in the time range by node", "A"): ("ratio", {L(node="n1"): 5, L(node="n2"): 2}),
    ("Metric increments folded by cardinality limits", "A"): (
        "ratio", {L(metric="hubble_port_distribution_total"): 18}),
    ("Consumer lag by topic", "A"): ("exact", {L(topic="flowscope.flows"): 120}),
    ("Spool depth by node", "A"): ("exact", {L(node="n1"): 50, L(node="n2"): 0}),
    ("Spool fill by node", "A"): ("exact", {L(node="n1"): 0.5, L(node="n2"): 0}),
    ("Agents running", "A"): ("exact", {L(): 1}),
    ("Seconds since each node's last status", "A"): ("between", (30, 120)),
}  # fmt: skip


def node_statuses(now: float) -> list:
    out = []
    for node, held, state in (("n1", 50, 2), ("n2", 0, 3)):
        s = kafka_pb2.NodeStatus(
            node_name=node,
            state=state,
            spool_held_records=held,
            spool_held_bytes=held * 100,
            spool_max_bytes=10_000,
        )
        s.time.FromSeconds(int(now) - 30)
        out.append(s)
    return out


async def api(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"

    def get() -> dict:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    return await asyncio.to_thread(get)  # the exporter serves /metrics on this loop meanwhile


async def ready(base: str) -> bool:
    def get() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:  # not listening yet, or 503 while it starts
            return False

    return await asyncio.to_thread(get)


async def instant(base: str, expr: str) -> dict[frozenset, float]:
    body = await api(base, "/api/v1/query", query=expr)
    assert body["status"] == "success", body
    return {frozenset(r["metric"].items()): float(r["value"][1]) for r in body["data"]["result"]}


async def wait_for(base: str, expr: str, want: float, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    got: dict = {}
    while time.monotonic() < deadline:
        got = await instant(base, expr)
        if list(got.values()) == [want]:
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"Prometheus never saw {expr} == {want} (last: {got})")


async def start_prometheus(tmp_path: Path, target: str) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `bash scripts/setup.sh`")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(r) for r in RULES],
        "scrape_configs": [
            {"job_name": "flowscope-export", "static_configs": [{"targets": [target]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")
        if await ready(base):
            return proc, base
        await asyncio.sleep(0.1)
    proc.kill()
    pytest.fail("prometheus did not become ready in 30 s")


def check(key: tuple[str, str], expr: str, got: dict[frozenset, float]) -> None:
    how, want = EXPECTED[key]
    where = f"{key[0]} [{key[1]}]: {expr}\n  got {got}"
    if how == "between":
        low, high = want  # type: ignore[misc]
        assert got and all(low <= v <= high for v in got.values()), where
        return
    assert set(got) == set(want), where  # type: ignore[arg-type]
    if how == "exact":
        for labels, value in want.items():  # type: ignore[union-attr]
            assert got[labels] == pytest.approx(value, rel=1e-9, abs=1e-12), where
    else:  # the same proportions as the counts
        total_got, total_want = sum(got.values()), sum(want.values())  # type: ignore[union-attr]
        for labels, value in want.items():  # type: ignore[union-attr]
            assert got[labels] / total_got == pytest.approx(value / total_want, rel=1e-9), where


async def test_every_panel_query_returns_the_expected_numbers(tmp_path):
    raw = yaml.safe_load(SECTION.read_text())
    raw["listen"] = "127.0.0.1:0"
    raw["metrics"][3]["cardinalityLimit"] = 2  # port-distribution: let the fold show
    exporter = KIND.build(KIND.parse(raw, "prometheus"))
    await exporter.start()
    proc = None
    try:
        proc, base = await start_prometheus(tmp_path, f"127.0.0.1:{exporter.server.port}")
        for status in node_statuses(time.time()):
            exporter.pipeline.node_status(status)
        lag = {("flowscope.flows", 0): 100, ("flowscope.flows", 1): 20}
        batch = flows()
        await exporter.export(ExportBatch(tuple(batch), lag))
        records = 'flowscope_export_records_total{type="flow"}'
        await wait_for(base, records, 49)
        await exporter.export(ExportBatch(tuple(batch * REPEAT), lag))
        await wait_for(base, records, 49 * (1 + REPEAT))

        seen = set()
        for path in DASHBOARDS:
            for title, ref, expr in queries(load(path)):
                q = expr.replace("$__rate_interval", "1m").replace("$__range", "1m")
                check((title, ref), expr, await instant(base, q))
                seen.add((title, ref))
        assert seen == set(EXPECTED), "a panel without expectations, or one that went away"

        rules = await api(base, "/api/v1/rules")
        loaded = [r["name"] for g in rules["data"]["groups"] for r in g["rules"]]
        assert len(loaded) == 16 and "FlowscopeEventsLost" in loaded
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await exporter.close()
