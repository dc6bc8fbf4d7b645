#!/usr/bin/env python3
"""Where a bulk transfer's proxy CPU goes in the kernel: hapair next to HAProxy with splice, perf counters on
each proxy's worker while iperf3 runs through it.

    python3 bench/bulk_kernel.py [--streams 8] [--rounds 3] [--duration 4] [--quota PERCENT]

--quota holds each proxy to that share of one CPU, as bench/proxy_vs_haproxy.py --quota does.

Nine tenths of a bulk transfer's proxy CPU is the kernel's, and on loopback not all of it is the proxy's own
work: a packet sent on `lo` is received (IP, TCP, the receiving socket's queue, its ACK) in the sender's
context, and a sender's queued segments go out in the context of whoever frees room for them (an ACK that a
read sends, TCP Small Queues' deferred sends). So the load generator's TCP work lands on the proxy's CPU,
more or less of it depending on when the proxy reads and writes. Per round and proxy this prints the CPU per
Gbit (user + system), the share of prompt segments (bench/proxy_vs_haproxy.py explains the two regimes),
and per Gbit: the system calls (splice, of which EAGAIN, epoll_wait, all) and the packets sent in the
proxy's context (all on `lo` here: ACKs under 300 bytes, segments of 60,000 bytes or more), the unit that
work comes in. The CPU is the proxy's whole (hapair: its supervisor too, idle meanwhile); the counts are
its worker's.

Measured on 2026-11-27, 8 streams: in batched rounds, as many splices per Gbit for both (hapair 372-384,
HAProxy 379-401) and fewer system calls in all for hapair (461-474 against 629-670, HAProxy's clock reads
among them), but 1,434-1,484 packets per Gbit sent in hapair's context
against 1,143-1,192 in HAProxy's (1,195 against 947 of the 60 KB segments), and 1.9-2.7 ms of user time per
Gbit against 0.6-1.5. Across rounds the CPU per Gbit follows those packets more than anything the proxy
does: hapair 21.9 ms per Gbit with 861 packets and 49.8 with 3,517, HAProxy 15.3 with 454 and 29.0 with
1,149, in one run of this script. Then hapair stopped reading into a pipe its destination had not drained
(as HAProxy does), and in batched rounds the packets became HAProxy's: 1,128-1,221 per Gbit against
1,119-1,186, the CPU per Gbit 0.93-1.09x HAProxy's, what is left of the gap mostly the interpreter's user
time (1.3-3.2 ms per Gbit against 0.8-1.1).

Needs root and perf (Debian: linux-perf); the rest as bench/proxy_vs_haproxy.py, whose parts it uses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxy_vs_haproxy as b  # noqa: E402
from cpuquota import CpuQuota, QuotaError, add_quota_option, hold, quota_period, quota_problem  # noqa: E402

#: What is counted, each (label, perf event, filter or None), per Gbit.
COUNTS = [
    ("splice", "syscalls:sys_enter_splice", None),
    ("EAGAIN", "syscalls:sys_exit_splice", "ret == -11"),
    ("epoll_wait", "syscalls:sys_enter_epoll_wait", None),
    ("syscalls", "raw_syscalls:sys_enter", None),
    ("lo packets", "net:net_dev_xmit", None),
    ("ACKs", "net:net_dev_xmit", "len < 300"),
    ("60KB+", "net:net_dev_xmit", "len >= 60000"),
]


def perf_stat(pid: int, out: Path) -> subprocess.Popen:
    argv = ["perf", "stat", "-x,", "-o", str(out), "-p", str(pid)]
    for _, event, condition in COUNTS:
        argv += ["-e", event] + (["--filter", condition] if condition else [])
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def read_counts(perf: subprocess.Popen, out: Path) -> list[int]:
    """The counts in COUNTS' order (perf writes one line per event, in the order asked); a clear error if perf
    failed (an event or filter this kernel lacks) or left an event uncounted."""
    _, err = perf.communicate(timeout=30)
    text = out.read_text() if out.exists() else ""
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    values = [line.split(",")[0] for line in lines]
    if perf.returncode not in (0, -signal.SIGINT) or len(values) != len(COUNTS) or not all(map(str.isdigit, values)):
        raise b.BenchError(f"perf stat (exit {perf.returncode}) gave {values or 'no counts'} for "
                           f"{[label for label, _, _ in COUNTS]}: {(err or text).strip()[-400:]}")  # fmt: skip
    return [int(v) for v in values]


def one_round(proxy: b.Proxy, streams: int, duration: int, workdir: Path) -> str:
    worker = b.tree(proxy.pid)[-1]  # hapair's proxy worker; haproxy itself
    out = workdir / f"{proxy.name}.perf"
    perf = perf_stat(worker, out)
    time.sleep(0.3)  # perf attached
    before = b.tcp_ext()
    user0, system0 = b.user_system_seconds(proxy.pid)
    result = b.iperf(proxy.ports[f"bulk{1 if streams == 1 else 8}"], streams, duration)
    user1, system1 = b.user_system_seconds(proxy.pid)
    after = b.tcp_ext()
    perf.send_signal(signal.SIGINT)
    counted = read_counts(perf, out)
    gbit = result["gbit"]
    counts = ", ".join(f"{label} {n / gbit:.0f}" for (label, _, _), n in zip(COUNTS, counted))
    return (f"{proxy.name:15} {result['gbps']:6.2f} Gbit/s  CPU {1000 * (user1 - user0 + system1 - system0) / gbit:5.1f} "
            f"ms/Gbit (user {1000 * (user1 - user0) / gbit:.1f} + system {1000 * (system1 - system0) / gbit:.1f})  "
            f"prompt {b.prompt_percent(before, after):3.0f}%\n{'':17}per Gbit: {counts}")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=8, choices=(1, 8))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=4)
    add_quota_option(p)
    args = p.parse_args()
    if not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 60:
        p.error("--rounds runs from 1 to 20, --duration from 1 to 60 seconds")
    if os.geteuid() != 0:
        print("run as root (perf's tracepoints, and the proxies' descriptors)", file=sys.stderr)
        return 2
    missing = [tool for tool in ("perf", "haproxy", "iperf3", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"missing {', '.join(missing)}: run `bash tools/install-deps` (perf: apt install linux-perf)",
              file=sys.stderr)  # fmt: skip
        return 2
    problem = quota_problem(args.quota)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    b.raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="hapair-bulk-kernel-"))
    procs = b.Processes(workdir)
    quotas: list[CpuQuota] = []
    try:
        b.start_iperf_server(procs)
        proxies = [b.start_hapair(procs, workdir, 1), b.start_haproxy(procs, workdir, True, 1)]
        time.sleep(2.5)  # the first health checks
        if args.quota:
            print(f"each proxy held to {args.quota}% of one CPU ({quota_period(args.quota)})", flush=True)
            for proxy in proxies:
                hold(quotas, proxy.name, args.quota, b.tree(proxy.pid))
        for round_ in range(args.rounds):
            print(f"round {round_ + 1} of {args.rounds}, {args.streams} stream(s) of {args.duration} s:", flush=True)
            for proxy in proxies:
                print(one_round(proxy, args.streams, args.duration, workdir), flush=True)
                time.sleep(b.SETTLE)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except QuotaError as e:
        print(f"--quota: {e}", file=sys.stderr)
        return 2
    finally:
        try:
            b.clean_up(procs, quotas)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
