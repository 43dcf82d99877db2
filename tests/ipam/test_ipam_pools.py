"""Pure pool arithmetic: node CIDRs, blocks and addresses, without any store."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.ipam.pools import (
    block_capacity,
    next_address,
    next_block,
    next_node_cidr,
    node_cidr_capacity,
    overlay_capacity,
    overlay_reserved,
    subnet_reserved,
)

N = IPv4Network
A = IPv4Address


# --- node CIDRs ---------------------------------------------------------------------------------


def test_first_node_cidr_is_the_lowest():
    assert next_node_cidr(N("10.244.0.0/16"), 24, []) == N("10.244.0.0/24")


def test_next_node_cidr_fills_the_lowest_gap():
    claimed = [N("10.244.0.0/24"), N("10.244.2.0/24")]
    assert next_node_cidr(N("10.244.0.0/16"), 24, claimed) == N("10.244.1.0/24")


def test_next_node_cidr_skips_a_claim_of_another_size_that_overlaps():
    # a claimed /23 covers the first two /24s
    assert next_node_cidr(N("10.244.0.0/16"), 24, [N("10.244.0.0/23")]) == N("10.244.2.0/24")


def test_next_node_cidr_none_when_every_cidr_is_claimed():
    pod = N("10.244.0.0/22")
    claimed = list(pod.subnets(new_prefix=24))
    assert node_cidr_capacity(pod, 24) == 4
    assert next_node_cidr(pod, 24, claimed) is None


@given(plen=st.integers(16, 24), extra=st.integers(0, 6), data=st.data())
@settings(max_examples=60, deadline=None)
def test_node_cidrs_are_disjoint_and_run_out_exactly_at_capacity(plen, extra, data):
    pod = N((int(A("10.244.0.0")) >> (32 - plen) << (32 - plen), plen))
    mask = min(plen + extra, 30)
    capacity = node_cidr_capacity(pod, mask)
    claimed: list[IPv4Network] = []
    for _ in range(min(capacity, 64)):
        cidr = next_node_cidr(pod, mask, claimed)
        assert cidr is not None and cidr.prefixlen == mask and cidr.subnet_of(pod)
        assert not any(cidr.overlaps(c) for c in claimed)
        claimed.append(cidr)
    if capacity <= 64:
        assert next_node_cidr(pod, mask, claimed) is None
    else:  # claiming all 2^14 would be slow: claim the rest at once and check the last one
        rest = [c for c in pod.subnets(new_prefix=mask) if c not in claimed]
        last = data.draw(st.sampled_from(rest))
        assert next_node_cidr(pod, mask, [c for c in rest if c != last] + claimed) == last


# --- addresses ----------------------------------------------------------------------------------


def test_overlay_reserves_network_gateway_and_broadcast():
    pool = N("10.244.1.0/24")
    assert overlay_reserved(pool) == {A("10.244.1.0"), A("10.244.1.1"), A("10.244.1.255")}
    assert overlay_capacity(pool) == 253
    assert next_address(pool, [], excluded=overlay_reserved(pool)) == A("10.244.1.2")


def test_next_address_rotates_after_the_last_one_and_wraps():
    pool = N("10.224.1.0/28")
    assert next_address(pool, [A("10.224.1.0")]) == A("10.224.1.1")
    # .3 was handed out last and .4 has just been released: the search goes on after .3
    used = [A("10.224.1.0"), A("10.224.1.1"), A("10.224.1.2")]
    assert next_address(pool, used, after=A("10.224.1.3")) == A("10.224.1.4")
    assert next_address(pool, used, after=A("10.224.1.15")) == A("10.224.1.3")
    # a released address is not handed out again until the pool has gone round
    assert next_address(pool, [A("10.224.1.5")], after=A("10.224.1.5")) == A("10.224.1.6")


def test_next_address_none_when_full():
    pool = N("10.224.1.0/30")
    assert next_address(pool, list(pool)) is None
    assert next_address(pool, [A("10.224.1.2")], excluded=overlay_reserved(pool)) is None


def test_next_address_ignores_an_after_outside_the_pool():
    assert next_address(N("10.224.1.0/30"), [], after=A("192.168.0.1")) == A("10.224.1.0")


@given(
    plen=st.integers(24, 30),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 1000)), max_size=400),
)
@settings(max_examples=80, deadline=None)
def test_addresses_never_twice_never_reserved_full_exactly_at_capacity(plen, ops):
    pool = N(("10.244.7.0", plen), strict=False)
    reserved = overlay_reserved(pool)
    capacity = overlay_capacity(pool)
    used: list[IPv4Address] = []
    last = None
    for allocate, pick in ops:
        if allocate or not used:
            ip = next_address(pool, used, after=last, excluded=reserved)
            if len(used) == capacity:
                assert ip is None
                continue
            assert ip is not None, f"free addresses left ({len(used)}/{capacity}) but none found"
            assert ip in pool and ip not in reserved and ip not in used
            used.append(ip)
            last = ip
        else:
            used.pop(pick % len(used))


# --- blocks -------------------------------------------------------------------------------------


VNET = N("10.224.0.0/16")
VNET_RESERVED = subnet_reserved(VNET, [N("10.224.0.0/24")])


def test_first_block_follows_the_reserved_node_range():
    assert next_block(VNET, 16, VNET_RESERVED, []) == N("10.224.1.0/28")


def test_blocks_skip_the_subnet_network_and_broadcast():
    pod = N("10.225.0.0/16")
    reserved = subnet_reserved(pod, [])
    assert next_block(pod, 16, reserved, []) == N("10.225.0.16/28")
    last_wanted = next_block(pod, 16, reserved, [], after=N("10.225.255.224/28"))
    assert last_wanted == N("10.225.0.16/28")  # .240/28 holds the broadcast address: skipped
    assert block_capacity(pod, 16, reserved) == 4096 - 2


def test_block_capacity_of_the_vnet_minus_its_first_24():
    assert block_capacity(VNET, 16, VNET_RESERVED) == 4096 - 16 - 1


def test_next_block_rotates_after_the_cursor():
    used = [N("10.224.1.16/28")]
    # the block at 10.224.1.0/28 was just given back; the next claim goes after the cursor
    assert next_block(VNET, 16, VNET_RESERVED, used, after=N("10.224.1.16/28")) == N(
        "10.224.1.32/28"
    )
    assert next_block(VNET, 16, VNET_RESERVED, [], after=N("10.224.255.224/28")) == N(
        "10.224.1.0/28"
    )


def test_next_block_none_when_full():
    subnet = N("10.224.0.0/24")
    reserved = subnet_reserved(subnet, [N("10.224.0.0/26")])
    free = [b for b in subnet.subnets(new_prefix=28) if not any(b.overlaps(r) for r in reserved)]
    assert len(free) == block_capacity(subnet, 16, reserved) == 11
    assert next_block(subnet, 16, reserved, free) is None


def test_reserved_outside_the_subnet_is_ignored():
    subnet = N("10.225.0.0/24")
    assert subnet_reserved(subnet, [N("10.224.0.0/24")]) == (
        N("10.225.0.0/32"),
        N("10.225.0.255/32"),
    )


@st.composite
def block_layouts(draw):
    plen = draw(st.integers(20, 28))
    subnet = N(("10.224.0.0", plen), strict=False)
    size = 2 ** draw(st.integers(0, min(6, 32 - plen)))
    reserved = []
    for _ in range(draw(st.integers(0, 3))):
        rplen = draw(st.integers(plen, 32))
        start = draw(st.integers(0, subnet.num_addresses - 1))
        reserved.append(N((int(subnet.network_address) + start, rplen), strict=False))
    return subnet, size, subnet_reserved(subnet, reserved)


@given(layout=block_layouts(), ops=st.lists(st.integers(0, 1000), max_size=120))
@settings(max_examples=80, deadline=None)
def test_blocks_never_overlap_never_hold_reserved_full_exactly_at_capacity(layout, ops):
    subnet, size, reserved = layout
    capacity = block_capacity(subnet, size, reserved)
    used: list[IPv4Network] = []
    cursor = None
    for op in ops:
        if op % 4 == 0 and used:  # give a block back now and then
            used.pop(op % len(used))
            continue
        block = next_block(subnet, size, reserved, used, after=cursor)
        if len(used) == capacity:
            assert block is None
            continue
        assert block is not None
        assert block.num_addresses == size and block.subnet_of(subnet)
        assert not any(block.overlaps(u) for u in used)
        assert not any(block.overlaps(r) for r in reserved)
        used.append(block)
        cursor = block
