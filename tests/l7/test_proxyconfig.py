"""The proxy's config section: tunables, redaction, and errors naming the field."""

from __future__ import annotations

import pytest

from dataplane.l7.httpproxy import ProxyConfig
from dataplane.l7.redact import REDACTED, QueryRedaction
from flowscope.errors import UsageError
from flowscope.flow.model import TrafficDirection


def test_defaults_and_values() -> None:
    assert ProxyConfig.from_dict(None) == ProxyConfig()
    cfg = ProxyConfig.from_dict(
        {
            "max_connections": 10,
            "header_timeout": 2.5,
            "idle_timeout": 30,
            "redact": {"headers": ["X-Api-Key"], "query": "remove"},
        },
        node_name="node-1",
        direction=TrafficDirection.EGRESS,
    )
    assert (cfg.max_connections, cfg.header_timeout, cfg.idle_timeout) == (10, 2.5, 30.0)
    assert cfg.node_name == "node-1" and cfg.direction == TrafficDirection.EGRESS
    assert cfg.redaction.header_value("x-api-key", "k") == REDACTED
    assert cfg.redaction.header_value("Cookie", "c") == REDACTED  # the defaults stay
    assert cfg.redaction.query is QueryRedaction.REMOVE
    off = ProxyConfig.from_dict({"redact": {"enabled": False}})
    assert off.redaction.header_value("Authorization", "a") == "a"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1], "l7_proxy: expected a mapping"),
        ({"max_conections": 1}, "l7_proxy.max_conections: unknown field"),
        ({"node_name": "x"}, "l7_proxy.node_name: unknown field"),
        ({"max_connections": 0}, "l7_proxy.max_connections: expected a positive number"),
        ({"max_connections": 1.5}, "l7_proxy.max_connections: expected a whole number"),
        ({"idle_timeout": "60s"}, "l7_proxy.idle_timeout: expected a positive number"),
        ({"idle_timeout": True}, "l7_proxy.idle_timeout: expected a positive number"),
        ({"redact": {"query": "hide"}}, "l7_proxy.redact.query: 'hide' is not one of"),
        ({"redact": {"headers": "Cookie"}}, "l7_proxy.redact.headers: expected a list"),
        ({"redact": {"enabled": "yes"}}, "l7_proxy.redact.enabled: expected true or false"),
        ({"redact": {"mask": 1}}, "l7_proxy.redact.mask: unknown field"),
    ],
)
def test_errors_name_the_field(raw: object, message: str) -> None:
    with pytest.raises(UsageError) as info:
        ProxyConfig.from_dict(raw)
    assert message in str(info.value)
