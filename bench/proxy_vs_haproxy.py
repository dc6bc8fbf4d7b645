#!/usr/bin/env python3
"""hapair against HAProxy: the same loopback workloads through each, side by side in one run.

What it measures, each workload through the hapair daemon, through Debian's haproxy as shipped (mode tcp,
balance roundrobin) and through haproxy with its own zero-copy (`option splice-request`, `option
splice-response`, `tune.pipesize 1048576`), with the same parameters. (haproxy 2.6's `option splice-auto`
never spliced in these workloads: strace showed no splice call, and its CPU per Gbit was plain haproxy's.)

  bulk 1 stream   iperf3 -c ... -t D -J            Gbit/s received, proxy CPU ms per Gbit
  bulk 8 streams  iperf3 -c ... -t D -P 8 -J       the same
  keep-alive      wrk -t1 -c50 -dD --latency       req/s, p50, p99, proxy CPU us per request
  new conns       the same with Connection: close  req/s, p50, p99, proxy CPU us per connection
  idle memory     5,000 idle connections held      proxy RSS growth in KiB per connection

How:
  * Everything stays on 127.0.0.1, ports 18101-18203. Nothing is sent anywhere else.
  * --cores 1 (the default): the proxy under test runs on CPU 0 (`taskset -c 0`; hapair with one worker,
    haproxy with one thread); the backends (iperf3 server, nginx with a 1 KiB body, a Python asyncio
    server that holds connections) and the load generators (iperf3 client, wrk, the idle-connection
    client) run on CPU 1. --cores 2: hapair with two workers and haproxy with two threads, all of it
    sharing both CPUs, to show the scaling (the load generator competes for the same cores).
  * --sources N (default 1 with --cores 1, 16 with --cores 2): the load generators' connections come
    from 127.0.0.2 ... 127.0.0.N+1 (an LD_PRELOAD shim, bench/srcspread, built with gcc), as from many
    clients. hapair steers each source address to one worker, so one source would use one core.
  * hapair runs as the real daemon (`python3 -m hapair --config FILE run`), at nice -5 as its systemd unit
    runs it (so its workers run at 0, as haproxy and the load generators do), one virtual service per
    workload port with source-IP persistence and a connect health check every 2 s. haproxy runs in the
    foreground (`-db`), one `listen` per workload with one server, checked every 2 s as well. Both
    proxies run for the whole benchmark; each workload goes through hapair, then through haproxy.
  * Proxy CPU is utime+stime from /proc/PID/stat of the proxy and its descendants (hapair's workers),
    read before and after each run; memory is VmRSS from /proc/PID/status, summed the same way. The idle-memory test runs first, on freshly started proxies, so that memory
    freed by the other workloads cannot hide the cost of new connections.
  * The notes give, per workload, the share of all CPUs' time that the VM's host took away (steal in
    /proc/stat) while the load ran: the rounds of a run with a lot of it are not to be trusted.
  * Bulk CPU per Gbit has two regimes, on this machine and for both proxies, and a round falls into one
    or the other: on loopback, the kernel's TCP work for a segment runs in the process whose send or
    read set it off, so how much of the senders' and receivers' work lands on the proxy's CPU depends
    on timing. "prompt": the proxy reads each segment as it comes (the kernel's header-predicted fast
    path), gets more throughput and pays about twice the CPU per Gbit; "batched": segments pile up
    behind a busy read (coalesced in the socket's backlog) and each read takes more. One haproxy-splice
    run measured 7 ms per Gbit batched and 16 prompt. The notes list each bulk round's CPU per Gbit with
    its share of prompt segments (TcpExt TCPHPHits against TCPBacklogCoalesce, /proc/net/netstat,
    counted over the whole machine), and then hapair against haproxy-splice regime by regime (the
    median of each proxy's rounds in it): compare rounds of the same regime.
  * --quota PERCENT: each proxy's processes are put in a cgroup of their own with a CPU quota of PERCENT
    of one CPU (bench/cpuquota.py), for a run where the proxy is the bottleneck. Without it, bulk
    throughput is the load generators' (their CPU is 95-97% busy, a proxy's 50-60%), a tie that swings
    by 15% from round to round; held to the quota, it is what each proxy makes of the CPU it has, and
    the busy % figures read about PERCENT (less in a round of the cheaper bulk regime, which remains).
  * --twin adds a fourth proxy, a second haproxy as shipped (same program, same configuration, ports of
    its own), and judges it against the first by the same targets: how far apart two identical proxies
    land in this run, the noise a verdict on hapair has to be read against. --twin-per-thread gives the
    twin one listening socket per thread (a `bind ... thread N` line each, SO_REUSEPORT), so that each
    thread accepts from a queue of its own, as each of hapair's workers does, instead of HAProxy's
    multi-queue accept handing each connection to the least loaded thread.
  * Both keep source-IP persistence (haproxy: a stick table on src, 60 min, as hapair's services).
    hapair logs one line per session (its design); haproxy is configured without logging.

Run, as root, from the repository (`bash tools/install-deps` installs haproxy, iperf3, wrk, nginx):

    python3 bench/proxy_vs_haproxy.py [--duration N] [--rounds N] [--quick] [--keep] [--cores 1|2] [--workers N]
                                      [--only WORKLOAD ...] [--quota PERCENT] [--twin | --twin-per-thread]

--duration is the length of each timed workload and round in seconds (default 4), --rounds how many rounds
(default 3: about 4 minutes in all);
--quick is a one-minute smoke run (2 s workloads); --keep leaves the temporary directory (configs and
logs of every process) in place; --workers overrides hapair's worker count (0: the proxy in the supervisor
process); --only runs the named workloads; --quota holds each proxy to that share of one CPU (above). The
table goes to stdout and to bench/results/proxy-<timestamp>.txt.
Every process the script starts is tracked by PID and stopped in a `finally`, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cpuquota import CpuQuota, QuotaError, add_quota_option, close_all, hold, quota_period, quota_problem

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
HOST = "127.0.0.1"
#: Where the proxies and the load run: set by --cores (1: proxy on CPU 0, load on CPU 1; 2: all share both).
CPUS = {"proxy": "0", "load": "1"}
CLK_TCK = os.sysconf("SC_CLK_TCK")

WORKLOADS = ("bulk1", "bulk8", "keepalive", "newconn", "idle")
HAPAIR_PORTS = {w: 18101 + i for i, w in enumerate(WORKLOADS)}
HAPROXY_PORTS = {w: 18111 + i for i, w in enumerate(WORKLOADS)}
SPLICE_PORTS = {w: 18121 + i for i, w in enumerate(WORKLOADS)}
TWIN_PORTS = {w: 18131 + i for i, w in enumerate(WORKLOADS)}
#: The proxies compared, in the table's column order: haproxy as shipped, then with its own zero-copy.
PROXIES = ("hapair", "haproxy", "haproxy-splice")
#: --twin's second haproxy as shipped, judged against the first (not a column of the table).
TWIN = "haproxy-twin"
IPERF_PORT, NGINX_PORT, HOLDER_PORT = 18201, 18202, 18203
BACKEND_PORTS = {"bulk1": IPERF_PORT, "bulk8": IPERF_PORT, "keepalive": NGINX_PORT, "newconn": NGINX_PORT,
                 "idle": HOLDER_PORT}  # fmt: skip

IDLE_CONNECTIONS = 5000
SETTLE = 1.0  # seconds of quiet between two runs

#: (workload, metric, which way is better, number format), in the order the table prints them.
FIGURES = [
    ("bulk 1 stream", "throughput Gbit/s", "higher", "{:.2f}"),
    ("bulk 1 stream", "proxy CPU ms per Gbit", "lower", "{:.1f}"),
    ("bulk 1 stream", "proxy CPU busy %", "info", "{:.0f}"),
    ("bulk 8 streams", "throughput Gbit/s", "higher", "{:.2f}"),
    ("bulk 8 streams", "proxy CPU ms per Gbit", "lower", "{:.1f}"),
    ("bulk 8 streams", "proxy CPU busy %", "info", "{:.0f}"),
    ("keep-alive", "requests/s", "higher", "{:.0f}"),
    ("keep-alive", "latency p50 ms", "lower", "{:.3f}"),
    ("keep-alive", "latency p99 ms", "lower", "{:.3f}"),
    ("keep-alive", "proxy CPU us per request", "lower", "{:.1f}"),
    ("keep-alive", "proxy CPU busy %", "info", "{:.0f}"),
    ("new connections", "connections/s", "higher", "{:.0f}"),
    ("new connections", "latency p50 ms", "lower", "{:.3f}"),
    ("new connections", "latency p99 ms", "lower", "{:.3f}"),
    ("new connections", "proxy CPU us per connection", "lower", "{:.1f}"),
    ("new connections", "proxy CPU busy %", "info", "{:.0f}"),
    ("idle memory", "KiB per idle connection", "lower", "{:.2f}"),
]


class BenchError(RuntimeError):
    pass


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so that the `finally` cleanup runs as it does on Ctrl-C."""


