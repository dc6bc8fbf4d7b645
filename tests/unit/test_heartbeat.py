"""Heartbeat datagrams: what is accepted, and every way a datagram is dropped and counted."""

import os
import random

import pytest

from hapair.ha import Role
from hapair.heartbeat import MAX_SIZE, Codec, Dropped, read_key

KEY = bytes(range(32))
FP = b"\x11" * 32


def pair(epoch=1000):
    return Codec("lb1", "lb2", KEY, epoch=epoch), Codec("lb2", "lb1", KEY, epoch=2000)


def dropped(codec, data):
    with pytest.raises(Dropped) as e:
        codec.decode(data)
    return e.value.reason


def test_round_trip_carries_every_field():
    lb1, lb2 = pair()
    data = lb1.encode(Role.MASTER, 200, FP, healthy=True, ping_ok=False, releasing=True)
    got = lb2.decode(data)
    assert (got.beat.node, got.beat.role, got.beat.priority) == ("lb1", Role.MASTER, 200)
    assert (got.beat.healthy, got.beat.ping_ok, got.beat.releasing) == (True, False, True)
    assert got.fingerprint == FP and (got.epoch, got.seq) == (1000, 1)
    assert len(data) <= 154


def test_sequence_rises_and_a_replay_is_dropped():
    lb1, lb2 = pair()
    first, second = lb1.encode(Role.MASTER, 1, FP), lb1.encode(Role.MASTER, 1, FP)
    lb2.decode(first)
    lb2.decode(second)
    assert dropped(lb2, second) == "replayed"
    assert dropped(lb2, first) == "replayed"
    assert lb2.dropped["replayed"] == 2


def test_a_copy_on_another_path_is_accepted_once_and_marked_not_fresh():
    lb1, lb2 = pair()
    data = lb1.encode(Role.MASTER, 1, FP)
    assert lb2.decode(data, path=0).fresh
    copy = lb2.decode(data, path=1)
    assert not copy.fresh and copy.beat.role is Role.MASTER
    assert dropped_on(lb2, data, 1) == "replayed"  # but not twice on one path
    late = lb1.encode(Role.MASTER, 1, FP)
    assert lb2.decode(late, path=1).fresh and not lb2.decode(late, path=0).fresh
    older = lb1.encode(Role.MASTER, 1, FP)
    lb2.decode(lb1.encode(Role.MASTER, 1, FP), path=0)
    assert not lb2.decode(older, path=1).fresh  # an older datagram never reaches the machine


def dropped_on(codec, data, path):
    with pytest.raises(Dropped) as e:
        codec.decode(data, path)
    return e.value.reason


def test_a_restarted_peer_is_accepted_and_its_old_datagrams_are_not():
    lb1, lb2 = pair(epoch=1000)
    old = lb1.encode(Role.MASTER, 1, FP)
    lb2.decode(lb1.encode(Role.MASTER, 1, FP))
    restarted = Codec("lb1", "lb2", KEY, epoch=5000)
    lb2.decode(restarted.encode(Role.INIT, 1, FP))  # seq starts again at 1, epoch is later
    assert dropped(lb2, old) == "replayed"


def test_wrong_key_is_dropped():
    lb1 = Codec("lb1", "lb2", b"k" * 32)
    _, lb2 = pair()
    assert dropped(lb2, lb1.encode(Role.MASTER, 1, FP)) == "bad_mac"


def test_tampered_datagram_is_dropped():
    lb1, lb2 = pair()
    data = bytearray(lb1.encode(Role.SLAVE, 100, FP))
    data[7] = 2  # SLAVE -> MASTER without the key
    assert dropped(lb2, bytes(data)) == "bad_mac"


def test_unknown_node_is_dropped_even_with_the_right_key():
    intruder = Codec("lb3", "lb2", KEY)
    _, lb2 = pair()
    assert dropped(lb2, intruder.encode(Role.MASTER, 255, FP)) == "unknown_node"
    own = Codec("lb2", "lb1", KEY)  # a reflection of lb2's own heartbeat
    assert dropped(lb2, own.encode(Role.MASTER, 1, FP)) == "unknown_node"


def test_oversized_truncated_and_foreign_datagrams_are_dropped():
    lb1, lb2 = pair()
    good = lb1.encode(Role.MASTER, 1, FP)
    assert dropped(lb2, good + b"\0" * MAX_SIZE) == "oversized"
    for cut in (0, 1, 10, len(good) - 33, len(good) - 1):
        assert dropped(lb2, good[:cut]) in ("malformed", "bad_mac")
    assert dropped(lb2, b"GET / HTTP/1.0\r\n\r\n" + b"x" * 60) == "malformed"
    bad_version = bytearray(good)
    bad_version[4] = 9
    assert dropped(lb2, bytes(bad_version)) == "bad_version"
    assert lb2.decode(good).beat.role is Role.MASTER  # none of that changed what is accepted


def test_fuzzed_datagrams_never_raise_anything_but_dropped():
    lb1, lb2 = pair()
    rng = random.Random(7)
    good = lb1.encode(Role.MASTER, 1, FP)
    for _ in range(3000):
        kind = rng.randrange(3)
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 300))
        elif kind == 1:
            data = bytearray(good)
            for _ in range(rng.randrange(1, 5)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        else:
            data = good[: rng.randrange(len(good))] + rng.randbytes(rng.randrange(40))
        try:
            lb2.decode(data)
        except Dropped:
            pass
    assert sum(lb2.dropped.values()) >= 2999


def test_short_keys_are_refused():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Codec("lb1", "lb2", b"short")


def test_key_file(tmp_path):
    path = tmp_path / "key"
    path.write_text(os.urandom(32).hex() + "\n")
    assert len(read_key(str(path))) == 32
    path.write_text("not hex")
    with pytest.raises(ValueError, match="hex"):
        read_key(str(path))
    path.write_text("00ff")
    with pytest.raises(ValueError, match="at least 16"):
        read_key(str(path))


def test_boot_epochs_only_grow_even_when_the_clock_steps_back(tmp_path, monkeypatch):
    from hapair import heartbeat

    path = str(tmp_path / "epoch")
    monkeypatch.setattr(heartbeat.time, "time_ns", lambda: 5_000)
    first = heartbeat.next_epoch(path)
    monkeypatch.setattr(heartbeat.time, "time_ns", lambda: 1_000)  # the clock went back
    second = heartbeat.next_epoch(path)
    assert first == 5_000 and second == 5_001
