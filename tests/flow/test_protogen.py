"""The committed generated code in flowscope/proto/ is what proto/*.proto generates today."""

from __future__ import annotations

from flowscope.proto import codegen, flow_pb2, observer_pb2, observer_pb2_grpc


def test_committed_modules_equal_a_fresh_generation():
    fresh = codegen.generate()
    assert sorted(fresh) == [
        "flow_pb2.py",
        "kafka_pb2.py",
        "observer_pb2.py",
        "observer_pb2_grpc.py",
    ]
    for name, text in fresh.items():
        committed = (codegen.OUT_DIR / name).read_text()
        assert committed == text, (
            f"flowscope/proto/{name} is stale: python -m flowscope.proto.codegen"
        )


def test_generated_modules_live_in_flowscope_proto_with_hubble_names():
    assert observer_pb2.GetFlowsResponse.__module__ == "flowscope.proto.observer_pb2"
    assert observer_pb2_grpc.ObserverStub.__module__ == "flowscope.proto.observer_pb2_grpc"
    # the descriptors keep the proto path and package, for the wire and for reflection
    assert flow_pb2.DESCRIPTOR.name == "flowscope/flow/v1/flow.proto"
    assert observer_pb2.DESCRIPTOR.package == "flowscope.observer.v1"
    fields = {f.name: f.number for f in flow_pb2.Flow.DESCRIPTOR.fields}
    # a sample of Hubble's numbers, kept
    assert fields["IP"] == 5 and fields["Type"] == 10 and fields["drop_reason_desc"] == 25
    assert fields["is_reply"] == 26 and fields["Summary"] == 100000
    assert fields["egress_allowed_by"] == 21001 and fields["ingress_denied_by"] == 21005


def test_relocate_rewrites_protoc_module_paths():
    text = (
        "from flowscope.flow.v1 import flow_pb2 as x\n"
        "_builder.BuildTopDescriptorsAndMessages(D, 'flowscope.observer.v1.observer_pb2', g)\n"
    )
    assert codegen.relocate(text) == (
        "from flowscope.proto import flow_pb2 as x\n"
        "_builder.BuildTopDescriptorsAndMessages(D, 'flowscope.proto.observer_pb2', g)\n"
    )
