"""Metric families whose number of label sets is bounded.

A family keeps its series in a dict (label values -> count), which is what the handlers touch per
flow; prometheus_client only sees them at scrape time (`MetricSet.collect`). A family with a
cardinality limit N keeps at most N label sets of its own: a flow that would make a new one
beyond that is counted in one series whose every label is "other", and
flowscope_metrics_folded_total{metric} counts the increments (observations, for a histogram)
that were folded so. Label sets seen before the limit was reached keep being counted exactly.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

OTHER = "other"
# prometheus_client's (and Hubble's) default histogram buckets
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FOLDED = "flowscope_metrics_folded_total"

Labels = tuple[str, ...]


class Folds:
    """What each family folded into "other" (flowscope_metrics_folded_total{metric})."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}

    def add(self, metric: str, amount: float) -> None:
        self.counts[metric] = self.counts.get(metric, 0.0) + amount

    def collect(self) -> Metric:
        family = CounterMetricFamily(
            FOLDED.removesuffix("_total"),
            "Increments folded into the 'other' series by a metric's cardinality limit",
            labels=["metric"],
        )
        for metric, count in sorted(self.counts.items()):
            family.add_metric([metric], count)
        return family


class _Family:
    def __init__(self, name: str, help: str, label_names: Labels, limit: int, folds: Folds) -> None:
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"{name}: a label named twice in {label_names}")
        self.name = name
        self.help = help
        self.label_names = label_names
        self.limit = limit  # 0: no limit
        self.folds = folds
        self._other: Labels = (OTHER,) * len(label_names)

    def _key(self, values: Labels, known: dict, amount: float) -> Labels:
        if values in known or not self.limit or len(known) - (self._other in known) < self.limit:
            return values
        self.folds.add(self.name, amount)
        return self._other


class CounterFamily(_Family):
    def __init__(
        self, name: str, help: str, label_names: Labels, limit: int = 0, folds: Folds | None = None
    ) -> None:
        super().__init__(name, help, label_names, limit, folds or Folds())
        self.values: dict[Labels, float] = {}

    def inc(self, values: Labels, amount: float = 1.0) -> None:
        v = self.values
        if values in v:  # the common case, checked first
            v[values] += amount
            return
        key = self._key(values, v, amount)
        v[key] = v.get(key, 0.0) + amount

    def collect(self) -> Metric:
        family = CounterMetricFamily(
            self.name.removesuffix("_total"), self.help, labels=list(self.label_names)
        )
        for values, count in self.values.items():
            family.add_metric(list(values), count)
        return family


class HistogramFamily(_Family):
    def __init__(
        self,
        name: str,
        help: str,
        label_names: Labels,
        limit: int = 0,
        folds: Folds | None = None,
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help, label_names, limit, folds or Folds())
        self.buckets = buckets
        # label values -> [count per bucket (+Inf last, not cumulative), sum]
        self.values: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, values: Labels, value: float) -> None:
        entry = self.values.get(values)
        if entry is None:
            key = self._key(values, self.values, 1)
            entry = self.values.get(key)
            if entry is None:
                entry = self.values[key] = ([0] * (len(self.buckets) + 1), [0.0])
        entry[0][bisect.bisect_left(self.buckets, value)] += 1
        entry[1][0] += value

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.help, labels=list(self.label_names))
        bounds = [*(_le(b) for b in self.buckets), "+Inf"]
        for values, (counts, total) in self.values.items():
            cumulative, running = [], 0
            for bound, n in zip(bounds, counts, strict=True):
                running += n
                cumulative.append((bound, running))
            family.add_metric(list(values), cumulative, total[0])
        return family


class GaugeFamily:
    """A gauge set from outside (lag, spool depth): no limit, its label sets are few."""

    def __init__(self, name: str, help: str, label_names: Labels) -> None:
        self.name = name
        self.help = help
        self.label_names = label_names
        self.values: dict[Labels, float] = {}

    def set(self, values: Labels, value: float) -> None:
        self.values[values] = value

    def collect(self) -> Metric:
        family = GaugeMetricFamily(self.name, self.help, labels=list(self.label_names))
        for values, value in self.values.items():
            family.add_metric(list(values), value)
        return family


def _le(bound: float) -> str:
    return repr(float(bound))


Family = CounterFamily | HistogramFamily | GaugeFamily


class MetricSet(Collector):
    """The families one exporter serves, as a prometheus_client collector."""

    def __init__(self) -> None:
        self.folds = Folds()
        self.families: list[Family] = []

    def add(self, family: Family) -> Family:
        if any(f.name == family.name for f in self.families):
            raise ValueError(f"metric {family.name} defined twice")
        self.families.append(family)
        return family

    def counter(self, name: str, help: str, label_names: Labels, limit: int = 0) -> CounterFamily:
        family = CounterFamily(name, help, label_names, limit, self.folds)
        self.add(family)
        return family

    def histogram(
        self, name: str, help: str, label_names: Labels, limit: int = 0
    ) -> HistogramFamily:
        family = HistogramFamily(name, help, label_names, limit, self.folds)
        self.add(family)
        return family

    def gauge(self, name: str, help: str, label_names: Labels) -> GaugeFamily:
        family = GaugeFamily(name, help, label_names)
        self.add(family)
        return family

    def series_count(self) -> int:
        return sum(len(f.values) for f in self.families) + len(self.folds.counts)

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()
        yield self.folds.collect()
