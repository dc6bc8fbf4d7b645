#!/usr/bin/env python3
"""hapair's failover against keepalived's: the outage a client sees, for each fault, in the namespace lab.

What it measures. A probe in the client namespace opens a TCP connection to VIP:80 every 10 ms (each in
parallel with the others, each with its own deadline: 100 ms, or 500 ms while wrk loads the proxy, always
under TCP's 1 s initial SYN retransmission so that a SYN lost in the outage can never succeed late), sends
`GET / HTTP/1.0` and records (start time, answered 200 or not). The outage of one fault is the longest gap
between the start times of two consecutive successful probes, from the last success before the fault to
one second after service came back; its resolution is the 10 ms probe period (a gap of 10 ms is no outage).

Faults, each on a freshly started pair whose master is lb1 (and whose client neighbour entry points at it):

  node dies          every process of the master is SIGKILLed (its whole process group) and its cable to
                     the switch is cut right after (a few ms, reported): what a node that lost power does.
  node dies, loaded  the same with `wrk -t1 -c64` saturating the master's proxy for 3 s before and during
                     the fault (hapair tuned only).
  planned failover   hapair: `hapair failover` on the master. keepalived has no such command: its clean
                     stop (SIGTERM, which sends priority 0) is what an operator uses, and stands in for it.
  clean stop         hapair: SIGTERM to the master's daemon (it releases and tells its peer).

Configurations:

  hapair default     the shipped timers (interval 200 ms, warntime 500 ms, deadtime 700 ms, initdead 2 s)
  hapair tuned       interval 30 ms, warntime 60 ms, deadtime 100 ms, initdead 1 s (they pass validation)
  keepalived         Debian's keepalived, VRRP v3 unicast between lb1 and lb2, both BACKUP, priorities
                     150/100, nopreempt, garp settings at their defaults, advert_int 1 and the smallest it
                     accepts and runs stably (found at the start: 0.005, 0.01, 0.05, 0.1 are tried); and
                     advert_int 0.1 for reference (the issue quotes it; not in --quick). Its data
                     plane is hapair's proxy in single-node mode on both nodes (no `ha`: it only proxies, its
                     listeners bind with IP_FREEBIND and serve once keepalived adds the VIP).

False failovers: a 15 s period with no fault while wrk saturates lb1's proxy (its CPU time is reported), for
hapair tuned (and for keepalived at its smallest advert_int, for comparison). A false failover is lb2 ever
holding the VIP (sampled every 50 ms, with samples where neither node holds it counted too), any state
transition in either node's log (timed to 50 ms), or cluster.takeovers of `hapair status --json` rising past
the initial election on either node. The 3 s of load before each loaded "node dies" fault are checked the
same way. A pair that did not come up as lb1 master / lb2 slave, or left that state before the fault, is
started again (at most 3 times per run); the report lists every such start and what the logs said.

Rules it keeps: traffic only between the lab's namespaces (198.18.0.0/15); everything bounded in time and
count; every process started is tracked by PID and stopped by it (a process group is signalled only while
its leader is not yet reaped, so its id cannot have been reused); the namespaces go away with the lab.

Run, as root, from the repository (keepalived, wrk and nginx: `bash tools/install-deps`):

    python3 bench/failover_vs_keepalived.py [--runs N] [--quick] [--keep]

--runs is the number of runs of every fault and configuration (default 5; about 7 minutes in all); --quick
is 2 runs, no keepalived at advert_int 1 and a 5 s load period (about 2 minutes); --keep leaves the lab's
directory (configurations and the log of every process). The report goes to stdout and to
bench/results/failover-<timestamp>.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hapair.lab import HOSTS, VIP, Lab, Proc, guide_config, pair_config  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
# CPU of a daemon and its proxy workers, counted the way the proxy benchmark counts it.
from proxy_vs_haproxy import cpu_seconds  # noqa: E402

RESULTS = REPO / "bench" / "results"

PROBE_PERIOD = 0.010
PROBE_TIMEOUT = 0.100
PROBE_TIMEOUT_LOADED = 0.500
PROBE_LIMIT = 120.0  # no probe runs longer than this, whatever happens
SETTLE = 1.0  # seconds probed after service came back
RECOVERY_CAP = 10.0  # a fault whose service is not back within this is recorded as not recovered
READY_TIMEOUT = 15.0
LOAD_BEFORE_FAULT = 3.0
WRK = ["wrk", "-t1", "-c64", "--timeout", "2s"]
BUDGET = 25 * 60  # seconds: past this, the remaining runs are skipped (and the report says so)

HAPAIR_DEFAULT: dict[str, str] = {}
HAPAIR_TUNED = {"interval": "30ms", "warntime": "60ms", "deadtime": "100ms", "initdead": "1s"}
KEEPALIVED_CANDIDATES = ("0.005", "0.01", "0.05", "0.1")

F_DIES, F_DIES_LOADED, F_PLANNED, F_STOP = "node dies", "node dies, proxy saturated", "planned failover", "clean stop"
FAULTS = (F_DIES, F_DIES_LOADED, F_PLANNED, F_STOP)
C_DEFAULT, C_TUNED = "hapair default", "hapair tuned"
C_KA1 = "keepalived advert_int 1"
C_KA_REF = "keepalived advert_int 0.1"  # for reference (the issue quotes it), unless it is the smallest


class BenchError(RuntimeError):
    pass


class StartFailed(BenchError):
    """The pair did not reach (or left) the state a fault starts from: lb1 master, lb2 slave."""


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so that the cleanup runs as it does on Ctrl-C."""


# --- processes ------------------------------------------------------------------------------------------


