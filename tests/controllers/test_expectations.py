"""Expectations: an owner waits until the informers report its own writes, or until timeout."""

from __future__ import annotations

from flowscope.apis.refs import ObjectRef
from flowscope.controllers.expectations import Expectations

RS = ObjectRef("ReplicaSet", "app", "web-1")
P1, P2 = ObjectRef("Pod", "app", "web-1-aaaaa"), ObjectRef("Pod", "app", "web-1-bbbbb")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_creations_are_met_when_seen_even_if_deleted_since() -> None:
    e = Expectations(timeout=10, clock=Clock())
    e.expect(RS, present=[P1, P2])
    assert e.waiting({}) == {RS}
    e.observe(P1, deleted=False)
    assert e.waiting({}) == {RS}
    e.observe(P2, deleted=False)
    e.observe(P2, deleted=True)  # gone again before the round: still seen
    assert e.waiting({}) == set()


def test_deletions_and_updates() -> None:
    e = Expectations(timeout=10, clock=Clock())
    e.expect(RS, absent=[P1])
    e.observe(P1, deleted=False)  # a change of it is no deletion
    assert e.waiting({}) == {RS}
    e.observe(P1, deleted=True)
    assert e.waiting({}) == set()
    e.expect(RS, generations={RS: 3})
    stale = {"ReplicaSet": {RS: {"metadata": {"generation": 2}}}}
    assert e.waiting(stale) == {RS}
    assert e.waiting({"ReplicaSet": {RS: {"metadata": {"generation": 3}}}}) == set()


def test_an_expectation_never_met_expires() -> None:
    clock = Clock()
    e = Expectations(timeout=10, clock=clock)
    e.expect(RS, present=[P1])
    assert e.next_deadline() == 10
    clock.now += 4
    assert e.waiting({}) == {RS} and e.next_deadline() == 6
    clock.now += 7
    assert e.waiting({}) == set() and e.next_deadline() is None
