"""The pipe pool: sizes asked for, reuse of empty pipes only, and trimming what nobody needs."""

from __future__ import annotations

import os

from proxy.pipes import PipePool


def test_a_pipe_is_reused_only_when_empty_and_spares_are_trimmed():
    pool = PipePool(size=1 << 16, keep=4)
    a, b = pool.take(), pool.take()
    assert a.size >= 1 << 16 and pool.open == 2
    os.write(a.w, b"left over")
    pool.give(a, empty=False)  # still holds bytes: closed, never lent again
    pool.give(b)
    assert pool.open == 1
    assert pool.take() is b
    pool.give(b)
    pool.trim()  # b was taken since the last trim: not spare
    assert pool.open == 1
    assert pool.trim() == 1 and pool.open == 0  # unused for a whole period: closed
    pool.close()


def test_the_pool_keeps_at_most_keep_pipes():
    pool = PipePool(size=1 << 16, keep=2)
    pipes = [pool.take() for _ in range(4)]
    for p in pipes:
        pool.give(p)
    assert pool.open == 2
    pool.close()
    assert pool.open == 0
