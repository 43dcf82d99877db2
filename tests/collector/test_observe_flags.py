"""`observe`'s flags read into a GetFlowsRequest as hubble builds it: each filter flag, the
either-end flags as two filters, namespaces, --not, conflicts, bad values naming the flag,
--last/--first/--all/--since/--until. Parsed by the real command-line parser."""

from __future__ import annotations

import argparse

import pytest
from google.protobuf import json_format

from flowscope.cli.main import build_parser
from flowscope.cli.observe import build_request, parse_duration_ns
from flowscope.errors import UsageError
from flowscope.proto import flow_pb2, observer_pb2

NOW = 1_764_366_771_000_000_000
S = 1_000_000_000


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["observe", *argv])


def request(*argv: str) -> observer_pb2.GetFlowsRequest:
    return build_request(args(*argv), now_ns=NOW)


def lists(*argv: str) -> tuple[list[dict], list[dict]]:
    req = request(*argv)

    def d(filters) -> list[dict]:
        return [json_format.MessageToDict(f, preserving_proto_field_name=True) for f in filters]

    return d(req.whitelist), d(req.blacklist)


@pytest.mark.parametrize(
    ("argv", "whitelist"),
    [
        (["--pod", "x/a"], [{"source_pod": ["x/a"]}, {"destination_pod": ["x/a"]}]),
        (["--from-pod", "x/a", "--from-pod", "b"], [{"source_pod": ["x/a", "b"]}]),
        (["--to-pod", "x/a"], [{"destination_pod": ["x/a"]}]),
        (["--ip", "10.0.0.1"], [{"source_ip": ["10.0.0.1"]}, {"destination_ip": ["10.0.0.1"]}]),
        (["--from-ip", "10.0.0.0/8"], [{"source_ip": ["10.0.0.0/8"]}]),
        (["--to-ip", "10.0.0.1"], [{"destination_ip": ["10.0.0.1"]}]),
        (
            ["--label", "app=web"],
            [{"source_label": ["app=web"]}, {"destination_label": ["app=web"]}],
        ),
        (["--from-label", "k8s:app=web"], [{"source_label": ["k8s:app=web"]}]),
        (["--to-label", "app in (a,b)"], [{"destination_label": ["app in (a,b)"]}]),
        (["--port", "80"], [{"source_port": ["80"]}, {"destination_port": ["80"]}]),
        (["--from-port", "80"], [{"source_port": ["80"]}]),
        (["--to-port", "53"], [{"destination_port": ["53"]}]),
        (
            ["--identity", "world"],
            [{"source_identity": [2]}, {"destination_identity": [2]}],
        ),
        (["--from-identity", "300"], [{"source_identity": [300]}]),
        (["--to-identity", "host"], [{"destination_identity": [1]}]),
        (
            ["--fqdn", "*.example.com"],
            [{"source_fqdn": ["*.example.com"]}, {"destination_fqdn": ["*.example.com"]}],
        ),
        (["--to-fqdn", "api.example.com"], [{"destination_fqdn": ["api.example.com"]}]),
        (
            ["--service", "y/web"],
            [{"source_service": ["y/web"]}, {"destination_service": ["y/web"]}],
        ),
        (["--from-service", "web"], [{"source_service": ["web"]}]),
        (["--to-service", "y/web"], [{"destination_service": ["y/web"]}]),
        (["--verdict", "dropped", "--verdict", "AUDIT"], [{"verdict": ["DROPPED", "AUDIT"]}]),
        (["--drop-reason-desc", "policy_denied"], [{"drop_reason_desc": ["POLICY_DENIED"]}]),
        (["--protocol", "udp"], [{"protocol": ["udp"]}]),
        (["-t", "trace-sock"], [{"event_type": [{"type": 7}]}]),
        (
            ["--type", "trace:to-endpoint"],
            [{"event_type": [{"type": 4, "match_sub_type": True}]}],
        ),
        (["--tcp-flags", "syn,ack"], [{"tcp_flags": [{"SYN": True, "ACK": True}]}]),
        (["--traffic-direction", "Ingress"], [{"traffic_direction": ["INGRESS"]}]),
        (["--is-reply"], [{"reply": [True]}]),
        (["--is-reply=false"], [{"reply": [False]}]),
        (["--node-name", "node-*"], [{"node_name": ["node-*"]}]),
        (["--http-method", "get"], [{"http_method": ["get"]}]),
        (["--http-status", "5+"], [{"http_status_code": ["5+"]}]),
        (["--http-path", "/api/.*"], [{"http_path": ["/api/.*"]}]),
        (["--uuid", "u-1"], [{"uuid": ["u-1"]}]),
        # namespaces go into the pod (and service) filters of their end
        (["--namespace", "x"], [{"source_pod": ["x/"]}, {"destination_pod": ["x/"]}]),
        (["-n", "x", "--pod", "a"], [{"source_pod": ["x/a"]}, {"destination_pod": ["x/a"]}]),
        (["--from-namespace", "x"], [{"source_pod": ["x/"]}]),
        (
            ["--to-namespace", "y", "--to-service", "web"],
            [{"destination_service": ["y/web"]}],
        ),
        # different flags: AND within each of the two filters
        (
            ["--pod", "x/a", "--verdict", "DROPPED"],
            [
                {"source_pod": ["x/a"], "verdict": ["DROPPED"]},
                {"destination_pod": ["x/a"], "verdict": ["DROPPED"]},
            ],
        ),
    ],
)
def test_each_filter_flag(argv: list[str], whitelist: list[dict]) -> None:
    white, black = lists(*argv)
    if argv[:2] == ["--type", "trace:to-endpoint"]:
        # the datapath's TO_LXC number (0: protojson leaves it out)
        assert white[0]["event_type"][0].pop("sub_type", 0) == 0
    assert (white, black) == (whitelist, [])


