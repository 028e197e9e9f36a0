"""Lease bookkeeping as pure decisions: no clock, no trio, no files."""

from __future__ import annotations

from pio_remote.agent.leases import Busy, Granted, LeaseBook, NotHeld, Released

PORT = "/dev/ttyACM0"


def take(book: LeaseBook, key: str, now: float = 0.0, ttl: float = 60.0, detached: bool = False):
    return book.acquire(PORT, f"holder-{key}", key, now, ttl, detached=detached, note="n")


def test_one_lease_per_port_and_the_other_client_sees_who_and_until_when():
    book = LeaseBook()
    granted = take(book, "alice", now=100.0)
    assert isinstance(granted, Granted)
    assert granted.lease.until == 160.0
    busy = take(book, "bob", now=110.0)
    assert isinstance(busy, Busy) and busy.lease == granted.lease
    assert book.active(110.0)[PORT].public() == {
        "holder": "holder-alice",
        "until": 160.0,
        "note": "n",
    }


def test_a_lease_expires_at_its_ttl_and_then_others_may_take_it():
    book = LeaseBook()
    take(book, "alice", now=0.0, ttl=10.0)
    assert book.get(PORT, 9.9) is not None
    assert isinstance(take(book, "bob", now=9.9), Busy)
    assert book.get(PORT, 10.0) is None
    assert isinstance(take(book, "bob", now=10.0), Granted)


def test_using_a_leased_port_needs_the_holders_key_and_the_lease_id():
    book = LeaseBook()
    lease = take(book, "alice").lease
    assert book.blocking(PORT, "bob", frozenset({lease.id}), 1.0) == lease  # id alone: no
    assert book.blocking(PORT, "alice", frozenset(), 1.0) == lease  # key alone: no
    assert book.blocking(PORT, "alice", frozenset({lease.id}), 1.0) is None
    assert book.blocking("/dev/other", "bob", frozenset(), 1.0) is None


def test_only_the_holder_unlocks_and_renewal_stops_once_released():
    book = LeaseBook()
    lease = take(book, "alice").lease
    assert isinstance(book.release(PORT, "bob", 1.0), Busy)
    renewed = book.renew(lease, 30.0, 60.0)
    assert renewed is not None and renewed.until == 90.0
    assert book.release(PORT, "alice", 31.0) == Released(renewed)
    assert book.release(PORT, "alice", 32.0) == NotHeld(PORT)
    assert book.renew(lease, 33.0, 60.0) is None
    assert book.drop(lease) is None  # its session ending later changes nothing


def test_force_breaks_anyones_lease_and_the_holder_then_has_nothing_to_renew():
    """``device unlock --force``: the shell allows it to the owner's role only."""
    book = LeaseBook()
    lease = take(book, "alice").lease
    assert book.release(PORT, "bob", 1.0, force=True) == Released(lease)
    assert book.renew(lease, 2.0, 60.0) is None
    assert book.release(PORT, "bob", 3.0, force=True) == NotHeld(PORT)


def test_a_session_ending_drops_only_its_own_lease():
    book = LeaseBook()
    first = take(book, "alice", now=0.0, ttl=5.0).lease
    second = take(book, "bob", now=6.0).lease  # the first expired; bob took the port
    assert book.drop(first) is None
    assert book.get(PORT, 7.0) == second


def test_only_unexpired_detached_leases_are_saved_and_restored():
    book = LeaseBook()
    book.acquire("/dev/a", "h", "k", 0.0, 100.0, detached=True)
    book.acquire("/dev/b", "h", "k", 0.0, 100.0, detached=False)
    book.acquire("/dev/c", "h", "k", 0.0, 5.0, detached=True)
    saved = book.detached(10.0)
    assert [s["port"] for s in saved] == ["/dev/a"]
    restored = LeaseBook()
    assert restored.restore(saved + [{"junk": 1}, "nonsense"], 20.0) == 1
    assert restored.get("/dev/a", 20.0) is not None
    assert LeaseBook().restore(saved, 100.0) == 0  # expired while the agent was down
    assert LeaseBook().restore({"not": "a list"}, 0.0) == 0
