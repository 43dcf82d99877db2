"""The prometheus section: both of Hubble's option forms, and errors that name the field."""

from __future__ import annotations

import pytest

from exporters.exporter import ConfigError
from exporters.prometheus import KIND
from exporters.prometheus.config import DEFAULT_METRICS


def test_defaults_are_hubbles_metrics_on_9965():
    config = KIND.parse({}, "prometheus")
    assert config.listen == ":9965" and config.host_port() == ("", 9965)
    assert tuple(m.name for m in config.metrics) == DEFAULT_METRICS
    assert config.pipeline is True


def test_string_and_table_forms_agree():
    a = KIND.parse({"metrics": ["flow:sourceContext=pod|namespace;labelsContext=source_ip"]}, "p")
    b = KIND.parse(
        {
            "metrics": [
                {
                    "name": "flow",
                    "contextOptions": {
                        "sourceContext": ["pod", "namespace"],
                        "labelsContext": "source_ip",
                    },
                }
            ]
        },
        "p",
    )
    assert a == b
    assert a.metrics[0].context.source == ("pod", "namespace")
    assert a.metrics[0].context.label_names() == ("source_ip", "source")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"listn": ":9965"}, "prometheus.listn"),
        ({"listen": "9965"}, "prometheus.listen"),
        ({"cardinalityLimit": -1}, "prometheus.cardinalityLimit"),
        ({"metrics": ["flwo"]}, "prometheus.metrics[0]"),
        ({"metrics": ["flow", "flow:sourceContext=pod"]}, "prometheus.metrics[1]"),
        ({"metrics": ["drop:sourceContext=podd"]}, "prometheus.metrics[0].sourceContext"),
        ({"metrics": ["dns:qurey"]}, "prometheus.metrics[0].qurey"),
        (
            {"metrics": [{"name": "drop", "contextOptions": {"labelsContext": "source_pods"}}]},
            "prometheus.metrics[0].contextOptions.labelsContext",
        ),
        ({"metrics": [{"name": "drop", "cardinality": 3}]}, "prometheus.metrics[0].cardinality"),
        (
            {"metrics": [{"name": "drop", "includeFilters": [{"source_podd": ["x"]}]}]},
            "prometheus.metrics[0].includeFilters[0]",
        ),
        (
            {"metrics": [{"name": "drop", "excludeFilters": ["--verdict MAYBE"]}]},
            "prometheus.metrics[0].excludeFilters[0]",
        ),
        ({"metrics": [{"name": "http", "cardinalityLimit": "many"}]},
         "prometheus.metrics[0].cardinalityLimit"),
    ],
)  # fmt: skip
def test_bad_values_name_their_field(raw, field):
    with pytest.raises(ConfigError) as e:
        KIND.parse(raw, "prometheus")
    assert e.value.field == field
    assert str(e.value).startswith(field + ":")


def test_reconfigure_in_place_only_when_unchanged():
    import asyncio

    config = KIND.parse({"listen": "127.0.0.1:0"}, "prometheus")
    exp = KIND.build(config)
    assert asyncio.run(exp.reconfigure(KIND.parse({"listen": "127.0.0.1:0"}, "prometheus")))
    other = KIND.parse({"listen": "127.0.0.1:0", "metrics": ["drop"]}, "prometheus")
    assert not asyncio.run(exp.reconfigure(other))
