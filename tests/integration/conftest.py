"""Integration fixtures: the namespace lab with real servers, and hapair daemons running for real."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from typing import Callable, Iterator

import pytest

from hapair import lab as labmod

USERS = {"alice": "wonderland", "bob": "builder"}


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.skip("integration tests need root: they build network namespaces")
    with labmod.Lab() as lab:
        for host, label in (("cas1", "CAS1"), ("cas2", "CAS2")):
            lab.start_nginx(host, label)
            lab.start_dovecot(host, USERS)
            lab.start_standin(host, label, [135, 60200, 60201])
        lab.maildirs = {host: lab.start_smtp(host)[1] for host in ("cas1", "cas2")}
        yield lab


class Node:
    """A hapair daemon in a lab host, with the operator's CLI and its log."""

    def __init__(self, lab: labmod.Lab, host: str, config_text: str, path: str | None = None):
        self.lab, self.host = lab, host
        self.proc, self.config = lab.start_node(host, config_text, path)

    def log(self) -> str:
        return self.proc.output()

    def wait_log(self, pattern: str, timeout: float = 10.0, after: int = 0) -> re.Match:
        """Waits (bounded) for `pattern` in the log past offset `after`; returns the match."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log()[after:])
            if m:
                return m
            assert self.proc.alive(), f"daemon exited:\n{self.log()[-3000:]}"
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not logged within {timeout}s:\n{self.log()[-3000:]}")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hapair", "--config", self.config, *args],
                              capture_output=True, text=True, timeout=30)  # fmt: skip

    def status(self) -> dict:
        result = self.cli("--json", "status")
        assert result.returncode in (0, 3), result.stderr
        return json.loads(result.stdout)

    def service(self, label: str) -> dict:
        return next(vs for vs in self.status()["virtual_services"] if vs["label"] == label)

    def pids(self) -> list[int]:
        """The daemon and its proxy workers."""
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    todo += [int(p) for p in f.read().split()]
            except OSError:
                pass
        return found

    def _proc_files(self, name: str) -> list[str]:
        """/proc/PID/`name` of the daemon and each worker still there."""
        texts = []
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/{name}") as f:
                    texts.append(f.read())
            except OSError:
                pass  # a worker that exited meanwhile
        return texts

    def rss_kib(self) -> int:
        """Resident memory of the daemon and its workers."""
        return sum(int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) for text in self._proc_files("status"))

    def cpu_seconds(self) -> float:
        """User and system CPU time of the daemon and its workers."""
        ticks = 0
        for text in self._proc_files("stat"):
            fields = text.rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.stop()


def lb1_alone(lab, config: str, ready: str, port: int) -> Iterator[Node]:
    """A module fixture's body: lb1 alone with `config`, its listeners bound before the VIP arrives
    (IP_FREEBIND), as on a takeover, and serving `port` to the client once log line `ready` is out."""
    node = Node(lab, "lb1", config)
    node.wait_log(ready)
    lab.add_address("lb1", labmod.VIP)
    lab.wait_port("client", labmod.VIP, port)
    yield node
    lab.del_address("lb1", labmod.VIP)
    node.stop()


@pytest.fixture
def client(lab) -> Callable:
    """client(fn, *args): runs fn inside the client host."""
    return lambda fn, *args, **kw: lab.call("client", fn, *args, **kw)


def connect(ip: str, port: int, source: str | None = None, timeout: float = 5.0) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    s.connect((ip, port))
    return s


def read_line(s: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode()


def read_all(s: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def greeting(ip: str, port: int, source: str | None = None) -> str:
    """The stand-in's first line through the proxy: `LABEL PORT`."""
    s = connect(ip, port, source)
    try:
        return read_line(s).strip()
    finally:
        s.close()
