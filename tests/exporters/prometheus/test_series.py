"""The cardinality limit: label sets beyond N fold into one "other" series, counted by
flowscope_metrics_folded_total{metric}; series seen before the limit keep counting exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from exporters.exporter import ExportBatch
from exporters.prometheus import KIND
from exporters.prometheus.series import OTHER, MetricSet
from tests.exporters.prometheus import flows as f


def test_counter_folds_beyond_limit_and_counts_what_it_folded():
    metrics = MetricSet()
    c = metrics.counter("x_total", "x", ("a", "b"), limit=2)
    c.inc(("1", "1"))
    c.inc(("2", "2"), 3)
    c.inc(("3", "3"), 5)  # third label set: folded
    c.inc(("4", "4"))  # folded too
    c.inc(("1", "1"))  # known: still exact
    assert c.values == {("1", "1"): 2, ("2", "2"): 3, (OTHER, OTHER): 6}
    assert metrics.folds.counts == {"x_total": 6}


def test_histogram_folds_observations():
    metrics = MetricSet()
    h = metrics.histogram("d_seconds", "d", ("m",), limit=1)
    h.observe(("GET",), 0.1)
    h.observe(("POST",), 0.2)
    h.observe(("PUT",), 0.3)
    assert set(h.values) == {("GET",), (OTHER,)}
    assert sum(h.values[(OTHER,)][0]) == 2
    assert metrics.folds.counts == {"d_seconds": 2}


@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(1, 5)), max_size=200),
    st.integers(0, 10),
)
def test_total_is_kept_and_series_bounded(incs, limit):
    metrics = MetricSet()
    c = metrics.counter("y_total", "y", ("k",), limit=limit)
    for key, amount in incs:
        c.inc((str(key),), amount)
    assert sum(c.values.values()) == sum(a for _, a in incs)
    if limit:
        assert len(c.values) <= limit + 1
    distinct = len({k for k, _ in incs})
    folded = metrics.folds.counts.get("y_total", 0)
    assert (folded > 0) == bool(limit and distinct > limit)


def test_high_cardinality_flood_is_bounded_per_metric():
    exp = KIND.build(
        KIND.parse(
            {
                "listen": "127.0.0.1:0",
                "cardinalityLimit": 50,
                "metrics": ["port-distribution:sourceContext=ip;destinationContext=ip"],
            },
            "prometheus",
        )
    )
    flood = tuple(
        f.tcp(sip=f"10.1.{i // 250}.{i % 250}", dport=1000 + i % 700) for i in range(2000)
    )
    exp.count(ExportBatch(flood))
    family = exp.metrics.families[0]
    assert len(family.values) == 51
    assert family.values[(OTHER,) * 4] == 2000 - 50
    assert exp.metrics.folds.counts == {"hubble_port_distribution_total": 1950}
