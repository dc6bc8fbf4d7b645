#!/usr/bin/env python3
"""Two or more versions of the proxy against each other, and against HAProxy, in one paired run.

A before/after of a few per cent cannot be read off two runs of bench/proxy_vs_haproxy.py: this VM's speed
swings by 20% from one minute to the next. Here every version serves at once (each its own hapair daemon,
one worker, on CPU 0, with ports of its own), next to the reference HAProxy (with splice for the bulk
workloads, as shipped for the others), and the load takes turns through them in short slices, the order
rotating every round (and reversed every other cycle), so that slow spells hit all of them alike and
none always runs right after the same other one. What is reported is CPU per unit over
all rounds (split into user and system time: the system calls are the same for all of them, the Python is
what differs), the median rate, for wrk's workloads the median p99 latency, and each as a ratio to the
first version and to HAProxy.

Its resolution is a few per cent, not better: three copies of one version (`paired.py HEAD HEAD HEAD`,
8 rounds of 3 s) differed by up to 3% in CPU per new connection and 7% per keep-alive request, each
daemon keeping a bias of its own that no ordering removes. Repeat a run before trusting a smaller gap.

    python3 bench/paired.py REV_OR_DIR ... [--workload bulk1|bulk8|keepalive|newconn|keepalive+bulk8 ...]
                                           [--rounds 8] [--duration 4] [--quota PERCENT] [--floor]

A REV_OR_DIR is a directory holding a checkout, or a git revision of this repository (exported with
`git archive` into the temporary directory). Example: `python3 bench/paired.py HEAD~1 HEAD --workload
bulk8`. --quota holds each proxy to that share of one CPU (bench/cpuquota.py), for a comparison where
the proxy is the bottleneck. keepalive+bulk8 measures keep-alive requests through a proxy that carries 8
bulk streams meanwhile (its CPU figures include the bulk). Same machine layout, backends, configuration
and clean-up as bench/proxy_vs_haproxy.py, whose parts it uses; the load runs on CPU 1. --floor adds
bench/python_floor.py, the least Python a relay can be, to the keepalive and newconn workloads: how much of
hapair's gap to HAProxy is the interpreter's floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxy_vs_haproxy as b  # noqa: E402
from cpuquota import CpuQuota, QuotaError, add_quota_option, hold, quota_period, quota_problem  # noqa: E402

#: Each version's ports: the benchmark's own, shifted by this much times its position (1, 2, ...).
PORT_STEP = 1000
#: What each workload runs, its unit, and which HAProxy it is compared to.
WORKLOADS = {
    "bulk1": ("Gbit", "haproxy-splice"),
    "bulk8": ("Gbit", "haproxy-splice"),
    "keepalive": ("request", "haproxy"),
    "newconn": ("connection", "haproxy"),
    # Keep-alive requests through a proxy that carries 8 bulk streams meanwhile: what a bulk transfer's
    # share of the loop (BULK_BYTES per event) costs the other sessions. Its CPU figures include the bulk.
    "keepalive+bulk8": ("request", "haproxy-splice"),
}
#: Seconds the bulk streams of keepalive+bulk8 run before wrk starts (and after it ends).
MIXED_LEAD = 1.5
#: The workloads bench/python_floor.py can carry (small messages), its port, and its name in the report.
FLOOR_WORKLOADS = ("keepalive", "newconn")
FLOOR_PORT = 18299
FLOOR = "python-floor"
#: Seconds before a slice that failed is run again (once).
RETRY_PAUSE = 3.0


def checkout(spec: str, into: Path) -> Path:
    if Path(spec).is_dir():
        return Path(spec).resolve()
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(b.REPO), "archive", spec], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def start_version(procs: b.Processes, tree: Path, workdir: Path, index: int) -> b.Proxy:
    """One hapair daemon running the code in `tree` (its workers too: they start from the daemon's cwd)."""
    ports = {w: p + PORT_STEP * index for w, p in b.HAPAIR_PORTS.items()}
    config = b.hapair_config(workdir, 1)
    for workload, port in b.HAPAIR_PORTS.items():
        config = config.replace(f"[{port}]", f"[{ports[workload]}]")
    path = workdir / "hapair.yaml"
    path.write_text(config)
    argv = [*b.HAPAIR_NICE, "env", f"PYTHONPATH={tree}", sys.executable, "-m", "hapair", "--config", str(path), "run"]
    proc = procs.start(f"hapair-{index}", argv, b.CPUS["proxy"], cwd=tree)
    b.wait_until(f"hapair from {tree} serving", lambda: "serving" in proc.output(), 30, proc)
    return b.Proxy(f"hapair-{index}", proc, ports)


def start_floor(procs: b.Processes) -> b.Proxy:
    script = Path(__file__).resolve().parent / "python_floor.py"
    argv = [sys.executable, str(script), str(FLOOR_PORT), str(b.NGINX_PORT)]
    proc = procs.start(FLOOR, argv, b.CPUS["proxy"])
    b.wait_until(f"{FLOOR} on {FLOOR_PORT}", lambda: b.listening(FLOOR_PORT), 10, proc)
    return b.Proxy(FLOOR, proc, {w: FLOOR_PORT for w in FLOOR_WORKLOADS})


def run_once(proxy: b.Proxy, workload: str, duration: int) -> tuple[float, float, float, float, float]:
    """(units moved, rate, user seconds, system seconds, p99 latency in ms or 0 for bulk) of one slice of
    `workload` through `proxy`."""
    u0, s0 = b.user_system_seconds(proxy.pid)
    port = proxy.ports.get(workload)
    if workload.startswith("bulk"):
        out = b.iperf(port, 1 if workload == "bulk1" else 8, duration)
        units, rate, p99 = out["gbit"], out["gbps"], 0.0
    elif workload == "keepalive+bulk8":
        argv = ["taskset", "-c", b.CPUS["load"], "iperf3", "-c", b.HOST, "-p", str(proxy.ports["bulk8"]), "-P", "8",
                "-t", str(int(duration + 2 * MIXED_LEAD + 1)), "--connect-timeout", "5000"]  # fmt: skip
        bulk = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(MIXED_LEAD)
            out = b.wrk(proxy.ports["keepalive"], duration, False)
        finally:
            bulk.wait(duration + 30)
        units, rate, p99 = out["requests"], out["rate"], out["p99"]
    else:
        out = b.wrk(port, duration, workload == "newconn")
        units, rate, p99 = out["requests"], out["rate"], out["p99"]
    u1, s1 = b.user_system_seconds(proxy.pid)
    return units, rate, u1 - u0, s1 - s0, p99


def report(workload: str, names: list[str], samples: dict[str, list[tuple]]) -> list[str]:
    unit, reference = WORKLOADS[workload]
    scale, per = (1e3, "ms") if unit == "Gbit" else (1e6, "us")
    figures = {}
    for name in names:
        units = sum(s[0] for s in samples[name])
        user, system = sum(s[2] for s in samples[name]), sum(s[3] for s in samples[name])
        figures[name] = ((user + system) * scale / units, user * scale / units, system * scale / units,
                         statistics.median(s[1] for s in samples[name]),
                         statistics.median(s[4] for s in samples[name]))  # fmt: skip
    first, ref = figures[names[0]], figures[reference]
    lines = [f"{workload}: CPU {per} per {unit} (user + system), median rate per second"
             + ("" if unit == "Gbit" else ", median p99 latency in ms") + f"; ratios to {names[0]} and to {reference}"]
    for name in names:
        cpu, user, system, rate, p99 = figures[name]
        line = (f"  {name:24s} {cpu:8.2f} ({user:.2f} + {system:.2f})  x{cpu / first[0]:.3f}  "
                f"x{cpu / ref[0]:.3f} of {reference}   rate {rate:10.2f}  x{rate / first[3]:.3f}  "
                f"x{rate / ref[3]:.3f}")  # fmt: skip
        if unit != "Gbit":
            line += f"   p99 {p99:7.3f}  x{p99 / first[4]:.3f}  x{p99 / ref[4]:.3f}"
        lines.append(line)
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("versions", nargs="+", metavar="REV_OR_DIR")
    p.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--duration", type=int, default=4)
    add_quota_option(p)
    p.add_argument("--floor", action="store_true", help=f"add bench/python_floor.py to {' and '.join(FLOOR_WORKLOADS)}")
    args = p.parse_args()
    workloads = args.workload or list(WORKLOADS)

    def extra(workload: str) -> list[str]:
        return [FLOOR] if args.floor and workload in FLOOR_WORKLOADS else []

    if os.geteuid() != 0:
        print("run as root (nginx binds as root, hapair runs at nice -5, the proxies need many descriptors)",
              file=sys.stderr)  # fmt: skip
        return 2
    problem = quota_problem(args.quota)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    b.raise_nofile()
    with tempfile.TemporaryDirectory(prefix="hapair-paired-") as tmp:
        root = Path(tmp)
        procs = b.Processes(root)
        quotas: list[CpuQuota] = []
        try:
            b.start_iperf_server(procs)
            b.start_nginx(procs, root)
            proxies, names = {}, []
            for i, spec in enumerate(args.versions, 1):
                work = root / f"v{i}"
                work.mkdir()
                name = f"{i}:{spec}"
                proxies[name] = start_version(procs, checkout(spec, root / f"tree{i}"), work, i)
                names.append(name)
            for splice in (False, True):
                proxy = b.start_haproxy(procs, root, splice, 1)
                proxies[proxy.name] = proxy
            if args.floor:
                proxies[FLOOR] = start_floor(procs)
            time.sleep(2.5)  # the first health checks
            if args.quota:
                for i, proxy in enumerate(proxies.values()):
                    hold(quotas, f"{i}-{proxy.name.split(':')[0]}", args.quota, b.tree(proxy.pid))
            samples = {w: {n: [] for n in proxies} for w in workloads}
            for r in range(args.rounds):
                for workload in workloads:
                    order = [*names, WORKLOADS[workload][1], *extra(workload)]
                    order = order[r % len(order) :] + order[: r % len(order)]  # each takes each place in turn
                    for name in order if (r // len(order)) % 2 == 0 else order[::-1]:
                        try:
                            sample = run_once(proxies[name], workload, args.duration)
                        except b.BenchError as e:
                            # Seen once in some fifteen runs under --quota: iperf3 "unable to receive control
                            # message: Connection reset by peer", which is what its server's refusal of a test
                            # looks like while it is busy with another connection (it closes the new one
                            # unread). Every proxy's health check connects to it every 2 s, and iperf3 takes
                            # each for a test ("unable to receive parameters from client" in its log).
                            print(f"{workload} through {name} failed ({e}); once more in {RETRY_PAUSE:g} s",
                                  file=sys.stderr)  # fmt: skip
                            time.sleep(RETRY_PAUSE)
                            sample = run_once(proxies[name], workload, args.duration)
                        samples[workload][name].append(sample)
                        time.sleep(b.SETTLE)
                print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)
            if args.quota:
                print(f"each proxy held to {args.quota}% of one CPU ({quota_period(args.quota)})")
            for workload in workloads:
                names_here = [*names, WORKLOADS[workload][1], *extra(workload)]
                print("\n".join(report(workload, names_here, samples[workload])))
        except QuotaError as e:
            print(f"--quota: {e}", file=sys.stderr)
            return 2
        finally:
            b.clean_up(procs, quotas)
    return 0


if __name__ == "__main__":
    sys.exit(main())
