#!/usr/bin/env python3
"""One client address through two workers: what steering by source costs a crowd behind one NAT address.

A service with source-IP persistence steers every connection of a client address to one worker, so that
all of them meet its persistence entry; a service without persistence sends each connection to any worker
(`proxy.steering`). This runs wrk from one source address (127.0.0.1) through a hapair daemon with two
workers, each held to PERCENT of one CPU in a cgroup of its own (bench/cpuquota.py) so that the workers,
not the load generator, are the bottleneck: once with the benchmark's services as they are (persistence
on) and once with persistence off, in turns, for keep-alive requests and new connections. It prints each
run's rate, p99 and each worker's CPU seconds, then the median rate without persistence over the median
with it.

    python3 bench/one_source.py [--rounds 2] [--duration 4] [--quota 25]

Same machine layout, backends, configuration and clean-up as bench/proxy_vs_haproxy.py, whose parts it
uses; run as root from the repository.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxy_vs_haproxy as b  # noqa: E402
from cpuquota import CpuQuota, QuotaError, add_quota_option, close_all, hold, quota_problem  # noqa: E402

#: (workload, Connection: close) run through each daemon.
LOADS = (("keepalive", False), ("newconn", True))
MODES = ("source_ip", "none")


def run_daemon(mode: str, seconds: int, percent: int, out: dict) -> None:
    """Starts a daemon with persistence `mode`, runs each load once, prints its figures and records its rate
    in `out`."""
    workdir = Path(tempfile.mkdtemp(prefix="hapair-one-source-"))
    os.chmod(workdir, 0o755)
    procs = b.Processes(workdir)
    quotas: list[CpuQuota] = []
    try:
        b.start_nginx(procs, workdir)
        proxy = b.start_hapair(procs, workdir, 2, persistence=mode)
        time.sleep(2.5)  # the first health checks
        workers = b.tree(proxy.pid)[1:]
        for i, pid in enumerate(workers):
            hold(quotas, f"one-source-worker{i}", percent, [pid])
        for workload, close in LOADS:
            before = [b.cpu_seconds(pid) for pid in workers]
            r = b.wrk(proxy.ports[workload], seconds, close)
            cpu = [b.cpu_seconds(pid) - t for pid, t in zip(workers, before)]
            out.setdefault((mode, workload), []).append(r["rate"])
            print(f"persistence {mode:9} {workload:9} {r['rate']:9.0f}/s  p99 {r['p99']:7.2f} ms  workers' CPU s "
                  + " ".join(f"{c:.2f}" for c in cpu), flush=True)  # fmt: skip
            time.sleep(b.SETTLE)
    finally:
        close_all(quotas)
        procs.stop_all()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="daemons of each kind, in turns (default 2)")
    p.add_argument("--duration", type=int, default=4, help="seconds per load (default 4)")
    add_quota_option(p, "hold each worker to PERCENT of one CPU (default 25)")
    args = p.parse_args()
    percent = args.quota or 25
    if not 1 <= args.rounds <= 10 or not 1 <= args.duration <= 60:
        p.error("--rounds runs from 1 to 10, --duration from 1 to 60 seconds")
    problem = quota_problem(percent)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    b.raise_nofile()
    rates: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for mode in MODES:
                run_daemon(mode, args.duration, percent, rates)
    except QuotaError as e:
        print(f"--quota: {e}", file=sys.stderr)
        return 2
    for workload, _ in LOADS:
        steered, spread = (statistics.median(rates[(mode, workload)]) for mode in MODES)
        print(f"{workload}: one source without persistence x{spread / steered:.2f} the rate with it "
              f"({spread:.0f} against {steered:.0f} per second, medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
