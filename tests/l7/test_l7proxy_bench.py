"""bench.l7proxy's workload means what the benchmark assumes, at a tiny size: its policy allows
its request, and a round through the real proxy processes counts answered requests. No timing is
asserted."""

from __future__ import annotations

import pytest

from bench import l7proxy
from dataplane.l7.httpmessage import RequestHead
from dataplane.l7.httprules import parse_http_rules


def test_the_benchmark_request_is_allowed_by_its_policy() -> None:
    head, _, _ = l7proxy.REQUEST.partition(b"\r\n\r\n")
    first, *headers = head.decode().split("\r\n")
    method, target, _version = first.split(" ")
    request = RequestHead(method, target, tuple(tuple(h.split(": ", 1)) for h in headers))
    assert parse_http_rules(l7proxy.RULES, "bench").allows(request)


def test_a_tiny_run_prints_both_variants_with_a_ratio(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(l7proxy, "DURATION", 0.3)
    l7proxy.main()
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "ratio" in line]
    assert [line.split()[0] for line in lines] == ["keep-alive", "new"]
    for line in lines:
        through = float(line.split("through the proxy")[1].split()[0])
        assert through > 0  # requests were answered through the proxy