# --- processes ----------------------------------------------------------------------------------------


def raise_nofile() -> None:
    """RLIMIT_NOFILE soft = hard (20000 here): every child inherits it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if this script dies without cleaning up (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class Processes:
    """Everything the benchmark starts, each in its own session and process group, stopped by PID."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], cpu: str, pipes: bool = False, cwd: Path = REPO) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                ["taskset", "-c", cpu, *argv], cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else out, stderr=out, text=pipes,
            )  # fmt: skip
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 5.0) -> None:
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout)
        try:  # what the leader left behind in its group (nginx's worker)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for stream in (proc.popen.stdin, proc.popen.stdout):
            if stream is not None:
                stream.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def read_line(proc: Proc, timeout: float) -> str:
    """One line from a piped child's stdout, waiting at most `timeout` seconds."""
    ready, _, _ = select.select([proc.popen.stdout], [], [], timeout)
    if not ready:
        raise BenchError(f"{proc.name}: no answer within {timeout:g}s")
    line = proc.popen.stdout.readline()
    if not line:
        raise BenchError(f"{proc.name} exited ({proc.popen.poll()}): {proc.output()[-500:]}")
    return line.strip()


def wait_until(what: str, ready: Callable[[], bool], timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and not proc.alive():
            raise BenchError(f"{proc.name} exited ({proc.popen.returncode}) waiting for {what}:\n{proc.output()[-2000:]}")
        time.sleep(0.1)
    raise BenchError(f"timed out after {timeout:g}s waiting for {what}")


# --- what the kernel says -----------------------------------------------------------------------------


def tcp_sockets(state: str) -> list[tuple[int, int]]:
    """(local port, remote port) of the IPv4 sockets in `state` (hex code: 0A listen, 01 established)."""
    result = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == state:
                result.append((int(parts[1].split(":")[1], 16), int(parts[2].split(":")[1], 16)))
    return result


def listening(port: int) -> bool:
    return any(local == port for local, _ in tcp_sockets("0A"))


def established_to(port: int) -> int:
    """Established connections whose remote end is `port`: a proxy's connections to that backend."""
    return sum(1 for _, remote in tcp_sockets("01") if remote == port)


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (hapair's proxy workers; haproxy and taskset exec in place)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def user_system_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of `pid` and its live descendants."""
    user = system = 0.0
    for p in tree(pid):
        try:
            fields = _stat(p)
        except OSError:
            continue
        user += int(fields[11]) / CLK_TCK  # utime, stime: the 14th and 15th
        system += int(fields[12]) / CLK_TCK
    return user, system


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its live descendants."""
    return sum(user_system_seconds(pid))


def host_ticks() -> tuple[int, int]:
    """(stolen, total) clock ticks of all CPUs so far, from /proc/stat: the time a VM's host gave to
    others is what makes one round slower than the next, and the notes report it per workload."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return fields[7], sum(fields)


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` and its descendants."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    if not total:
        raise BenchError(f"no VmRSS for pid {pid}")
    return total


# --- backends -----------------------------------------------------------------------------------------


def start_iperf_server(procs: Processes) -> Proc:
    proc = procs.start("iperf3-server", ["iperf3", "-s", "-B", HOST, "-p", str(IPERF_PORT)], CPUS["load"])
    wait_until(f"iperf3 on {IPERF_PORT}", lambda: listening(IPERF_PORT), 10, proc)
    return proc


def start_nginx(procs: Processes, workdir: Path) -> Proc:
    base = workdir / "nginx"
    (base / "tmp").mkdir(parents=True)
    body = "x" * 1024
    conf = base / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        daemon off;
        worker_processes 1;
        pid {base}/nginx.pid;
        error_log {base}/error.log;
        events {{ worker_connections 8192; }}
        http {{
            access_log off;
            client_body_temp_path {base}/tmp/body;
            proxy_temp_path {base}/tmp/proxy;
            fastcgi_temp_path {base}/tmp/fastcgi;
            uwsgi_temp_path {base}/tmp/uwsgi;
            scgi_temp_path {base}/tmp/scgi;
            keepalive_requests 10000000;
            keepalive_timeout 300s;
            server {{
                listen {HOST}:{NGINX_PORT};
                location = / {{ default_type text/plain; return 200 "{body}"; }}
            }}
        }}
    """))
    proc = procs.start("nginx", ["nginx", "-p", str(base), "-c", str(conf), "-e", f"{base}/error.log"], CPUS["load"])
    wait_until(f"nginx on {NGINX_PORT}", lambda: listening(NGINX_PORT), 10, proc)
    return proc


def start_holder(procs: Processes) -> Proc:
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", "holder", "--port", str(HOLDER_PORT)]
    proc = procs.start("idle-holder", argv, CPUS["load"])
    wait_until(f"the idle holder on {HOLDER_PORT}", lambda: listening(HOLDER_PORT), 10, proc)
    return proc


# --- the proxies --------------------------------------------------------------------------------------


@dataclass
class Proxy:
    name: str
    proc: Proc
    ports: dict[str, int]
    rss_start: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid


def hapair_config(workdir: Path, workers: int, persistence: str = "source_ip") -> str:
    """One service per workload, each with `persistence` (bench/one_source.py turns it off)."""
    services = []
    for workload in WORKLOADS:
        services.append(textwrap.dedent(f"""\
            - label: {workload}
              ip: {HOST}
              ports: [{HAPAIR_PORTS[workload]}]
              balance: weighted_round_robin
              persistence: {{mode: {persistence}, timeout: 60m}}
              health_check: {{kind: connect, interval: 2s}}
              timeouts: {{client: 1h, server: 1h}}
              real_servers:
                - {{label: backend, ip: {HOST}, port: {BACKEND_PORTS[workload]}}}
        """))
    return (
        f"node:\n  name: bench\n  state_dir: {workdir}\n  control_socket: {workdir}/ctl.sock\n  workers: {workers}\n"
        "cluster:\n  virtual_services:\n" + textwrap.indent("".join(services), "    ")
    )


#: hapair starts as its systemd unit starts it (Nice=-5): its supervisor a step ahead of the load, its workers
#: (5 nicer than the supervisor) level with it and with haproxy. Started at 0, the workers would run at 5
#: and get a third of a load generator's share of a core they share with it (--cores 2). With --workers 0
#: the proxy runs in the supervisor, at -5 as in production. Needs root, as the rest of the benchmark does.
HAPAIR_NICE = ["nice", "-n", "-5"]


def start_hapair(procs: Processes, workdir: Path, workers: int, persistence: str = "source_ip") -> Proxy:
    path = workdir / "hapair.yaml"
    path.write_text(hapair_config(workdir, workers, persistence))
    proc = procs.start("hapair", [*HAPAIR_NICE, sys.executable, "-m", "hapair", "--config", str(path), "run"],
                       CPUS["proxy"])  # fmt: skip

    def all_listening() -> bool:
        out = proc.output()
        return all(f"{w} listening" in out for w in WORKLOADS) and out.count("serving") >= workers

    wait_until("hapair's '<label> listening' and 'worker ... serving' lines", all_listening, 30, proc)
    return Proxy("hapair", proc, HAPAIR_PORTS)


def haproxy_config(ports: dict[str, int], splice: bool, threads: int, per_thread: bool = False) -> str:
    # maxconn 12000 asks for 24,000 descriptors, above the machine's hard limit of 20,000, which haproxy
    # 2.6 refuses by default (strict-limits); the 5,000 idle connections need 10,000, so run with less.
    text = textwrap.dedent("""\
        global
            maxconn 12000
            nbthread {threads}
            no strict-limits
            {tune}

        defaults
            mode tcp
            timeout connect 4s
            timeout client 1h
            timeout server 1h
            {splice}
        """).format(threads=threads, tune="tune.pipesize 1048576" if splice else "",
                    splice="option splice-request\n    option splice-response" if splice else "")
    for workload in WORKLOADS:
        # per_thread: a listening socket per thread, each thread accepting from its own queue (--twin-per-thread)
        suffixes = [f" thread {t}" for t in range(1, threads + 1)] if per_thread else [""]
        lines = [*(f"bind {HOST}:{ports[workload]}{suffix}" for suffix in suffixes), "balance roundrobin", "stick-table type ip size 200k expire 60m", "stick on src",
                 f"server backend {HOST}:{BACKEND_PORTS[workload]} check inter 2s"]  # fmt: skip
        text += f"\nlisten {workload}\n" + "".join(f"    {line}\n" for line in lines)
    return text


def start_haproxy(procs: Processes, workdir: Path, splice: bool, threads: int, twin: bool = False,
                  per_thread: bool = False) -> Proxy:  # fmt: skip
    name, ports = ("haproxy-splice", SPLICE_PORTS) if splice else (TWIN, TWIN_PORTS) if twin else ("haproxy",
                                                                                                 HAPROXY_PORTS)
    path = workdir / f"{name}.cfg"
    path.write_text(haproxy_config(ports, splice, threads, per_thread))
    proc = procs.start(name, ["haproxy", "-db", "-f", str(path)], CPUS["proxy"])
    wait_until(f"{name}'s listeners", lambda: all(listening(p) for p in ports.values()), 15, proc)
    return Proxy(name, proc, ports)


# --- workloads ----------------------------------------------------------------------------------------


@dataclass
class Measured:
    value: object
    cpu: float  # proxy CPU seconds
    wall: float


def measure(proxy: Proxy, run: Callable[[], object]) -> Measured:
    if not proxy.proc.alive():
        raise BenchError(f"{proxy.name} is not running (exit {proxy.proc.popen.returncode})")
    cpu0, t0 = cpu_seconds(proxy.pid), time.monotonic()
    value = run()
    cpu1, t1 = cpu_seconds(proxy.pid), time.monotonic()
    return Measured(value, cpu1 - cpu0, t1 - t0)


#: LD_PRELOAD environment that spreads the load generators' connections over source addresses (--sources).
LOAD_ENV: dict[str, str] = {}


def build_srcspread(workdir: Path, sources: int) -> None:
    """Compiles bench/srcspread/srcspread.c (gcc) and has every load generator preload it."""
    lib = workdir / "srcspread.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(REPO / "bench/srcspread/srcspread.c"),
                    "-ldl"], check=True)  # fmt: skip
    LOAD_ENV.update(LD_PRELOAD=str(lib), SRCSPREAD=str(sources))


def run_load(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["taskset", "-c", CPUS["load"], *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **LOAD_ENV})  # fmt: skip


def iperf(port: int, streams: int, duration: int) -> dict:
    argv = ["iperf3", "-c", HOST, "-p", str(port), "-t", str(duration), "-P", str(streams), "-J",
            "--connect-timeout", "5000"]  # fmt: skip
    result = run_load(argv, duration + 30)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 exit {result.returncode}: {(result.stdout + result.stderr)[-500:]}")
    if "error" in report:
        raise BenchError(f"iperf3: {report['error']}")
    received = report["end"]["sum_received"]
    return {"gbps": received["bits_per_second"] / 1e9, "gbit": received["bytes"] * 8 / 1e9}


def tcp_ext() -> dict[str, int]:
    """The kernel's TcpExt counters (/proc/net/netstat: a line of names, then a line of values)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return dict(zip(names.split()[1:], map(int, values.split()[1:])))
    return {}


#: A bulk round with at least this share of prompt segments is counted as prompt, below it as batched.
PROMPT_SHARE = 50.0


def prompt_percent(before: dict[str, int], after: dict[str, int]) -> float:
    """The share of segments taken promptly between two `tcp_ext()` readings (nan if none came)."""
    prompt, batched = (after.get(k, 0) - before.get(k, 0) for k in ("TCPHPHits", "TCPBacklogCoalesce"))
    return 100 * prompt / (prompt + batched) if prompt + batched else float("nan")


def like_with_like(ours: list[tuple[float, float]], theirs: list[tuple[float, float]]) -> list[str]:
    """Per regime, the median CPU per Gbit of each proxy's rounds in it and their ratio, from each round's
    (CPU ms per Gbit, prompt segments %): the comparison that a median over rounds of mixed regimes
    blurs. A regime only one proxy fell into gets its median and no ratio."""
    parts = []
    for regime in ("batched", "prompt"):
        a, b = ([cpu for cpu, share in rounds if (share >= PROMPT_SHARE) == (regime == "prompt")]
                for rounds in (ours, theirs))  # fmt: skip
        if not a and not b:
            continue
        ma, mb = (statistics.median(x) if x else None for x in (a, b))
        text = " vs ".join(f"{m:.1f} ({len(x)})" if m is not None else "none" for m, x in ((ma, a), (mb, b)))
        ratio = f" = x{ma / mb:.2f}" if ma is not None and mb else ""
        parts.append(f"{regime} {text}{ratio}")
    return parts


def bulk(proxy: Proxy, workload: str, streams: int, duration: int) -> dict[str, float]:
    before = tcp_ext()
    m = measure(proxy, lambda: iperf(proxy.ports[workload], streams, duration))
    after = tcp_ext()
    return {
        "prompt segments %": prompt_percent(before, after),
        "throughput Gbit/s": m.value["gbps"],
        "proxy CPU ms per Gbit": m.cpu * 1000 / m.value["gbit"] if m.value["gbit"] else float("nan"),
        "proxy CPU busy %": 100 * m.cpu / m.wall,
    }


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return float(number) * _UNITS[unit]


def wrk(port: int, duration: int, close: bool) -> dict:
    argv = ["wrk", "-t1", "-c50", f"-d{duration}s", "--timeout", "5s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    result = run_load([*argv, f"http://{HOST}:{port}/"], duration + 30)
    out = result.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if result.returncode != 0 or not rate or not total:
        raise BenchError(f"wrk exit {result.returncode}: {(out + result.stderr)[-500:]}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rate": float(rate.group(1)), "requests": int(total.group(1)),
        "p50": _ms(latency["50"]), "p99": _ms(latency["99"]),
        "errors": ", ".join(filter(None, [errors and f"socket errors: {errors.group(1)}",
                                          non2xx and f"non-2xx responses: {non2xx.group(1)}"])),
    }  # fmt: skip


def http(proxy: Proxy, workload: str, duration: int, close: bool) -> dict[str, float]:
    m = measure(proxy, lambda: wrk(proxy.ports[workload], duration, close))
    r = m.value
    if r["errors"]:
        proxy.notes.append(f"{workload}: wrk reported {r['errors']}")
    per = "connection" if close else "request"
    return {
        "connections/s" if close else "requests/s": r["rate"],
        "latency p50 ms": r["p50"],
        "latency p99 ms": r["p99"],
        f"proxy CPU us per {per}": m.cpu * 1e6 / r["requests"] if r["requests"] else float("nan"),
        "proxy CPU busy %": 100 * m.cpu / m.wall,
    }


def idle(procs: Processes, proxy: Proxy, count: int) -> dict[str, float]:
    """Opens `count` connections through the proxy, waits until the proxy holds them all (its own
    connections to the holder established), and divides its RSS growth by `count`."""
    if not proxy.proc.alive():
        raise BenchError(f"{proxy.name} is not running (exit {proxy.proc.popen.returncode})")
    wait_until("no leftover connections to the idle holder", lambda: established_to(HOLDER_PORT) == 0, 30)
    before = rss_kib(proxy.pid)
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", "client",
            "--port", str(proxy.ports["idle"]), "--count", str(count)]  # fmt: skip
    client = procs.start(f"idle-client-{proxy.name}", argv, CPUS["load"], pipes=True)
    try:
        t0 = time.monotonic()
        answer = read_line(client, 90)
        opened = int(answer.split()[1])
        if opened < count:
            proxy.notes.append(f"idle: the client opened only {opened} of {count} connections ({answer})")
        wait_until(f"{proxy.name} to hold {opened} connections to the idle holder",
                   lambda: established_to(HOLDER_PORT) >= opened, 60, proxy.proc)  # fmt: skip
        held_after = time.monotonic() - t0
        time.sleep(1.0)  # let the allocator settle
        during = rss_kib(proxy.pid)
        client.popen.stdin.write("close\n")
        client.popen.stdin.flush()
        read_line(client, 30)
        t1 = time.monotonic()
        wait_until(f"{proxy.name} to close its connections to the idle holder",
                   lambda: established_to(HOLDER_PORT) == 0, 60, proxy.proc)  # fmt: skip
        closed_after = time.monotonic() - t1
    finally:
        procs.stop(client)
    time.sleep(1.0)
    after = rss_kib(proxy.pid)
    proxy.notes.append(
        f"idle: RSS {before / 1024:.1f} MiB before, {during / 1024:.1f} MiB holding {opened}, "
        f"{after / 1024:.1f} MiB after closing; all held {held_after:.1f}s after the first connect, "
        f"all closed {closed_after:.1f}s after the client closed"
    )
    return {"KiB per idle connection": (during - before) / opened}


# --- the run ------------------------------------------------------------------------------------------


def machine_header(args: argparse.Namespace, idle_count: int) -> list[str]:
    def first_line(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return [
        f"hapair vs HAProxy, loopback, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {os.cpu_count()} CPUs ({model}), kernel {platform.release()}, "
        f"RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}",
        f"haproxy: {first_line(['haproxy', '-v'])}",
        f"python: {platform.python_version()}; {first_line(['iperf3', '--version'])}; {first_line(['wrk', '-v'])}; "
        f"{first_line(['nginx', '-v'])}",
        f"parameters: {args.rounds} rounds of {args.duration}s per timed workload (medians), {idle_count} idle "
        f"connections; proxies on CPU "
        f"{CPUS['proxy']} (hapair {args.cores} worker(s), haproxy nbthread {args.cores}), backends and load "
        f"generators on CPU {CPUS['load']}, load from {args.sources} source address(es)"
        + (f"; each proxy held to {args.quota}% of one CPU (a cgroup CPU quota, {quota_period(args.quota)})"
           if args.quota else ""),
    ]


def table(results: dict[str, dict[tuple[str, str], float]], ran: list[str]) -> list[str]:
    """The figures of the workloads in `ran` (not those --only left out: a row of "error" would say they
    failed); a figure a proxy has no value for reads "error"."""
    head = ("workload", "metric", *PROXIES, "hapair/haproxy", "hapair/splice", "better")
    rows = []
    for workload, metric, better, fmt in FIGURES:
        if workload not in ran:
            continue
        values = [results[p].get((workload, metric)) for p in PROXIES]
        cells = ["error" if v is None else fmt.format(v) for v in values]
        ratios = ["n/a" if values[0] is None or v is None or v == 0 else f"{values[0] / v:.2f}" for v in values[1:]]
        note = {"higher": "higher is better", "lower": "lower is better", "info": "(information)"}[better]
        rows.append((workload, metric, *cells, *ratios, note))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    last = len(head) - 1

    def line(row: tuple) -> str:
        cells = [str(c).ljust(w) if i < 2 or i == last else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return " | ".join(cells).rstrip()

    return [line(head), "-+-".join("-" * w for w in widths), *[line(r) for r in rows]]


#: The performance issue's targets: hapair's figure over each reference's, at most or at least `bound`.
#: Bulk is held to HAProxy with its own zero-copy for CPU and to both for throughput; the rest to HAProxy as
#: shipped (haproxy-splice also splices small messages, which costs it more per request).
TARGETS = [
    ("bulk 1 stream", "proxy CPU ms per Gbit", ("haproxy-splice",), "at most", 1.2),
    ("bulk 1 stream", "throughput Gbit/s", ("haproxy", "haproxy-splice"), "at least", 1.0),
    ("bulk 8 streams", "proxy CPU ms per Gbit", ("haproxy-splice",), "at most", 1.2),
    ("bulk 8 streams", "throughput Gbit/s", ("haproxy", "haproxy-splice"), "at least", 1.0),
    ("keep-alive", "proxy CPU us per request", ("haproxy",), "at most", 1.2),
    ("keep-alive", "requests/s", ("haproxy",), "at least", 0.95),
    ("new connections", "proxy CPU us per connection", ("haproxy",), "at most", 1.3),
    ("new connections", "connections/s", ("haproxy",), "at least", 0.8),
    ("new connections", "latency p99 ms", ("haproxy",), "at most", 1.3),
    ("idle memory", "KiB per idle connection", ("haproxy",), "at most", 1.0),
]


def verdict(results: dict[str, dict[tuple[str, str], float]], ran: list[str], subject: str = "hapair",
            against: str | None = None) -> list[str]:  # fmt: skip
    """Each target of the workloads in `ran`, met or missed by this run's medians, and a count: so that a
    run says what it showed, and a note cannot round a 0.94 up. A figure missing on either side is a miss.
    `subject` is the proxy judged; `against`, if given, is the one reference of every target (--twin)."""
    lines, missed = [], []
    for workload, metric, refs, way, bound in TARGETS:
        if workload not in ran:
            continue
        ours = results[subject].get((workload, metric))
        ratios, parts = [], []
        for ref in refs if against is None else (against,):
            theirs = results[ref].get((workload, metric))
            if ours is None or not theirs:
                ratios.append(None)
                parts.append(f"no figure for {subject if ours is None else ref}")
            else:
                ratios.append(ours / theirs)
                parts.append(f"x{ours / theirs:.2f} {ref}")
        met = all(r is not None and (r <= bound if way == "at most" else r >= bound) for r in ratios)
        mark = "met   " if met else "MISSED"
        lines.append(f"  {mark} {workload}, {metric}: {', '.join(parts)} (target: {way} x{bound:g})")
        if not met:
            missed.append(f"{workload} {metric}")
    head = f"targets: {len(lines) - len(missed)} of {len(lines)} met" + (f"; missed: {'; '.join(missed)}" if missed
                                                                          else "")  # fmt: skip
    return [head, *lines]


def hapair_findings(hapair: Proxy, workdir: Path) -> list[str]:
    """What hapair's own log and status say: errors, warnings, how sessions ended, sessions left open."""
    text = hapair.proc.output()
    lines = text.splitlines()
    findings = []
    bad = [l for l in lines if re.search(r"#(error|critical|warn)\]|Traceback|Unhandled", l)]
    findings.append(f"hapair log: {len(lines)} lines, {len(bad)} warning/error lines")
    findings += [f"  {l[:200]}" for l in bad[:10]]
    reasons: dict[str, int] = {}
    for l in lines:
        m = re.search(r" in=\d+ out=\d+ [\d.]+s (.*)$", l)
        if m:
            reasons[m.group(1)] = reasons.get(m.group(1), 0) + 1
    if reasons:
        findings.append("hapair sessions ended: " + ", ".join(f"{n} {r}" for r, n in
                                                                sorted(reasons.items(), key=lambda kv: -kv[1])[:6]))
    if hapair.proc.alive():
        r = subprocess.run([sys.executable, "-m", "hapair", "--socket", str(workdir / "ctl.sock"), "--json", "status"],
                           cwd=REPO, capture_output=True, text=True, timeout=20)  # fmt: skip
        try:
            status = json.loads(r.stdout)
            open_now = {vs["label"]: vs["current"] for vs in status["virtual_services"] if vs["current"]}
            down = [f"{vs['label']}/{s['label']}" for vs in status["virtual_services"] for s in vs["servers"]
                    if s["health"] != "up"]  # fmt: skip
            findings.append(f"hapair status at the end: sessions still open {open_now or 'none'}, "
                            f"servers down {down or 'none'} (exit {r.returncode})")  # fmt: skip
        except (json.JSONDecodeError, KeyError):
            findings.append(f"hapair status failed (exit {r.returncode}): {(r.stdout + r.stderr)[-300:]}")
    else:
        findings.append(f"hapair EXITED with status {hapair.proc.popen.returncode}; log tail:")
        findings += [f"  {l}" for l in lines[-20:]]
    return findings


def run_benchmark(args: argparse.Namespace, workdir: Path) -> list[str]:
    procs = Processes(workdir)
    started = time.monotonic()
    quotas: list[CpuQuota] = []
    try:
        start_iperf_server(procs)
        start_nginx(procs, workdir)
        start_holder(procs)
        workers = args.cores if args.workers is None else args.workers
        proxies = [start_hapair(procs, workdir, workers), start_haproxy(procs, workdir, False, args.cores),
                   start_haproxy(procs, workdir, True, args.cores)]  # fmt: skip
        if args.twin:
            proxies.append(start_haproxy(procs, workdir, False, args.cores, twin=True, per_thread=args.twin_per_thread))
        time.sleep(2.5)  # the first health checks
        for proxy in proxies:
            proxy.rss_start = rss_kib(proxy.pid)
            if args.quota:  # each proxy a cgroup of its own: the same share of a CPU for each
                hold(quotas, proxy.name, args.quota, tree(proxy.pid))
        d = args.duration
        plan = [  # idle first: on fresh proxies (see the docstring)
            ("idle memory", lambda p: idle(procs, p, args.connections)),
            ("bulk 1 stream", lambda p: bulk(p, "bulk1", 1, d)),
            ("bulk 8 streams", lambda p: bulk(p, "bulk8", 8, d)),
            ("keep-alive", lambda p: http(p, "keepalive", d, close=False)),
            ("new connections", lambda p: http(p, "newconn", d, close=True)),
        ]
        if args.only:
            plan = [step for step in plan if step[0] in args.only]
        samples: dict[str, dict[tuple[str, str], list[float]]] = {p.name: {} for p in proxies}
        stolen: dict[str, list[int]] = {}
        for workload, run in plan:
            # The proxies take turns, round after round: a machine that slows down for a while (a shared
            # VM does) then weighs on all of them alike, and the median of the rounds is reported.
            for round_ in range(1 if workload == "idle memory" else args.rounds):
                for proxy in proxies:
                    print(f"  {workload} through {proxy.name} (round {round_ + 1}) ...", file=sys.stderr, flush=True)
                    try:
                        before = host_ticks()
                        for metric, value in run(proxy).items():
                            samples[proxy.name].setdefault((workload, metric), []).append(value)
                        after = host_ticks()
                        ticks = stolen.setdefault(workload, [0, 0])
                        ticks[0] += after[0] - before[0]
                        ticks[1] += after[1] - before[1]
                    except (BenchError, subprocess.TimeoutExpired, OSError) as e:
                        proxy.notes.append(f"{workload}: FAILED: {e}")
                        print(f"    failed: {e}", file=sys.stderr, flush=True)
                    time.sleep(SETTLE)
        results = {name: {key: statistics.median(values) for key, values in by.items()} for name, by in samples.items()}
        notes = []
        for proxy in proxies:
            if proxy.proc.alive():
                notes.append(f"{proxy.name}: RSS {proxy.rss_start / 1024:.1f} MiB at start, "
                             f"{rss_kib(proxy.pid) / 1024:.1f} MiB at the end")  # fmt: skip
            notes += [f"{proxy.name}: {n}" for n in proxy.notes]
        notes += hapair_findings(proxies[0], workdir)
        for haproxy in proxies[1:]:
            if not haproxy.proc.alive():
                notes.append(f"{haproxy.name} EXITED with status {haproxy.proc.popen.returncode}")
            warnings = [l for l in haproxy.proc.output().splitlines() if "WARNING" in l or "ALERT" in l]
            notes += [f"{haproxy.name} log: {l[:200]}" for l in warnings[:5]]
        for workload in ("bulk 1 stream", "bulk 8 streams"):
            # Each proxy's rounds as (CPU ms per Gbit, prompt segments %).
            pairs = {p.name: list(zip(samples[p.name].get((workload, "proxy CPU ms per Gbit"), []),
                                      samples[p.name].get((workload, "prompt segments %"), [])))
                     for p in proxies}  # fmt: skip
            if any(pairs.values()):
                rounds = [f"{name} " + ", ".join(f"{cpu:.1f} [{prompt:.0f}%]" for cpu, prompt in pairs[name])
                          for name in pairs]  # fmt: skip
                notes.append(f"{workload}, each round's proxy CPU ms per Gbit [prompt segments]: " + "; ".join(rounds))
                if pairs.get("haproxy-splice"):
                    notes.append(f"{workload}, like with like, median CPU ms per Gbit (rounds), hapair vs haproxy-"
                                 f"splice, prompt at {PROMPT_SHARE:.0f}% or more: "
                                 + "; ".join(like_with_like(pairs["hapair"], pairs["haproxy-splice"])))  # fmt: skip
        notes.append("CPU time stolen by the VM's host while the load ran: " + ", ".join(
            f"{workload} {100 * steal / total:.1f}%" for workload, (steal, total) in stolen.items() if total))
        notes.append(f"total run time {time.monotonic() - started:.0f}s")
        ran = [w for w, _ in plan]
        twin = []
        if args.twin:
            head, *lines = verdict(results, ran, TWIN, against="haproxy")
            if args.twin_per_thread:
                what = "the same haproxy again, with a listening socket per thread) against haproxy, by the same targets"
            else:
                what = "the same haproxy again) against haproxy, by the same targets: what this run's noise alone gives"
            twin = ["", f"{TWIN} ({what}. {head}", *lines]
        return [*machine_header(args, args.connections), "", *table(results, ran), "", *verdict(results, ran), *twin,
                "", "notes:", *[f"  {n}" for n in notes]]  # fmt: skip
    finally:
        clean_up(procs, quotas)


def clean_up(procs: Processes, quotas: list[CpuQuota]) -> None:
    """Stops every process a benchmark started, then removes its quota cgroups, whatever fails."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        procs.stop_all()
    finally:
        close_all(quotas)


# --- the helper roles (this script run again, pinned to the load CPU) --------------------------------


def role_holder(port: int) -> None:
    """The idle backend: accepts connections and holds them until the other side closes."""
    raise_nofile()

    class Hold(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            pass

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Hold, HOST, port, backlog=4096)
        async with server:
            await asyncio.sleep(3600)  # bounded: the benchmark stops it long before

    asyncio.run(serve())


def role_client(port: int, count: int) -> None:
    """Opens `count` connections to the proxy, says how many, closes them all when told (or on EOF)."""
    raise_nofile()
    socks, failures = [], 0
    deadline = time.monotonic() + 60
    while len(socks) < count and time.monotonic() < deadline and failures < 1000:
        try:
            socks.append(socket.create_connection((HOST, port), timeout=5))
        except OSError:
            failures += 1
            time.sleep(0.01)
    print(f"connected {len(socks)} failures {failures}", flush=True)
    ready, _, _ = select.select([sys.stdin], [], [], 600)
    if ready:
        sys.stdin.readline()
    for s in socks:
        s.close()
    print("closed", flush=True)


# --- main ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=4, help="seconds per timed workload and round (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every timed workload, the proxies taking turns; "
                                                         "the median is reported (default 3)")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run: 2 s per workload")
    p.add_argument("--connections", type=int, default=IDLE_CONNECTIONS, help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory with configs and logs")
    p.add_argument("--cores", type=int, choices=(1, 2), default=1,
                   help="1: each proxy on CPU 0 (hapair 1 worker, haproxy 1 thread), load on CPU 1 (default); "
                        "2: proxies on both CPUs (2 workers, 2 threads), sharing them with the load")  # fmt: skip
    p.add_argument("--sources", type=int, help="source addresses the load comes from (127.0.0.2...; default 1 "
                                                "with --cores 1, 16 with --cores 2: hapair steers each source "
                                                "to one worker)")
    p.add_argument("--only", action="append", metavar="WORKLOAD",
                   choices=("idle memory", "bulk 1 stream", "bulk 8 streams", "keep-alive", "new connections"),
                   help="run only this workload (repeatable)")
    p.add_argument("--workers", type=int, help="hapair's worker processes (default: --cores; 0: the proxy in the "
                                                "supervisor process)")
    add_quota_option(p, "hold each proxy (all its processes) to PERCENT of one CPU with a cgroup CPU quota, so "
                        "that the proxy, not the load generators, is the bottleneck (bench/cpuquota.py)")
    p.add_argument("--twin", action="store_true", help="add a second haproxy as shipped and judge it against the "
                                                        "first by the same targets: the run's noise, measured")
    p.add_argument("--twin-per-thread", action="store_true", help="--twin, the twin with a listening socket per "
                                                                   "thread (each thread its own accept queue)")
    p.add_argument("--role", choices=("holder", "client"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 2, 1
    args.twin = args.twin or args.twin_per_thread
    if not 1 <= args.rounds <= 20:
        p.error("--rounds runs from 1 to 20")
    if not 1 <= args.duration <= 120:
        p.error("--duration runs from 1 to 120 seconds")
    if not 1 <= args.connections <= 9000:
        p.error("--connections runs from 1 to 9000 (two descriptors each within the 20000 limit)")
    return args


def main() -> int:
    args = parse_args()
    if args.role == "holder":
        role_holder(args.port)
        return 0
    if args.role == "client":
        role_client(args.port, args.count)
        return 0
    if os.geteuid() != 0:
        print("run as root (the proxies need many descriptors, nginx binds as root)", file=sys.stderr)
        return 2
    missing = [tool for tool in ("haproxy", "iperf3", "wrk", "nginx", "taskset", "gcc") if shutil.which(tool) is None]
    if missing:
        print(f"missing {', '.join(missing)}: run `bash tools/install-deps`", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("needs two CPUs: the proxy on CPU 0, everything else on CPU 1", file=sys.stderr)
        return 2
    problem = quota_problem(args.quota)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    raise_nofile()
    if args.cores == 2:
        CPUS.update(proxy="0,1", load="0,1")
    if args.sources is None:
        args.sources = 16 if args.cores == 2 else 1

    def on_term(signum: int, frame: object) -> None:
        raise Interrupted()

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="hapair-bench-"))
    os.chmod(workdir, 0o755)
    try:
        if args.sources > 1:
            build_srcspread(workdir, args.sources)
        report = run_benchmark(args, workdir)
    except QuotaError as e:
        print(f"--quota: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted):
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = "\n".join(report) + "\n"
    print(text, end="")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"proxy-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.txt"
    out.write_text(text)
    print(f"(written to {out.relative_to(REPO)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
