"""The plugin-agent protocol and the CNI result shapes, as pure functions."""

from __future__ import annotations

import json
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataplane.cni.protocol import (
    CNIError,
    Request,
    convert_result,
    decode_response,
    dumps,
    encode_response,
    loads,
)
from dataplane.cni.service import cni_result
from dataplane.endpoint.endpoint import Endpoint

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(json_values)
def test_codec_agrees_with_json(value) -> None:
    text = dumps(value)
    assert "\n" not in text
    assert json.loads(text) == value
    assert loads(text) == json.loads(text)
    assert loads(json.dumps(value, indent=4)) == value


@pytest.mark.parametrize("text", ["", "{", "{} {}", "[1,]", "nul", "{'a': 1}"])
def test_codec_rejects_what_json_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        loads(text)


def test_request_round_trip_and_owner() -> None:
    req = Request("ADD", "c1", "/run/netns/p", "eth0", {"K8S_POD_NAME": "a"}, {"mtu": 1400})
    line = req.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert Request.decode(line) == req and req.owner == "c1/eth0"
    with pytest.raises(CNIError) as err:
        Request.decode(b'{"command": "FROB"}\n')
    assert err.value.code == 4


def test_response_round_trip() -> None:
    assert decode_response(encode_response({"a": 1})) == {"a": 1}
    with pytest.raises(CNIError) as err:
        decode_response(encode_response(error=CNIError(100, "IP pool exhausted", "10.0.0.0/24")))
    assert (err.value.code, err.value.msg, err.value.details) == (
        100,
        "IP pool exhausted",
        "10.0.0.0/24",
    )
    with pytest.raises(CNIError) as err:
        decode_response(b"garbage\n")
    assert err.value.code == 104


EP = Endpoint(
    node="n1",
    container_id="c1",
    ifname="eth0",
    netns="/run/netns/p",
    ip=IPv4Address("10.244.1.5"),
    pod_mac="02:00:00:00:00:02",
    host_ifname="lxc0123456789a",
    host_mac="02:00:00:00:00:01",
    host_ifindex=7,
    mtu=1500,
    pod_namespace="default",
    pod_name="a",
    pod_uid="u1",
    created="2026-01-01T00:00:00.000+00:00",
)


def test_result_shapes_per_version() -> None:
    full = cni_result(EP)
    v11 = convert_result(full, "1.1.0")
    assert v11 == full
    v10 = convert_result(full, "1.0.0")
    assert v10["cniVersion"] == "1.0.0"
    assert [set(i) for i in v10["interfaces"]] == [{"name", "mac"}, {"name", "mac", "sandbox"}]
    assert v10["ips"] == [{"address": "10.244.1.5/32", "gateway": "169.254.1.1", "interface": 1}]
    v04 = convert_result(full, "0.4.0")
    assert v04["ips"][0]["version"] == "4"
    assert set(v04) == {"cniVersion", "interfaces", "ips", "routes", "dns"}
    assert full["interfaces"][0]["mtu"] == 1500  # the input is not changed
