"""observe's outputs as hubble writes them: compact (with and without colour), dict, table,
json and jsonpb, for flows, lost events and the relay's node status events (stderr)."""

from __future__ import annotations

import io
import json

import pytest

from flowscope.flow import (
    IP,
    TCP,
    Endpoint,
    EventType,
    Flow,
    LostEvent,
    LostEventSource,
    TCPFlags,
    TraceObservationPoint,
    Verdict,
    record_from_json,
)
from flowscope.flow.compact import COLOR
from flowscope.flow.printer import Printer, tabulate
from flowscope.flow.protoconv import record_to_response
from flowscope.proto import observer_pb2

T0 = 1_764_366_771_123_456_789  # Nov 28 21:52:51.123 UTC
FWD = Flow(
    T0,
    Verdict.FORWARDED,
    ip=IP("10.244.1.5", "10.244.2.7"),
    l4=TCP(43210, 80, TCPFlags(SYN=True)),
    source=Endpoint(12, 300, "x", ("k8s:app=a",), "a"),
    destination=Endpoint(7, 301, "y", ("k8s:app=b",), "b"),
    node_name="node-1",
    event_type=EventType.trace(TraceObservationPoint.TO_ENDPOINT),
    is_reply=False,
)
DROP = Flow(
    T0 + 1_000_000,
    Verdict.DROPPED,
    drop_reason=133,
    ip=IP("10.244.1.6", "10.244.2.7"),
    l4=TCP(43211, 81, TCPFlags(SYN=True)),
    source=Endpoint(13, 302, "z", (), "c"),
    destination=Endpoint(7, 301, "y", (), "b"),
    node_name="node-2",
    event_type=EventType.drop(133),
    is_reply=False,
)
LOST = LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 9, 1, T0 + 2_000_000, "node-1")


def render(output: str, *records, **kw) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    printer = Printer(output, out=out, err=err, **kw)
    for r in records:
        printer.write(r if isinstance(r, observer_pb2.GetFlowsResponse) else record_to_response(r))
    printer.close()
    return out.getvalue(), err.getvalue()


def node_status(state: int, *names: str, message: str = "") -> observer_pb2.GetFlowsResponse:
    resp = observer_pb2.GetFlowsResponse(
        node_status=observer_pb2.NodeStatusEvent(
            state_change=state, node_names=names, message=message
        ),
        node_name="relay",
    )
    resp.time.FromNanoseconds(T0)
    return resp


def test_compact() -> None:
    out, _ = render("compact", FWD, DROP, LOST, node_name=True)
    assert out.splitlines() == [
        "Nov 28 21:52:51.123 [node-1]: x/a:43210 (ID:300) -> y/b:80 (ID:301) to-endpoint"
        " FORWARDED (TCP Flags: SYN)",
        "Nov 28 21:52:51.124 [node-2]: z/c:43211 (ID:302) -> y/b:81 (ID:301) Policy denied"
        " DROPPED (TCP Flags: SYN)",
        "EVENTS LOST: PERF_EVENT_RING_BUFFER CPU(1) 9",
    ]


def test_compact_in_colour() -> None:
    out, _ = render("compact", FWD, DROP, palette=COLOR)
    fwd, drop = out.splitlines()
    assert "\x1b[36mx/a:43210\x1b[0m \x1b[35m(ID:300)\x1b[0m ->" in fwd
    assert "\x1b[32mFORWARDED\x1b[0m" in fwd and "\x1b[31mDROPPED\x1b[0m" in drop
    # without colour nothing of it
    assert "\x1b" not in render("compact", FWD)[0]


def test_dict() -> None:
    out, _ = render("dict", FWD, LOST, node_name=True)
    assert out == (
        "  TIMESTAMP: Nov 28 21:52:51.123\n"
        "       NODE: node-1\n"
        "     SOURCE: x/a:43210\n"
        "DESTINATION: y/b:80\n"
        "       TYPE: to-endpoint\n"
        "    VERDICT: FORWARDED\n"
        "    SUMMARY: TCP Flags: SYN\n"
        "------------\n"
        "  TIMESTAMP: \n"
        "       NODE: \n"
        "     SOURCE: PERF_EVENT_RING_BUFFER\n"
        "       TYPE: EVENTS LOST\n"
        "    VERDICT: \n"
        "    SUMMARY: CPU(1) - 9\n"
    )


def test_table() -> None:
    out, _ = render("table", FWD, DROP, LOST)
    rows = [line.split("   ") for line in out.splitlines()]
    # columns padded to the widest cell + 3, as Go's tabwriter pads them
    assert out.splitlines()[0] == (
        "TIMESTAMP".ljust(22)
        + "SOURCE".ljust(25)
        + "DESTINATION".ljust(14)
        + "TYPE".ljust(16)
        + "VERDICT".ljust(12)
        + "SUMMARY"
    )
    assert [[c.strip() for c in r if c.strip()] for r in rows] == [
        ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"],
        [
            "Nov 28 21:52:51.123",
            "x/a:43210",
            "y/b:80",
            "to-endpoint",
            "FORWARDED",
            "TCP Flags: SYN",
        ],
        [
            "Nov 28 21:52:51.124",
            "z/c:43211",
            "y/b:81",
            "Policy denied",
            "DROPPED",
            "TCP Flags: SYN",
        ],
        ["PERF_EVENT_RING_BUFFER", "EVENTS LOST", "CPU(1) - 9"],
    ]
    assert out.splitlines()[3].index("EVENTS LOST") == out.splitlines()[0].index("TYPE")
    assert tabulate([["a", "bb", "c"], ["ccc", "d", "e"]]) == ["a     bb   c", "ccc   d    e"]


@pytest.mark.parametrize("output", ["json", "jsonpb"])
def test_json_is_one_get_flows_response_per_line(output: str) -> None:
    out, err = render(output, FWD, LOST, node_status(observer_pb2.NODE_UNAVAILABLE, "node-3"))
    lines = out.splitlines()
    assert [record_from_json(line) for line in lines] == [FWD, LOST]
    first = json.loads(lines[0])
    assert first["node_name"] == "node-1" and first["time"] == "2025-11-28T21:52:51.123456789Z"
    assert first["flow"]["IP"]["source"] == "10.244.1.5"
    assert first["flow"]["l4"]["TCP"]["destination_port"] == 80
    assert first["flow"]["verdict"] == "FORWARDED"
    # node status events go to stderr, as JSON
    assert json.loads(err)["node_status"] == {
        "state_change": "NODE_UNAVAILABLE",
        "node_names": ["node-3"],
    }


def test_node_status_events_on_stderr() -> None:
    connected = node_status(observer_pb2.NODE_CONNECTED, "node-1", "node-2")
    down = node_status(observer_pb2.NODE_UNAVAILABLE, "node-3", message="no Observer answers")
    out, err = render("compact", connected, FWD, down)
    assert out.count("\n") == 1
    assert err == (
        "Nov 28 21:52:51.123 [relay]: 1 nodes are unavailable: node-3 (no Observer answers)\n"
    )
    _, err = render("compact", connected, debug=True)
    assert "Receiving flows from 2 nodes: node-1, node-2" in err
    _, err = render("dict", down)
    assert "      STATE: NODE_UNAVAILABLE\n      NODES: node-3\n" in err
    many = node_status(observer_pb2.NODE_UNAVAILABLE, *(f"node-{i:02d}" for i in range(20)))
    _, err = render("compact", many)
    assert "20 nodes are unavailable: node-00, " in err and "(and 15 more)" in err


def test_unknown_output_is_refused() -> None:
    with pytest.raises(ValueError, match="yaml"):
        Printer("yaml")
