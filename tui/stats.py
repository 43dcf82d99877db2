"""The aggregate views' state, folded from the records as they arrive (pure: no UI here).

- verdict rates: flows per second per verdict over the last RATE_WINDOW seconds (sparklines);
- drops: counts by reason and by pod, and their rate over the last DROP_WINDOW seconds;
- top talkers: flows per (source, destination) pair;
- service map: flows between workloads (namespace/workload, or a reserved identity such as
  world) per verdict.
Time is the flows' own (the newest seen is "now"), so a replayed history folds the same way.
Counters are bounded: past MAX_KEYS keys the smallest half is forgotten.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

from flowscope.flow.compact import RESERVED_IDENTITY_NAMES
from flowscope.flow.model import Endpoint, Flow, LostEvent, Record, TrafficDirection
from tui import columns

RATE_WINDOW = 60  # seconds of sparkline
DROP_WINDOW = 10  # seconds over which a drop rate is measured
MAX_KEYS = 10_000
SPARK_VERDICTS = ("FORWARDED", "DROPPED", "AUDIT", "TRANSLATED", "ERROR")


def workload_of(ip: str, ep: Endpoint | None) -> str:
    """A service map node: ns/workload (its controller), else ns/pod, a reserved identity, or
    the IP."""
    if ep is not None and ep.workloads and ep.workloads[0].name:
        return f"{ep.namespace}/{ep.workloads[0].name}" if ep.namespace else ep.workloads[0].name
    if ep is not None and ep.pod_name:
        return f"{ep.namespace}/{ep.pod_name}" if ep.namespace else ep.pod_name
    if ep is not None and ep.identity in RESERVED_IDENTITY_NAMES and ep.identity:
        return RESERVED_IDENTITY_NAMES[ep.identity]
    return ip or "?"


def _trim(counter: Counter) -> None:
    if len(counter) > MAX_KEYS:
        for key, _ in counter.most_common()[MAX_KEYS // 2 :]:
            del counter[key]


@dataclass(frozen=True)
class Count:
    key: str
    total: int
    rate: float  # per second over the last DROP_WINDOW seconds


class Windowed:
    """Counts per key in total and per second over the last `window` seconds."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.total: Counter[str] = Counter()
        self._seconds: deque[tuple[int, Counter[str]]] = deque()

    def add(self, key: str, second: int) -> None:
        self.total[key] += 1
        if not self._seconds or self._seconds[-1][0] < second:
            self._seconds.append((second, Counter()))
        # a late flow (from another node, a bit behind) counts in the newest second
        self._seconds[-1][1][key] += 1
        while self._seconds and self._seconds[0][0] <= second - self.window:
            self._seconds.popleft()
        _trim(self.total)

    def top(self, n: int, now: int) -> list[Count]:
        recent: Counter[str] = Counter()
        for second, counts in self._seconds:
            if second > now - self.window:
                recent.update(counts)
        return [Count(k, v, recent[k] / self.window) for k, v in self.total.most_common(n)]


class VerdictRates:
    """Flows per second per verdict, the last `window` seconds, oldest first."""

    def __init__(self, window: int = RATE_WINDOW) -> None:
        self.window = window
        self.now = 0
        self._counts: dict[str, dict[int, int]] = {}

    def add(self, verdict: str, second: int) -> None:
        per = self._counts.setdefault(verdict, {})
        per[second] = per.get(second, 0) + 1
        if second > self.now:
            self.now = second
            for counts in self._counts.values():
                for old in [s for s in counts if s <= second - self.window]:
                    del counts[old]

    def series(self, verdict: str) -> list[int]:
        per = self._counts.get(verdict, {})
        start = self.now - self.window + 1
        return [per.get(s, 0) for s in range(start, self.now + 1)]

    def current(self, verdict: str) -> int:
        """The last complete second's count (the newest one is still filling)."""
        return self._counts.get(verdict, {}).get(self.now - 1, 0)


@dataclass(frozen=True)
class Edge:
    source: str
    destination: str
    verdicts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.verdicts.values())

    @property
    def colour_verdict(self) -> str:
        """What the edge is drawn as: DROPPED if any flow on it was dropped, else the most
        common verdict."""
        if self.verdicts.get("DROPPED"):
            return "DROPPED"
        return max(self.verdicts.items(), key=lambda kv: kv[1])[0]


class FlowStats:
    def __init__(self) -> None:
        self.flows = 0
        self.lost = 0
        self.now = 0  # the newest flow's second
        self.rates = VerdictRates()
        self.drop_reasons = Windowed(DROP_WINDOW)
        self.drop_pods = Windowed(DROP_WINDOW)
        self.talkers: Counter[tuple[str, str]] = Counter()
        self.edges: dict[tuple[str, str], Counter[str]] = {}

    def add(self, records: Iterable[Record]) -> None:
        for record in records:
            if isinstance(record, LostEvent):
                self.lost += record.num_events_lost
                continue
            self._add_flow(record)

    def _add_flow(self, flow: Flow) -> None:
        self.flows += 1
        second = flow.time_ns // 1_000_000_000
        self.now = max(self.now, second)
        verdict = columns.verdict(flow)
        self.rates.add(verdict, second)
        src, dst = columns.source(flow), columns.destination(flow)
        if verdict in ("DROPPED", "DENIED"):
            self.drop_reasons.add(columns.drop_reason(flow) or "unknown", second)
            # the endpoint whose policy or datapath dropped it: the receiver on ingress
            ingress = flow.traffic_direction == TrafficDirection.INGRESS
            self.drop_pods.add(dst if ingress else src, second)
        self.talkers[(src, dst)] += 1
        _trim(self.talkers)
        ip_src = flow.ip.source if flow.ip else ""
        ip_dst = flow.ip.destination if flow.ip else ""
        key = (workload_of(ip_src, flow.source), workload_of(ip_dst, flow.destination))
        if flow.is_reply:
            key = (key[1], key[0])  # the map shows who connects to whom
        self.edges.setdefault(key, Counter())[verdict] += 1
        if len(self.edges) > MAX_KEYS:
            smallest = sorted(self.edges, key=lambda k: sum(self.edges[k].values()))
            for k in smallest[: MAX_KEYS // 2]:
                del self.edges[k]

    def top_talkers(self, n: int = 20) -> list[tuple[str, str, int]]:
        return [(s, d, c) for (s, d), c in self.talkers.most_common(n)]

    def service_edges(self, n: int = 40) -> list[Edge]:
        busiest = sorted(self.edges.items(), key=lambda kv: -sum(kv[1].values()))[:n]
        return [Edge(s, d, dict(c)) for (s, d), c in busiest]
