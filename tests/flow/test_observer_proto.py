"""The generated Observer service works end to end over gRPC on a Unix socket: a minimal servicer
streams flowscope records, a client reads them back into the model (the wiring the node agent's
observer and the relay build on)."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from flowscope.flow import IP, UDP, Flow, LostEvent, LostEventSource, Verdict
from flowscope.flow.protoconv import record_from_response, record_to_response
from flowscope.proto import flow_pb2, observer_pb2, observer_pb2_grpc

T0 = 1_764_366_771_000_000_000
RECORDS = [
    Flow(
        T0, Verdict.FORWARDED, ip=IP("10.244.1.5", "10.244.2.7"), l4=UDP(5353, 53), node_name="n1"
    ),
    LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 7, 1, T0 + 1, "n1"),
]


class _Observer(observer_pb2_grpc.ObserverServicer):
    def __init__(self) -> None:
        self.requests: list[observer_pb2.GetFlowsRequest] = []

    async def GetFlows(self, request, context):
        self.requests.append(request)
        for record in RECORDS[: request.number or None]:
            yield record_to_response(record)

    async def ServerStatus(self, request, context):
        return observer_pb2.ServerStatusResponse(
            num_flows=1,
            max_flows=65535,
            seen_flows=2,
            lost_events=[
                flow_pb2.LostEvent(source=flow_pb2.PERF_EVENT_RING_BUFFER, num_events_lost=7)
            ],
        )


async def test_get_flows_and_server_status_over_a_unix_socket(tmp_path) -> None:
    address = f"unix:{tmp_path}/observer.sock"
    server = grpc.aio.server()
    servicer = _Observer()
    observer_pb2_grpc.add_ObserverServicer_to_server(servicer, server)
    server.add_insecure_port(address)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)
            request = observer_pb2.GetFlowsRequest(
                number=2,
                whitelist=[
                    flow_pb2.FlowFilter(source_pod=["default/web-"], verdict=[flow_pb2.DROPPED])
                ],
                blacklist=[flow_pb2.FlowFilter(destination_port=["53"])],
                field_mask=field_mask_pb2.FieldMask(paths=["time", "source.pod_name"]),
            )
            request.since.FromNanoseconds(T0 - 1)
            got = [record_from_response(r) async for r in stub.GetFlows(request)]
            status = await stub.ServerStatus(observer_pb2.ServerStatusRequest())
    finally:
        await server.stop(None)
    assert got == RECORDS
    # the request arrives whole: filters, time bounds and the field mask
    (seen,) = servicer.requests
    assert seen == request and seen.whitelist[0].source_pod == ["default/web-"]
    assert list(seen.field_mask.paths) == ["time", "source.pod_name"]
    assert seen.since.ToNanoseconds() == T0 - 1
    assert (status.num_flows, status.max_flows, status.lost_events[0].num_events_lost) == (
        1,
        65535,
        7,
    )