def test_not_sends_only_the_next_flag_to_the_blacklist() -> None:
    white, black = lists("--not", "--verdict", "DROPPED", "--pod", "x/a")
    assert black == [{"verdict": ["DROPPED"]}]
    assert white == [{"source_pod": ["x/a"]}, {"destination_pod": ["x/a"]}]
    white, black = lists("--not", "--to-port", "80", "--not", "--to-port", "443")
    assert white == [] and black == [{"destination_port": ["80", "443"]}]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--from-ip", "10.0.0.300"], "--from-ip '10.0.0.300': "),
        (["--to-port", "eighty"], "--to-port 'eighty': "),
        (["--port", "70000"], "--port '70000': "),
        (["--label", "app=(x"], "--label 'app=(x': "),
        (["--pod", "/a"], "--pod '/a': "),
        (["--verdict", "SMASHED"], "--verdict: 'SMASHED' is not a verdict"),
        (["--type", "trace-socket"], "--type: 'trace-socket' is not an event type"),
        (["--protocol", "gre"], "--protocol 'gre': "),
        (["--identity", "nobody"], "--identity: 'nobody' is not a security identity"),
        (["--tcp-flags", "syn,foo"], "--tcp-flags: unknown TCP flag 'foo'"),
        (["--traffic-direction", "up"], "--traffic-direction: 'up'"),
        (["--is-reply=maybe"], "--is-reply: 'maybe'"),
        (["--http-status", "6+"], "--http-status '6+': "),
        (["--http-method", "FETCH"], "--http-method 'FETCH': "),
        (["--fqdn", "a b"], "--fqdn 'a b': "),
        (["--drop-reason-desc", "OOPS"], "--drop-reason-desc: 'OOPS'"),
        (["--namespace", "a/b"], "--namespace 'a/b'"),
        (["--not"], "--not: nothing follows it"),
        (["--not", "--not", "--pod", "a"], "--not: two in a row"),
        (["--from-pod", "a", "--namespace", "x"], "--from-pod and --namespace cannot"),
        (["--ip", "10.0.0.1", "--to-ip", "10.0.0.2"], "--ip and --to-ip cannot"),
        (["--port", "1", "--to-port", "2"], "--port and --to-port cannot"),
        (["--last", "-1"], "--last -1"),
        (["--first", "2", "--last", "3"], "--first and --last"),
        (["--first", "2", "--follow"], "--first: not with --follow"),
        (["--all", "--last", "3"], "--all: not with"),
        (["-o", "table", "--follow"], "-o table: not with --follow"),
        (["--since", "yesterday"], "--since 'yesterday': not a duration"),
        (["--since", "1m", "--until", "5m"], "--until: before --since"),
    ],
)
def test_bad_flags_are_named(argv: list[str], says: str) -> None:
    with pytest.raises(UsageError) as exc:
        request(*argv)
    assert says in str(exc.value)


def test_counts_and_times() -> None:
    assert request().number == 20  # hubble's default
    assert request("--last", "5").number == 5
    assert (request("--first", "3").number, request("--first", "3").first) == (3, True)
    assert request("--all").number == 0
    followed = request("--follow")
    assert followed.follow and followed.number == 0
    assert request("--follow", "--last", "2").number == 2
    since = request("--since", "5m")
    assert since.since.ToNanoseconds() == NOW - 300 * S and since.number == 0
    both = request("--since", "2025-11-28T21:52:00Z", "--until", "30s")
    assert both.since.ToNanoseconds() == 1_764_366_720 * S
    assert both.until.ToNanoseconds() == NOW - 30 * S
    # with --follow, hubble leaves --until out
    assert not request("--follow", "--until", "1m").HasField("until")
    assert parse_duration_ns("1.5s") == 1_500_000_000
    assert parse_duration_ns("2h45m10ms") == (2 * 3600 + 45 * 60) * S + 10_000_000
    assert parse_duration_ns("0") == 0
    for bad in ("5", "m", "5d", "-1m", ""):
        with pytest.raises(ValueError):
            parse_duration_ns(bad)


def test_the_request_is_what_the_server_accepts() -> None:
    from collector.observer import parse_request

    req = request(
        "--pod", "x/a", "--not", "--verdict", "DROPPED", "--http-method", "GET", "-t", "drop"
    )
    parsed = parse_request(req)
    assert len(parsed.selection.whitelist) == 2 and len(parsed.selection.blacklist) == 1
    assert req.whitelist[0].event_type[0].type == 1
    assert flow_pb2.DROPPED in req.blacklist[0].verdict