def signal_group(proc: Proc, sig: int) -> None:
    """Signals the process group of `proc`, but only while its leader is not reaped (its id is reserved)."""
    if proc.popen.returncode is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def stop_group(proc: Proc, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Signals the leader, waits (bounded) for it to exit without reaping it, SIGKILLs what is left of its
    group (a child it left behind) while the zombie leader still holds the group id, then reaps it."""
    if proc.popen.returncode is not None:
        return
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
        except ChildProcessError:
            break
        time.sleep(0.01)
    signal_group(proc, signal.SIGKILL)
    try:
        proc.popen.wait(5)
    except subprocess.TimeoutExpired:
        pass


def wait_until(what: str, ready: Callable[[], bool], timeout: float, procs: tuple[Proc, ...] = ()) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if ready():
            return time.monotonic() - started
        for proc in procs:
            if not proc.alive():
                raise BenchError(f"{proc.name} exited ({proc.popen.returncode}) waiting for {what}:\n"
                                 f"{proc.output()[-2000:]}")  # fmt: skip
        time.sleep(0.02)
    raise BenchError(f"timed out after {timeout:g}s waiting for {what}")


# --- the probe ------------------------------------------------------------------------------------------


class Probe:
    """From the client namespace: a TCP connection to VIP:80 every 10 ms, each in parallel, each bounded."""

    def __init__(self, lab: Lab, timeout: float):
        self.lab, self.timeout = lab, timeout
        self.samples: list[tuple[float, bool]] = []  # (start, ok), appended as probes finish
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._outer, name="probe", daemon=True)

    def start(self) -> Probe:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, bool]]:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        if self.error is not None:
            raise BenchError(f"the probe failed: {self.error!r}")
        return sorted(self.samples)

    def _outer(self) -> None:
        try:
            self.lab.call("client", lambda: asyncio.run(self._main()))
        except BaseException as e:  # reported by stop()
            self.error = e

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task] = set()
        t0 = time.monotonic()
        tick = 0
        while not self._stop.is_set() and time.monotonic() - t0 < PROBE_LIMIT:
            task = loop.create_task(self._one(loop))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            tick += 1
            delay = t0 + tick * PROBE_PERIOD - time.monotonic()
            if delay < 0:  # fell behind (a busy machine): skip the missed ticks rather than burst
                tick += int(-delay / PROBE_PERIOD)
                delay = 0
            await asyncio.sleep(delay)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, loop: asyncio.AbstractEventLoop) -> None:
        start = time.monotonic()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        ok = False
        try:
            await asyncio.wait_for(self._exchange(loop, sock), self.timeout)
            ok = True
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            sock.close()
        self.samples.append((start, ok))

    @staticmethod
    async def _exchange(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        await loop.sock_connect(sock, (VIP, 80))
        await loop.sock_sendall(sock, b"GET / HTTP/1.0\r\nHost: vip.lab.test\r\n\r\n")
        data = b""
        while len(data) < 65536:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"HTTP/1.") or data.split(b" ", 2)[1:2] != [b"200"]:
            raise OSError(f"unexpected answer {data[:40]!r}")

    # live views, for the main thread

    def successes_since(self, t: float) -> int:
        return sum(1 for start, ok in list(self.samples) if ok and start >= t)

    def steady(self, span: float, loaded: bool) -> bool:
        """Serving now: every probe of the last `span` s answered (loaded: most of them)."""
        now = time.monotonic()
        recent = [ok for start, ok in list(self.samples) if now - span - self.timeout <= start <= now - self.timeout]
        need = span / PROBE_PERIOD * (0.5 if loaded else 0.8)
        return len(recent) >= need and (sum(recent) >= 0.9 * len(recent) if loaded else all(recent))


@dataclass
class Outcome:
    outage_ms: float | None  # None: not recovered within RECOVERY_CAP
    failed: int  # probes that failed in the window
    note: str = ""


def outage(samples: list[tuple[float, bool]], fault_t: float, end_t: float) -> Outcome:
    ok = [start for start, success in samples if success]
    before = [t for t in ok if t < fault_t]
    after = [t for t in ok if fault_t <= t <= end_t]
    if not before:
        raise BenchError("no successful probe before the fault")
    seq = [before[-1], *after]
    failed = sum(1 for start, success in samples if not success and before[-1] <= start <= end_t)
    if len(seq) < 2:
        return Outcome(None, failed)
    worst = max(b - a for a, b in zip(seq, seq[1:]))
    return Outcome(worst * 1000, failed)


# --- the bench ------------------------------------------------------------------------------------------


@dataclass
class Node:
    host: str
    proc: Proc
    config: str

    def log_len(self) -> int:
        return len(self.proc.output())


@dataclass
class LoadResult:
    config: str
    seconds: float
    proxy_cpu_pct: float
    requests_per_s: str
    lb2_held_vip: int  # samples in which lb2 held the VIP
    nobody_held_vip: int  # samples in which neither node held it
    samples: int
    transitions: list[str]  # "+7.3 s lb1: MASTER -> FAULT: ...", timed from the start of the load
    roles_after: str
    takeovers: str
    late_heartbeats: str
    probe_max_gap_ms: float | None
    probe_failed: int
    probe_total: int


class Bench:
    def __init__(self, lab: Lab, args: argparse.Namespace):
        self.lab, self.args = lab, args
        self.started_at = time.monotonic()
        self.procs: list[Proc] = []
        self.results: dict[tuple[str, str], list[Outcome]] = collections.defaultdict(list)
        self.extra: dict[tuple[str, str], list[str]] = collections.defaultdict(list)  # per-run details
        self.loads: list[LoadResult] = []
        self.loaded_prefault: list[str] = []  # false failovers in the load before loaded faults
        self.loaded_cpu: list[float] = []
        self.notes: list[str] = []
        self.daemon_logs: collections.Counter = collections.Counter()
        self.keepalived_logs: collections.Counter = collections.Counter()
        self.kill_to_cut_ms: list[float] = []
        self.candidates: list[tuple[str, str]] = []
        self.starts: collections.Counter = collections.Counter()  # pair starts per configuration
        self.start_failures: dict[str, list[str]] = collections.defaultdict(list)
        self.smallest: str | None = None
        self.skipped = 0

    # --- plumbing ---------------------------------------------------------------------------------------

    def over_budget(self) -> bool:
        return time.monotonic() - self.started_at > BUDGET

    def spawn(self, host: str, name: str, argv: list[str]) -> Proc:
        proc = self.lab.spawn(host, name, argv)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop_group(proc)
        for proc in self.procs:
            self.scan_log(proc)
        self.procs.clear()

    def scan_log(self, proc: Proc) -> None:
        """Warnings and errors in a stopped process's log, counted by message (timestamps and pids cut)."""
        text = proc.output()
        if proc.name.startswith("hapair-"):
            for line in text.splitlines():
                if re.search(r"#(warn|error|critical)\]|Traceback|Unhandled|Error:", line):
                    msg = re.sub(r"^\S+ ", "", line)  # the timestamp
                    msg = re.sub(r"pid \d+", "pid N", msg)
                    msg = re.sub(r" at 0x[0-9a-f]+", "", msg)
                    if re.search(r"(CAS-IMAP4|HT-SMTP)/\w+ is (DOWN|UP)", msg):  # no IMAP or SMTP servers here
                        msg = "(expected) CAS-IMAP4 and HT-SMTP real servers DOWN: this lab runs no IMAP/SMTP servers"
                    self.daemon_logs[f"{proc.host}: {msg.strip()}"] += 1
        elif proc.name.startswith("keepalived-"):
            for line in text.splitlines():
                if re.search(r"WARNING|error|Error|invalid|not valid", line):
                    msg = re.sub(r"^\w{3} \w{3} +\d+ [\d:]+ \d{4}: ", "", line)
                    msg = re.sub(r"/tmp/\S+", "<conf>", msg)
                    self.keepalived_logs[msg.strip()] += 1

    def reset(self) -> None:
        """Between runs: every daemon stopped, cables up, no VIP anywhere, the client's entry for it gone."""
        self.stop_all()
        for host in ("lb1", "lb2"):
            self.lab.set_link(host, True)
            self.lab.del_address(host, VIP, 32)
        self.lab.run("client", "ip", "neigh", "flush", "to", VIP, check=False)

    def cli(self, node: Node, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hapair", "--config", node.config, *args], cwd=REPO,
                              capture_output=True, text=True, timeout=30)  # fmt: skip

    def status(self, node: Node) -> dict | None:
        result = self.cli(node, "--json", "status")
        if result.returncode not in (0, 3):
            self.notes.append(f"`hapair status` on {node.host} failed ({result.returncode}): {result.stderr.strip()}")
            return None
        return json.loads(result.stdout)["cluster"]

    # --- starting the pairs -----------------------------------------------------------------------------

    def start_node(self, host: str, text: str) -> Node:
        proc, path = self.lab.start_node(host, text)
        self.procs.append(proc)
        return Node(host, proc, path)

    @staticmethod
    def transitions(node: Node, offset: int = 0) -> list[str]:
        return re.findall(r"\w+ -> \w+: [^\n]*", node.proc.output()[offset:])

    def hapair_problem(self, lb1: Node, lb2: Node) -> str | None:
        """What is wrong with the pair for a fault to start from it, if anything: lb1 must be master (its
        only transition INIT -> MASTER, holding the VIP), lb2 slave (INIT -> SLAVE, no VIP)."""
        t1, t2 = self.transitions(lb1), self.transitions(lb2)
        if (len(t1) <= 1 and len(t2) <= 1 and not any("FAULT" in t for t in t1 + t2)
                and all(p.proc.alive() for p in (lb1, lb2))):  # fmt: skip
            return None
        return "; ".join([*(f"lb1 {t}" for t in t1), *(f"lb2 {t}" for t in t2)]) or "a daemon exited"

    def check_hapair(self, lb1: Node, lb2: Node) -> None:
        problem = self.hapair_problem(lb1, lb2)
        if problem is None and not (self.lab.holds("lb1", VIP) and not self.lab.holds("lb2", VIP)):
            problem = f"VIP on lb1 {self.lab.holds('lb1', VIP)}, on lb2 {self.lab.holds('lb2', VIP)}"
        if problem is not None:
            raise StartFailed(problem)

    def start_hapair(self, config: str, ha: dict[str, str]) -> tuple[Node, Node]:
        self.starts[config] += 1
        lb1 = self.start_node("lb1", pair_config("lb1", self.lab.dir, **ha))
        lb2 = self.start_node("lb2", pair_config("lb2", self.lab.dir, **ha))
        procs = (lb1.proc, lb2.proc)

        def ready() -> bool:
            problem = self.hapair_problem(lb1, lb2)
            if problem is not None:
                raise StartFailed(problem)
            return "INIT -> SLAVE" in lb2.proc.output() and self.lab.holds("lb1", VIP)

        wait_until("lb1 master and lb2 slave", ready, READY_TIMEOUT, procs)
        time.sleep(0.3)
        self.check_hapair(lb1, lb2)
        return lb1, lb2

    def attempt(self, config: str, run: Callable[[], None], tries: int = 3) -> None:
        """`run` again (a fresh pair) when the pair did not come up as lb1 master, lb2 slave: bounded."""
        for _ in range(tries):
            try:
                return run()
            except StartFailed as e:
                self.start_failures[config].append(str(e))
                print(f"  {config}: the pair did not start as lb1 master, lb2 slave: {e}", file=sys.stderr, flush=True)
        raise BenchError(f"{config}: {tries} pair starts in a row failed")

    def keepalived_conf(self, host: str, advert_int: str) -> str:
        peer = "lb2" if host == "lb1" else "lb1"
        return textwrap.dedent(f"""\
            global_defs {{
                router_id {host}
                vrrp_version 3
            }}
            vrrp_instance VI_1 {{
                state BACKUP
                interface eth0
                virtual_router_id 51
                priority {150 if host == "lb1" else 100}
                advert_int {advert_int}
                nopreempt
                unicast_src_ip {HOSTS[host]}
                unicast_peer {{
                    {HOSTS[peer]}
                }}
                virtual_ipaddress {{
                    {VIP}/32 dev eth0
                }}
            }}
        """)

    def single_dir(self, host: str) -> str:
        """The state directory of a single-node proxy (keepalived's data plane), apart from the pair's."""
        path = os.path.join(self.lab.dir, f"single-{host}")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def start_keepalived(self, host: str, advert_int: str) -> Proc:
        base = os.path.join(self.lab.dir, f"keepalived-{host}")
        conf = f"{base}.conf"
        with open(conf, "w") as f:
            f.write(self.keepalived_conf(host, advert_int))
        pidfiles = [f"{base}.pid", f"{base}-vrrp.pid", f"{base}-checker.pid"]
        for path in pidfiles:  # a stale pid file whose pid was reused would stop keepalived from starting
            if os.path.exists(path):
                os.unlink(path)
        argv = ["keepalived", "-n", "-l", "-D", "-f", conf, "-p", pidfiles[0], "-r", pidfiles[1], "-c", pidfiles[2]]
        return self.spawn(host, f"keepalived-{host}", argv)

    def start_keepalived_pair(self, advert_int: str, proxies: bool = True) -> tuple[Node | None, Node | None, Proc, Proc]:
        """hapair proxies (single node) on both, then keepalived on lb1 (until MASTER), then on lb2."""
        p1 = p2 = None
        if proxies:
            self.starts[f"keepalived advert_int {advert_int}"] += 1
            p1 = self.start_node("lb1", guide_config("lb1", self.single_dir("lb1")))
            p2 = self.start_node("lb2", guide_config("lb2", self.single_dir("lb2")))
            for p in (p1, p2):
                wait_until(f"{p.host}'s proxy", lambda p=p: "running (pid" in p.proc.output(), READY_TIMEOUT, (p.proc,))
        ka1 = self.start_keepalived("lb1", advert_int)
        wait_until("keepalived lb1 MASTER", lambda: "Entering MASTER STATE" in ka1.output(), READY_TIMEOUT, (ka1,))
        wait_until("lb1 to hold the VIP", lambda: self.lab.holds("lb1", VIP), READY_TIMEOUT, (ka1,))
        ka2 = self.start_keepalived("lb2", advert_int)
        wait_until("keepalived lb2 BACKUP", lambda: "Entering BACKUP STATE" in ka2.output(), READY_TIMEOUT, (ka2,))
        return p1, p2, ka1, ka2

    # --- keepalived's smallest advert_int ----------------------------------------------------------------

    def find_smallest_advert_int(self, watch: float) -> None:
        for candidate in KEEPALIVED_CANDIDATES:
            self.reset()
            verdict = ""
            try:
                _, _, ka1, ka2 = self.start_keepalived_pair(candidate, proxies=False)
                time.sleep(watch)
                masters = ka1.output().count("Entering MASTER STATE") + ka2.output().count("Entering MASTER STATE")
                if not (ka1.alive() and ka2.alive()):
                    verdict = "exited"
                elif masters != 1 or self.lab.holds("lb2", VIP) or not self.lab.holds("lb1", VIP):
                    verdict = f"flaps: {masters} transitions to MASTER in {watch:g} s"
                else:
                    verdict = f"accepted, stable for {watch:g} s"
            except BenchError as e:
                verdict = "does not come up"
                self.notes.append(f"keepalived advert_int {candidate}: {str(e).splitlines()[0]}")
            for proc in list(self.procs):
                if proc.name.startswith("keepalived-"):
                    rejected = re.search(r"WARNING - number '[\d.]+' outside range \[[^\]]+\]", proc.output())
                    if rejected:
                        verdict = f"rejected ({rejected.group(0)}; 'Advert interval not valid - ignoring')"
                        break
            self.candidates.append((candidate, verdict))
            if verdict.startswith("accepted") and self.smallest is None:
                self.smallest = candidate
        self.reset()
        if self.smallest is None:
            raise BenchError(f"keepalived accepted none of {KEEPALIVED_CANDIDATES}: {self.candidates}")

    # --- one measured fault ------------------------------------------------------------------------------

    def measure(self, fault: Callable[[], tuple[float, float]], precheck: Callable[[], None],
                loaded: bool = False) -> Outcome:
        """Probes, waits until the VIP serves steadily through lb1, runs `fault`, which returns when the
        fault began and the time after which service must come back (the cable cut, the command's answer,
        the process's exit), and probes until a second after a probe started after that time succeeded
        (bounded)."""
        probe = Probe(self.lab, PROBE_TIMEOUT_LOADED if loaded else PROBE_TIMEOUT).start()
        try:
            try:
                wait_until("the VIP to serve steadily", lambda: probe.steady(0.5, False), READY_TIMEOUT)
            except BenchError:
                precheck()  # says what went wrong with the pair, if that is it
                raise
            precheck()
            mac = self.lab.neigh("client", VIP)
            if mac != self.lab.macs["lb1"]:
                raise StartFailed(f"before the fault the client's entry for the VIP was {mac}, not lb1's")
            fault_t, event_t = fault()
            back = True
            try:
                wait_until("service to come back", lambda: probe.successes_since(event_t) > 0,
                           max(0.0, event_t + RECOVERY_CAP - time.monotonic()))  # fmt: skip
            except BenchError:
                back = False
            if back:
                time.sleep(SETTLE + probe.timeout)
            end_t = time.monotonic() - probe.timeout
        finally:
            samples = probe.stop()
        result = outage(samples, fault_t, end_t)
        if not back:
            result.outage_ms = None
        return result

    def kill_node(self, procs: list[Proc]) -> tuple[float, float]:
        """Power off lb1: SIGKILL to every process group it runs, then its cable cut."""
        t = time.monotonic()
        for proc in procs:
            signal_group(proc, signal.SIGKILL)
        self.lab.set_link("lb1", False)
        cut = time.monotonic()
        self.kill_to_cut_ms.append((cut - t) * 1000)
        for proc in procs:
            proc.popen.wait(5)
        return t, cut

    def record(self, fault: str, config: str, outcome: Outcome, detail: str = "") -> None:
        self.results[fault, config].append(outcome)
        if detail:
            self.extra[fault, config].append(detail)
        ms = "no recovery" if outcome.outage_ms is None else f"{outcome.outage_ms:.0f} ms"
        print(f"  {fault:<28} {config:<28} {ms:>12}  ({outcome.failed} probes failed){'  ' + detail if detail else ''}",
              file=sys.stderr, flush=True)  # fmt: skip

    # --- hapair runs -------------------------------------------------------------------------------------

    def lb2_transitions(self, lb2: Node, offset: int) -> str:
        return "; ".join(self.transitions(lb2, offset)) or "lb2 logged no transition"

    def hapair_dies(self, config: str, ha: dict[str, str]) -> None:
        self.reset()
        lb1, lb2 = self.start_hapair(config, ha)
        offset = lb2.log_len()
        outcome = self.measure(lambda: self.kill_node([lb1.proc]), lambda: self.check_hapair(lb1, lb2))
        self.record(F_DIES, config, outcome, self.lb2_transitions(lb2, offset))

    def hapair_failover(self, config: str, ha: dict[str, str]) -> None:
        self.reset()
        lb1, lb2 = self.start_hapair(config, ha)
        offset = lb2.log_len()
        answer: list[str] = []

        def fault() -> tuple[float, float]:
            t = time.monotonic()
            result = self.cli(lb1, "failover")
            answer.append(result.stdout.strip() or result.stderr.strip())
            if result.returncode != 0:
                refused = f"`hapair failover` exit {result.returncode}: {result.stderr.strip()}"
                problem = self.hapair_problem(lb1, lb2)
                if problem is not None:  # the pair moved on its own between the check and the command
                    raise StartFailed(f"{refused}; before it: {problem}")
                raise BenchError(refused)
            return t, time.monotonic()

        outcome = self.measure(fault, lambda: self.check_hapair(lb1, lb2))
        self.record(F_PLANNED, config, outcome, f"`hapair failover`: {answer[0] if answer else '?'}; "
                                                f"{self.lb2_transitions(lb2, offset)}")  # fmt: skip

    def hapair_stop(self, config: str, ha: dict[str, str]) -> None:
        self.reset()
        lb1, lb2 = self.start_hapair(config, ha)
        offset = lb2.log_len()

        def fault() -> tuple[float, float]:
            t = time.monotonic()
            stop_group(lb1.proc, signal.SIGTERM)
            return t, time.monotonic()

        outcome = self.measure(fault, lambda: self.check_hapair(lb1, lb2))
        self.record(F_STOP, config, outcome, self.lb2_transitions(lb2, offset))

    def start_wrk(self, seconds: float) -> Proc:
        return self.spawn("client", "wrk", [*WRK, f"-d{int(seconds)}s", f"http://{VIP}/"])

    def finish_wrk(self, wrk: Proc, timeout: float) -> str:
        try:
            wrk.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        stop_group(wrk, signal.SIGINT)  # wrk prints its summary on SIGINT
        m = re.search(r"Requests/sec:\s+([\d.]+)", wrk.output())
        errors = re.search(r"Socket errors:[^\n]*", wrk.output())
        return (m.group(1) if m else "?") + (f" ({errors.group(0)})" if errors else "")

    def hapair_dies_loaded(self, config: str, ha: dict[str, str]) -> None:
        self.reset()
        lb1, lb2 = self.start_hapair(config, ha)
        offset = lb2.log_len()
        wrk_box: list[Proc] = []
        cpu: list[float] = []

        def fault() -> tuple[float, float]:
            wrk = self.start_wrk(LOAD_BEFORE_FAULT + RECOVERY_CAP)
            wrk_box.append(wrk)
            c0, t0 = cpu_seconds(lb1.proc.pid), time.monotonic()
            time.sleep(LOAD_BEFORE_FAULT)
            cpu.append((cpu_seconds(lb1.proc.pid) - c0) / (time.monotonic() - t0) * 100)
            problem = self.hapair_problem(lb1, lb2)
            if problem is None and self.lab.holds("lb2", VIP):
                problem = "lb2 held the VIP"
            if problem is not None:  # a false failover under load: counted, and this run is started again
                self.loaded_prefault.append(problem)
                raise StartFailed(f"false failover in the {LOAD_BEFORE_FAULT:g} s of load before the fault: {problem}")
            return self.kill_node([lb1.proc])

        # The fault starts wrk itself, so that the probe's steady check runs before the load.
        try:
            outcome = self.measure(fault, lambda: self.check_hapair(lb1, lb2), loaded=True)
        finally:
            rps = self.finish_wrk(wrk_box[0], 0) if wrk_box else "?"
        self.loaded_cpu.extend(cpu)
        cpu_text = f"lb1 proxy CPU {cpu[0]:.0f}% before the fault" if cpu else ""
        self.record(F_DIES_LOADED, config, outcome, f"{self.lb2_transitions(lb2, offset)}; {cpu_text}; wrk {rps} req/s")

    # --- keepalived runs ---------------------------------------------------------------------------------

    def keepalived_dies(self, config: str, advert_int: str) -> None:
        self.reset()
        p1, p2, ka1, ka2 = self.start_keepalived_pair(advert_int)
        outcome = self.measure(lambda: self.kill_node([ka1, p1.proc]), self.check_keepalived)
        self.record(F_DIES, config, outcome)

    def check_keepalived(self) -> None:
        if not (self.lab.holds("lb1", VIP) and not self.lab.holds("lb2", VIP)):
            raise StartFailed(f"VIP on lb1 {self.lab.holds('lb1', VIP)}, on lb2 {self.lab.holds('lb2', VIP)}")

    def keepalived_stop(self, config: str, advert_int: str) -> None:
        self.reset()
        p1, p2, ka1, ka2 = self.start_keepalived_pair(advert_int)

        def fault() -> tuple[float, float]:
            t = time.monotonic()
            stop_group(ka1, signal.SIGTERM)
            return t, time.monotonic()

        outcome = self.measure(fault, self.check_keepalived)
        self.record(F_PLANNED, config, outcome, "clean stop (SIGTERM: priority 0)")

    # --- no fault, saturated proxy -----------------------------------------------------------------------

    def load_period(self, config: str, seconds: float) -> None:
        """No fault: wrk saturates lb1's proxy for `seconds`; is there a failover anyway?"""
        self.reset()
        if config == C_TUNED:
            lb1, lb2 = self.start_hapair(config, HAPAIR_TUNED)
            nodes = {"lb1": lb1, "lb2": lb2}
            proxy = lb1
            before = {h: self.status(n) for h, n in nodes.items()}
            self.check_hapair(lb1, lb2)  # (the status calls themselves must not have moved anything)
            logs = {h: n.proc for h, n in nodes.items()}
            pattern = r"\w+ -> \w+: [^\n]*"
        else:
            p1, p2, ka1, ka2 = self.start_keepalived_pair(self.smallest)
            proxy = p1
            self.check_keepalived()
            logs = {"lb1": ka1, "lb2": ka2}
            pattern = r"\(VI_1\) Entering \w+ STATE[^\n]*"
        offsets = {h: len(p.output()) for h, p in logs.items()}
        probe = Probe(self.lab, PROBE_TIMEOUT_LOADED).start()
        try:
            wait_until("the VIP to serve steadily", lambda: probe.steady(0.5, False), READY_TIMEOUT)
            c0, t0 = cpu_seconds(proxy.proc.pid), time.monotonic()
            wrk = self.start_wrk(seconds)
            held = nobody = samples = 0
            timeline: list[str] = []
            found = dict.fromkeys(logs, 0)

            def sample() -> None:
                """Who holds the VIP now, and the transitions logged since the last look (timed to 50 ms)."""
                nonlocal held, nobody, samples
                on1, on2 = self.lab.holds("lb1", VIP), self.lab.holds("lb2", VIP)
                samples, held, nobody = samples + 1, held + on2, nobody + (not on1 and not on2)
                for h, p in logs.items():
                    seen = re.findall(pattern, p.output()[offsets[h]:])
                    timeline.extend(f"+{time.monotonic() - t0:.1f} s {h}: {t}" for t in seen[found[h]:])
                    found[h] = len(seen)

            deadline = t0 + seconds + 10
            while wrk.alive() and time.monotonic() < deadline:
                sample()
                time.sleep(0.05)
            c1, t1 = cpu_seconds(proxy.proc.pid), time.monotonic()
            rps = self.finish_wrk(wrk, 0)
            while time.monotonic() < t1 + 1.0:  # and the second after the load stops (64 connections close)
                sample()
                time.sleep(0.05)
            sample()
        finally:
            probe_samples = probe.stop()
        window = [(s, ok) for s, ok in probe_samples if t0 + 0.5 <= s <= t1 - PROBE_TIMEOUT_LOADED]
        ok = [s for s, success in window if success]
        gap = max((b - a for a, b in zip(ok, ok[1:])), default=None)
        transitions = timeline + [f"{h}: {t}" for h, p in logs.items()
                                  for t in re.findall(pattern, p.output()[offsets[h]:])[found[h]:]]  # fmt: skip
        roles_after = "n/a"
        if config == C_TUNED:
            seen = {h: len(p.output()) for h, p in logs.items()}
            after = {h: self.status(n) for h, n in nodes.items()}
            transitions += [f"{h} (during the `hapair status` calls after the load): {t}" for h, p in logs.items()
                            for t in re.findall(pattern, p.output()[seen[h]:])]  # fmt: skip
            takeovers = " ".join(f"{h} {before[h]['takeovers'] if before[h] else '?'}->{after[h]['takeovers'] if after[h] else '?'}"
                                 for h in nodes)  # fmt: skip
            roles_after = ", ".join(f"{h} {after[h]['role'] if after[h] else '?'}" for h in nodes)
            late = " ".join(f"{h} {before[h]['late_heartbeats'] if before[h] else '?'}->{after[h]['late_heartbeats'] if after[h] else '?'}"
                            for h in nodes)  # fmt: skip
            if all(before.values()) and all(after.values()):
                rose = sum(after[h]["takeovers"] - before[h]["takeovers"] for h in nodes)
                if rose and not any("-> MASTER" in t for t in transitions):
                    transitions.append(f"takeovers rose by {rose}")
        else:
            takeovers, late = "n/a", "n/a"
        result = LoadResult(config, t1 - t0, (c1 - c0) / (t1 - t0) * 100, rps, held, nobody, samples, transitions,
                            roles_after, takeovers, late, None if gap is None else gap * 1000,
                            sum(1 for _, success in window if not success), len(window))  # fmt: skip
        self.loads.append(result)
        print(f"  load {config}: proxy CPU {result.proxy_cpu_pct:.0f}%, {rps} req/s, transitions {transitions}, "
              f"lb2 held the VIP in {held}/{samples} samples", file=sys.stderr, flush=True)  # fmt: skip
        self.reset()


# --- the report -----------------------------------------------------------------------------------------


def seconds_text(bench: Bench) -> str:
    return "/".join(sorted({f"{r.seconds:.0f} s" for r in bench.loads})) or "-"


def fmt_ms(x: float) -> str:
    return f"{x:.0f}"


def summary(outcomes: list[Outcome]) -> tuple[float | None, float | None, float | None, int]:
    values = [o.outage_ms for o in outcomes if o.outage_ms is not None]
    lost = sum(1 for o in outcomes if o.outage_ms is None)
    if not values:
        return None, None, None, lost
    return statistics.median(values), min(values), max(values), lost


def report(bench: Bench, args: argparse.Namespace, header: list[str], elapsed: float) -> str:
    ka_small = f"keepalived advert_int {bench.smallest}"
    configs = [C_DEFAULT, C_TUNED, C_KA1, C_KA_REF, ka_small]
    ka_configs = [c for c in (C_KA1, ka_small) if any(k[1] == c for k in bench.results)]
    lines = list(header)
    lines.append(f"keepalived advert_int used: 1 and {bench.smallest} (the smallest accepted and stable); tried: "
                 + "; ".join(f"{c}: {v}" for c, v in bench.candidates))  # fmt: skip
    lines.append("")
    lines.append("Outage seen by a client probing VIP:80 every 10 ms (longest gap between successful probes; "
                 "resolution 10 ms)")
    lines.append("")
    head = ["fault", "config", "runs", "median ms", "min-max ms",
            "vs keepalived, same fault: hapair/keepalived median (keepalived ms), "
            + " | ".join(c.replace("keepalived ", "") for c in ka_configs)]  # fmt: skip
    rows = []
    for fault in FAULTS:
        ka_fault = F_PLANNED if fault in (F_PLANNED, F_STOP) else F_DIES
        for config in configs:
            outcomes = bench.results.get((fault, config))
            if not outcomes:
                continue
            med, lo, hi, lost = summary(outcomes)
            label = config
            if config.startswith("keepalived") and fault == F_PLANNED:
                label += " *"
            runs = f"{len(outcomes)}" + (f" ({lost} not back in {RECOVERY_CAP:g}s)" if lost else "")
            versus = "-"
            if not config.startswith("keepalived") and med is not None:
                parts = []
                for ka in ka_configs:
                    kmed = summary(bench.results.get((ka_fault, ka), []))[0]
                    parts.append("n/a" if not kmed else f"{med / kmed:.2f}x ({kmed:.0f})")
                versus = " | ".join(parts) + (" (keepalived's clean stop)" if fault in (F_PLANNED, F_STOP) else
                                              " (keepalived not loaded)" if fault == F_DIES_LOADED else "")
            rows.append([fault, label, runs, "-" if med is None else fmt_ms(med),
                         "-" if lo is None else f"{lo:.0f}-{hi:.0f}", versus])  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, ["-" * w for w in widths], *rows]:
        lines.append(" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    lines.append("")
    lines.append("* keepalived has no planned-failover command: its clean stop (SIGTERM; it sends priority 0) is shown.")
    lines.append(f"hapair default = interval 200 ms, warntime 500 ms, deadtime 700 ms, initdead 2 s; hapair tuned = "
                 f"interval 30 ms, warntime 60 ms, deadtime 100 ms, initdead 1 s. Node dies = SIGKILL + cable cut "
                 f"({statistics.median(bench.kill_to_cut_ms):.1f} ms apart, median)." if bench.kill_to_cut_ms else "")
    lines.append("")
    # Targets
    lines.append("Targets (every run must meet them):")

    def target(name: str, key: tuple[str, str], limit: float) -> None:
        outcomes = bench.results.get(key)
        if not outcomes:
            lines.append(f"  {name}: not measured")
            return
        med, lo, hi, lost = summary(outcomes)
        ok = not lost and hi is not None and hi < limit
        lines.append(f"  {'PASS' if ok else 'MISS'}  {name}: median {'-' if med is None else fmt_ms(med)} ms, "
                     f"max {'-' if hi is None else fmt_ms(hi)} ms" + (f", {lost} runs not recovered" if lost else ""))  # fmt: skip

    target("node dies, hapair default, outage < 1000 ms", (F_DIES, C_DEFAULT), 1000)
    target("node dies, hapair tuned, proxy saturated, outage < 150 ms", (F_DIES_LOADED, C_TUNED), 150)
    target("(info) node dies, hapair tuned, idle, outage < 150 ms", (F_DIES, C_TUNED), 150)
    target("planned failover, hapair default, outage < 50 ms", (F_PLANNED, C_DEFAULT), 50)
    target("planned failover, hapair tuned, outage < 50 ms", (F_PLANNED, C_TUNED), 50)
    tuned_load = [r for r in bench.loads if r.config == C_TUNED]
    false_loads = sum(1 for r in tuned_load if r.transitions or r.lb2_held_vip)
    false_count = false_loads + len(bench.loaded_prefault)
    prefault_loads = len(bench.results.get((F_DIES_LOADED, C_TUNED), [])) + len(bench.loaded_prefault)
    idle_faults = sum(1 for f in bench.start_failures.get(C_TUNED, []) if "-> FAULT" in f and "false failover" not in f)
    lines.append(f"  {'PASS' if false_count == 0 and tuned_load else 'MISS'}  no false failover while the proxy is "
                 f"saturated (hapair tuned): in {false_loads} of {len(tuned_load)} load periods ({seconds_text(bench)}) and "
                 f"{len(bench.loaded_prefault)} of {prefault_loads} loads before a fault ({LOAD_BEFORE_FAULT:g} s); "
                 f"besides, with no load, {idle_faults} fresh pairs had a node go to FAULT before the fault")  # fmt: skip
    lines.append("")
    lines.append("False failovers, no fault, wrk -t1 -c64 saturating lb1's proxy:")
    for r in bench.loads:
        lines.append(f"  {r.config}: {r.seconds:.1f} s, lb1 proxy CPU {r.proxy_cpu_pct:.0f}% of a core, wrk {r.requests_per_s} req/s")
        lines.append(f"    VIP sampled every 50 ms until 1 s after the load: on lb2 in {r.lb2_held_vip}/{r.samples} samples, "
                     f"on neither node in {r.nobody_held_vip}; takeovers {r.takeovers}; late heartbeats "
                     f"{r.late_heartbeats}; roles after: {r.roles_after}")
        lines.append(f"    transitions: {'none' if not r.transitions else ''}")
        lines.extend(f"      {t}" for t in r.transitions)
        lines.append(f"    probe (500 ms deadline) during the load: {r.probe_failed}/{r.probe_total} failed, longest gap "
                     f"{'-' if r.probe_max_gap_ms is None else fmt_ms(r.probe_max_gap_ms)} ms")
    if bench.loaded_cpu or bench.results.get((F_DIES_LOADED, C_TUNED)):
        cpu = ", ".join(f"{c:.0f}%" for c in bench.loaded_cpu)
        lines.append(f"  hapair tuned, the {LOAD_BEFORE_FAULT:g} s of load before each loaded 'node dies' fault: lb1 proxy CPU {cpu}; "
                     f"false failovers: {'; '.join(bench.loaded_prefault) or 'none'}")
    lines.append("")
    lines.append("Pair starts that did not reach lb1 master / lb2 slave (or left it before the fault), which the run")
    lines.append("then started again (at most 3 times):")
    for config in sorted(set(bench.starts) | set(bench.start_failures)):
        failures = bench.start_failures.get(config, [])
        starts = bench.starts.get(config)
        lines.append(f"  {config}: {len(failures)} of {starts if starts else len(failures)} starts")
        for text, n in collections.Counter(failures).most_common():
            lines.append(f"      {n}x {text}")
    lines.append("")
    lines.append("Per run:")
    for (fault, config), outcomes in bench.results.items():
        values = ", ".join("lost" if o.outage_ms is None else fmt_ms(o.outage_ms) for o in outcomes)
        lines.append(f"  {fault} / {config}: {values} ms")
        for detail in collections.Counter(bench.extra.get((fault, config), [])).most_common():
            if fault == F_DIES_LOADED:
                continue
            lines.append(f"      {detail[1]}x {detail[0]}")
        if fault == F_DIES_LOADED:
            for detail in bench.extra.get((fault, config), []):
                lines.append(f"      {detail}")
    lines.append("")
    lines.append("hapair daemon log lines at warn level and above (count, node: message):")
    for msg, n in bench.daemon_logs.most_common(25) or [("none", 0)]:
        lines.append(f"  {n:>5}  {msg}")
    lines.append("keepalived log warnings (count: message):")
    for msg, n in bench.keepalived_logs.most_common(10) or [("none", 0)]:
        lines.append(f"  {n:>5}  {msg}")
    if bench.notes:
        lines.append("Notes:")
        for note in dict.fromkeys(bench.notes):
            lines.append(f"  {note}")
    if bench.skipped:
        lines.append(f"  {bench.skipped} runs skipped: the {BUDGET // 60} minute budget ran out")
    lines.append("")
    lines.append(f"runtime {elapsed:.0f} s; load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------------------


def source_fingerprint() -> str:
    """SHA-256 (first 12 digits) over the Python files of the daemon, and the newest one's time: which
    code was measured, without asking git."""
    import hashlib

    digest, newest = hashlib.sha256(), 0.0
    for top in ("hapair", "proxy", "replication"):
        for path in sorted((REPO / top).rglob("*.py")) if (REPO / top).is_dir() else []:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
            newest = max(newest, path.stat().st_mtime)
    when = datetime.datetime.fromtimestamp(newest).astimezone().isoformat(timespec="seconds")
    return f"hapair/ proxy/ replication/ *.py sha256 {digest.hexdigest()[:12]}, newest file {when}"


def run_benchmark(args: argparse.Namespace) -> str:
    started = time.monotonic()
    keepalived_v = subprocess.run(["keepalived", "-v"], capture_output=True, text=True, timeout=10)
    header = [
        f"hapair failover against keepalived - {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"kernel {platform.release()}; {(keepalived_v.stderr or keepalived_v.stdout).splitlines()[0]}; "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}; load average at the start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"command: {' '.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])}; runs {args.runs}"
        + ("; quick" if args.quick else ""),
        f"source: {source_fingerprint()}",
    ]
    with Lab() as lab:
        if args.keep:
            os.environ["HAPAIR_KEEP_LAB_DIR"] = "1"
            print(f"lab directory: {lab.dir} (kept)", file=sys.stderr)
        bench = Bench(lab, args)
        try:
            for host, label in (("cas1", "CAS1"), ("cas2", "CAS2")):
                lab.start_nginx(host, label)
                lab.start_standin(host, label, [135, 60200, 60201])
            print("keepalived: finding the smallest advert_int it accepts", file=sys.stderr, flush=True)
            bench.find_smallest_advert_int(2.0 if args.quick else 5.0)
            print(f"  {bench.candidates}", file=sys.stderr, flush=True)
            ka_small = f"keepalived advert_int {bench.smallest}"
            load_seconds = 5 if args.quick else 15
            print("no fault, proxy saturated", file=sys.stderr, flush=True)
            for config in [C_TUNED] + ([] if args.quick else [ka_small]):
                try:
                    bench.attempt(config, lambda c=config: bench.load_period(c, load_seconds))
                except BenchError as e:
                    bench.notes.append(f"load period, {config}: {e}".splitlines()[0])
            plan: list[Callable[[], None]] = []
            for config, ha in ((C_DEFAULT, HAPAIR_DEFAULT), (C_TUNED, HAPAIR_TUNED)):
                for step in (bench.hapair_dies, bench.hapair_failover, bench.hapair_stop):
                    plan.append(lambda c=config, h=ha, f=step: bench.attempt(c, lambda: f(c, h)))
            plan.append(lambda: bench.attempt(C_TUNED, lambda: bench.hapair_dies_loaded(C_TUNED, HAPAIR_TUNED)))
            kas = [(ka_small, bench.smallest)] + ([] if args.quick else [(C_KA1, "1")])
            if not args.quick and bench.smallest != "0.1":
                kas.append((C_KA_REF, "0.1"))
            for config, advert in kas:
                for step in (bench.keepalived_dies, bench.keepalived_stop):
                    plan.append(lambda c=config, a=advert, f=step: bench.attempt(c, lambda: f(c, a)))
            for run in range(args.runs):  # interleaved, so that a slow minute of the machine hits every config
                print(f"run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
                for step in plan:
                    if bench.over_budget():
                        bench.skipped += 1
                        continue
                    try:
                        step()
                    except BenchError as e:
                        bench.notes.append(f"run {run + 1}: {e}".splitlines()[0])
                        print(f"  failed: {e}", file=sys.stderr, flush=True)
        finally:
            bench.reset()
        return report(bench, args, header, time.monotonic() - started)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=None, help="runs of every fault and configuration (default 5)")
    p.add_argument("--quick", action="store_true", help="2 runs, no keepalived advert_int 1, a 5 s load period")
    p.add_argument("--keep", action="store_true", help="keep the lab's directory (configs and logs)")
    args = p.parse_args()
    if args.runs is None:
        args.runs = 2 if args.quick else 5
    if not 1 <= args.runs <= 50:
        p.error("--runs must be between 1 and 50")
    return args


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("run as root: the lab builds network namespaces", file=sys.stderr)
        return 2
    missing = [tool for tool in ("keepalived", "wrk", "nginx", "ip") if shutil.which(tool) is None]
    if missing:
        print(f"missing {', '.join(missing)}: run `bash tools/install-deps`", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        raise Interrupted()

    signal.signal(signal.SIGTERM, on_term)
    try:
        text = run_benchmark(args)
    except (KeyboardInterrupt, Interrupted):
        print("interrupted; everything started was stopped and the lab removed", file=sys.stderr)
        return 130
    print(text, end="")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"failover-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.txt"
    out.write_text(text)
    print(f"(written to {out.relative_to(REPO)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
