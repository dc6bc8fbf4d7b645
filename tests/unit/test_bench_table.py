"""The benchmark's table: a row for every figure of the workloads that ran, "error" where a proxy has no
value, and no rows for the workloads --only left out."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from proxy_vs_haproxy import table  # noqa: E402


def rows(lines: list[str]) -> dict[tuple[str, str], list[str]]:
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.split("|")]
        out[(cells[0], cells[1])] = cells[2:]
    return out


def test_only_the_workloads_run_have_rows_and_a_missing_value_reads_error():
    results = {
        "hapair": {("keep-alive", "requests/s"): 20000.0},
        "haproxy": {("keep-alive", "requests/s"): 25000.0},
        "haproxy-splice": {},
    }
    got = rows(table(results, ["keep-alive"]))
    assert {workload for workload, _ in got} == {"keep-alive"}
    assert got[("keep-alive", "requests/s")][:5] == ["20000", "25000", "error", "0.80", "n/a"]
    assert got[("keep-alive", "latency p99 ms")][:3] == ["error", "error", "error"]


def test_a_full_run_has_every_figure():
    got = rows(table({"hapair": {}, "haproxy": {}, "haproxy-splice": {}},
                     ["idle memory", "bulk 1 stream", "bulk 8 streams", "keep-alive", "new connections"]))
    assert len(got) == 17
