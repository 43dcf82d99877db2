"""The publisher's fast GetFlowsResponse encoder (collector.flowencoder): its bytes decode to
exactly the message protoconv builds, for the corpus and for random flows and lost events,
whether the template cache hits or not; bad values still fail naming the field."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.flowencoder import ResponseEncoder
from flowscope.flow.model import TCP, Flow, LostEvent, TCPFlags
from flowscope.flow.protoconv import record_to_response
from flowscope.proto import observer_pb2
from tests.flow.test_protoconv import CORPUS, lost_events, strategies


def decoded(data: bytes) -> observer_pb2.GetFlowsResponse:
    return observer_pb2.GetFlowsResponse.FromString(data)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_decodes_to_protoconvs_message(name: str) -> None:
    record = CORPUS[name]
    encoder = ResponseEncoder()
    first, again = encoder.encode(record), encoder.encode(record)  # a miss, then a hit
    assert decoded(first) == record_to_response(record)
    assert decoded(again) == record_to_response(record)


@settings(max_examples=200)
@given(st.one_of(strategies(nonempty=False), strategies(nonempty=True), lost_events))
def test_any_record_decodes_to_protoconvs_message(record: Flow | LostEvent) -> None:
    encoder = ResponseEncoder()
    assert decoded(encoder.encode(record)) == record_to_response(record)
    if isinstance(record, Flow):
        # the same flow at another time, with other ports and flags: the template is reused
        other = dataclasses.replace(
            record,
            time_ns=record.time_ns + 1,
            l4=TCP(1, 65535, TCPFlags(SYN=True)),
            uuid="u",
            socket_cookie=record.socket_cookie ^ 1,
        )
        assert decoded(encoder.encode(other)) == record_to_response(other)


def test_templates_are_reused_and_bounded() -> None:
    encoder = ResponseEncoder(max_templates=2)
    base = CORPUS["policy-verdict"]
    for port in range(100):
        encoder.encode(dataclasses.replace(base, l4=TCP(port, 80), time_ns=base.time_ns + port))
    assert (encoder.misses, encoder.hits) == (1, 99)
    for name in ("a", "b", "c"):
        encoder.encode(dataclasses.replace(base, node_name=name))
    assert len(encoder._templates) <= 2


def test_a_value_out_of_range_is_refused_naming_the_field() -> None:
    bad = dataclasses.replace(CORPUS["policy-verdict"], policy_match_type=2**40)
    with pytest.raises(ValueError, match=r"^flow: "):
        ResponseEncoder().encode(bad)
    bad_port = dataclasses.replace(CORPUS["policy-verdict"], l4=TCP(-1, 80))
    with pytest.raises(ValueError, match=r"flow\.l4\.TCP"):
        ResponseEncoder().encode(bad_port)
    bad_cookie = dataclasses.replace(CORPUS["policy-verdict"], socket_cookie=2**64)
    with pytest.raises(ValueError, match=r"^flow: "):
        ResponseEncoder().encode(bad_cookie)
