"""The source-IP persistence table: expiry, renewal, the size bound, and what a peer can restore."""

from twisted.internet.task import Clock

from proxy.persistence import PersistenceTable


def table(timeout=60.0, size=100):
    clock = Clock()
    return PersistenceTable(timeout, size, clock), clock


def test_entry_lives_exactly_timeout_after_its_last_use():
    t, clock = table(timeout=60)
    t.record("198.18.0.100", "CAS2")
    clock.advance(59.999)
    assert t.lookup("198.18.0.100") == "CAS2"
    clock.advance(0.001)
    assert t.lookup("198.18.0.100") is None
    assert len(t) == 0


def test_recording_again_renews_the_lifetime():
    t, clock = table(timeout=60)
    t.record("a", "CAS1")
    clock.advance(50)
    t.record("a", "CAS1")
    clock.advance(50)
    assert t.lookup("a") == "CAS1"
    clock.advance(10)
    assert t.lookup("a") is None


def test_renew_returns_the_server_and_renews_like_record():
    t, clock = table(timeout=60, size=2)
    t.record("a", "CAS1")
    t.record("b", "CAS2")
    clock.advance(50)
    assert t.renew("a") == "CAS1"  # now the most recent: "b" goes first when the table overflows
    t.record("c", "CAS2")
    assert t.lookup("b") is None
    clock.advance(59)
    assert t.lookup("a") == "CAS1"
    clock.advance(1)
    assert t.renew("a") is None
    assert t.renew("never") is None
    assert len(t) == 1  # only "c" is left: an expired entry goes when renew finds it


def test_lookup_alone_does_not_renew():
    t, clock = table(timeout=60)
    t.record("a", "CAS1")
    clock.advance(30)
    t.lookup("a")
    clock.advance(30)
    assert t.lookup("a") is None


def test_size_bound_evicts_the_least_recently_used():
    t, clock = table(size=3)
    for source in "abc":
        t.record(source, "CAS1")
        clock.advance(1)
    t.record("a", "CAS1")  # a is now the most recent
    t.record("d", "CAS2")
    assert len(t) == 3
    assert t.lookup("b") is None
    assert [t.lookup(s) for s in "acd"] == ["CAS1", "CAS1", "CAS2"]


def test_purge_removes_only_expired_entries():
    t, clock = table(timeout=10)
    t.record("old", "CAS1")
    clock.advance(6)
    t.record("new", "CAS2")
    clock.advance(4)
    assert t.purge() == 1
    assert list(s for s, _, _ in t.entries()) == ["new"]
    clock.advance(6)
    assert t.purge() == 1 and len(t) == 0


def test_forget_server_drops_only_its_clients():
    t, _ = table()
    t.record("a", "CAS1")
    t.record("b", "CAS2")
    t.record("c", "CAS2")
    assert t.forget_server("CAS2") == 2
    assert t.lookup("a") == "CAS1" and t.lookup("b") is None and t.lookup("c") is None


def test_entries_report_remaining_lifetime_and_restore_keeps_it():
    t, clock = table(timeout=60)
    t.record("a", "CAS1")
    clock.advance(20)
    t.record("b", "CAS2")
    exported = list(t.entries())
    assert exported == [("a", "CAS1", 40.0), ("b", "CAS2", 60.0)]

    peer, peer_clock = table(timeout=60)
    peer.record("c", "CAS1")  # expires at 60
    peer_clock.advance(30)
    for source, server, remaining in reversed(exported):  # b expires at 90, then a at 70
        peer.restore(source, server, remaining)
    assert [s for s, _, _ in peer.entries()] == ["c", "a", "b"]  # kept in expiry order
    peer_clock.advance(40)
    assert peer.lookup("a") is None and peer.lookup("b") == "CAS2"
    assert peer.purge() == 1  # c; a went on lookup
    peer.restore("z", "CAS1", 0)
    assert peer.lookup("z") is None


def test_restore_many_keeps_expiry_order_caps_lifetimes_and_bounds_the_table():
    t, clock = table(timeout=60, size=3)
    t.record("mine", "CAS1")  # expires at 60
    t.restore_many([("a", "CAS2", 10), ("b", "CAS1", 500), ("c", "CAS2", 30), ("dead", "CAS1", 0)])
    # b's lifetime is capped at the table's timeout (60): it ties with "mine" and stays after it.
    assert [s for s, _, _ in t.entries()] == ["c", "mine", "b"]  # "a" (soonest) evicted by the bound
    assert t.lookup("dead") is None


def test_restore_many_appends_in_order_batches_and_sorts_the_rest():
    t, clock = table(timeout=60, size=100)
    t.restore_many([("a", "CAS1", 10), ("b", "CAS2", 20)])
    clock.advance(5)
    t.restore_many([("c", "CAS1", 60), ("a", "CAS2", 60)])  # a moves to the back, with its new server
    assert [(s, srv) for s, srv, _ in t.entries()] == [("b", "CAS2"), ("c", "CAS1"), ("a", "CAS2")]
    t.restore_many([("d", "CAS1", 1)])  # out of order: sorted in
    assert [s for s, _, _ in t.entries()] == ["d", "b", "c", "a"]
