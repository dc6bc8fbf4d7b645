"""The benchmark's like-with-like summary of bulk rounds: each proxy's rounds grouped by regime, never a
prompt round against a batched one (bench/proxy_vs_haproxy.py explains the two regimes)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from proxy_vs_haproxy import like_with_like  # noqa: E402


def test_rounds_are_compared_within_their_regime_only():
    ours = [(12.0, 10.0), (14.0, 30.0), (20.0, 95.0)]
    theirs = [(8.0, 5.0), (22.0, 99.0), (18.0, 90.0)]
    assert like_with_like(ours, theirs) == ["batched 13.0 (2) vs 8.0 (1) = x1.62", "prompt 20.0 (1) vs 20.0 (2) = x1.00"]


def test_a_regime_only_one_proxy_fell_into_has_no_ratio():
    assert like_with_like([(10.0, 80.0)], [(7.0, 20.0)]) == ["batched none vs 7.0 (1)", "prompt 10.0 (1) vs none"]
    assert like_with_like([], []) == []
