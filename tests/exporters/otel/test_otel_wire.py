"""What goes over the wire beyond the log records oteltap hands out: the resource of each
node's logs, the configured headers and compression. A small OTLP/HTTP endpoint of the test's
own (http.server in a thread) keeps each request whole."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

import exporters.otel as otel
from exporters.exporter import ExportBatch
from tests.exporters.otel.flows import tcp_flow


class _Capture(BaseHTTPRequestHandler):
    requests: list[tuple[str, dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.requests.append((self.path, dict(self.headers), body))
        reply = ExportLogsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list]]:
    requests: list = []
    handler = type("Handler", (_Capture,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


async def test_resource_per_node_headers_and_gzip(endpoint) -> None:
    url, requests = endpoint
    config = otel.KIND.parse(
        {
            "endpoint": url,
            "headers": {"x-api-key": "k1"},
            "compression": "gzip",
            "resource": {"deployment.environment.name": "lab"},
            "metrics": {"enabled": False},
        },
        "otel",
    )
    exp = otel.KIND.build(config)
    await exp.start()
    try:
        await exp.export(ExportBatch(tuple(tcp_flow(i, node=f"n{i % 3}") for i in range(9))))
        await exp.flush()
    finally:
        await exp.close()
    assert requests and all(path == "/v1/logs" for path, _, _ in requests)
    assert all(h.get("x-api-key") == "k1" for _, h, _ in requests)
    assert all(h.get("Content-Encoding") == "gzip" for _, h, _ in requests)
    per_node: dict[str, int] = {}
    for _, _, body in requests:
        for rl in ExportLogsServiceRequest.FromString(body).resource_logs:
            res = {kv.key: kv.value.string_value for kv in rl.resource.attributes}
            assert res["service.name"] == "flowscope"
            assert res["deployment.environment.name"] == "lab"
            node = res["k8s.node.name"]
            for sl in rl.scope_logs:
                assert sl.scope.name == "flowscope.exporters.otel"
                for lr in sl.log_records:
                    attrs = {kv.key: kv.value.string_value for kv in lr.attributes}
                    assert attrs["k8s.node.name"] == node  # the record's node is its resource's
                    per_node[node] = per_node.get(node, 0) + 1
    assert per_node == {"n0": 3, "n1": 3, "n2": 3}
