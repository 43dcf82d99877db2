"""Python code generated from proto/ (flowscope's flow and observer protos); see proto/README.md.

flow_pb2: flowscope.flow.v1 (Flow, LostEvent, FlowFilter, ...); observer_pb2 and
observer_pb2_grpc: flowscope.observer.v1 (the Observer service and its messages). Regenerate with
`python -m flowscope.proto.codegen` after editing a .proto; tests/flow/test_protogen.py fails when
these files and the .proto files disagree.
"""
