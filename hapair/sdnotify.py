"""systemd's notify protocol (sd_notify): readiness, the watchdog, status text.

The reactor itself feeds the watchdog, so a wedged reactor (the thing that sends heartbeats and serves)
gets the daemon restarted by systemd rather than left holding the VIPs.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import task


def notify(message: str, environ: dict[str, str] | None = None) -> bool:
    """Sends `message` (e.g. "READY=1") to $NOTIFY_SOCKET; False when not run by systemd."""
    path = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(message.encode())
    return True


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Half of WatchdogSec, when systemd asked for pings (and asked this process)."""
    env = environ if environ is not None else os.environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2


def start_watchdog(reactor: Any) -> task.LoopingCall | None:
    interval = watchdog_interval()
    if interval is None:
        return None
    loop = task.LoopingCall(notify, "WATCHDOG=1")
    loop.clock = reactor
    loop.start(interval, now=True)
    return loop
