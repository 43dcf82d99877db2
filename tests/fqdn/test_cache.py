"""The DNS cache: pairs live for max(TTL, min_ttl), stay bounded, and map both ways."""

from __future__ import annotations

from ipaddress import IPv4Address

from dataplane.fqdn.cache import DNSCache
from dataplane.fqdn.selector import FQDNSelector

API = FQDNSelector.parse({"matchName": "api.example.com"}, "s")
ANY = FQDNSelector.parse({"matchPattern": "*.example.com"}, "s")


def test_learn_lookup_and_names_of_an_address() -> None:
    c = DNSCache(min_ttl=10)
    assert c.learn(["api.example.com.", "edge.cdn.net."], ["1.2.3.4", "1.2.3.5"], 300, now=0)
    assert c.ips_for(API) == {IPv4Address("1.2.3.4"), IPv4Address("1.2.3.5")}
    assert c.names_of("1.2.3.4") == ("api.example.com.", "edge.cdn.net.")
    # the same answer again: nothing new, only a longer life
    version = c.version
    assert not c.learn(["api.example.com"], ["1.2.3.4"], 600, now=100)
    assert c.version == version and c.expires_at("api.example.com", "1.2.3.4") == 700
    assert len(c) == 4


def test_ttl_has_a_floor_and_expiry_forgets_both_ways() -> None:
    c = DNSCache(min_ttl=60)
    c.learn(["www.example.com"], ["9.9.9.9"], 0, now=1000)  # TTL 0 is common
    assert c.expires_at("www.example.com", "9.9.9.9") == 1060
    assert not c.expire(now=1059) and c.ips_for(ANY)
    assert c.expire(now=1060)
    assert c.ips_for(ANY) == frozenset() and c.names_of("9.9.9.9") == () and len(c) == 0


def test_non_ipv4_and_garbage_addresses_are_skipped() -> None:
    c = DNSCache()
    assert not c.learn(["a.example.com"], ["::1", "nope"], 30, now=0)
    assert len(c) == 0 and c.names_of("nope") == ()


def test_bounded_the_soonest_to_expire_goes_first() -> None:
    c = DNSCache(min_ttl=0, max_pairs=2)
    c.learn(["a.example.com"], ["10.0.0.1"], 10, now=0)
    c.learn(["b.example.com"], ["10.0.0.2"], 100, now=0)
    c.learn(["c.example.com"], ["10.0.0.3"], 50, now=0)
    assert len(c) == 2
    assert c.names_of("10.0.0.1") == ()
    assert c.names_of("10.0.0.2") == ("b.example.com.",)
    assert c.names_of("10.0.0.3") == ("c.example.com.",)
