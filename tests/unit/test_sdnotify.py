"""systemd's notify protocol."""

import os
import socket

from hapair import sdnotify


def test_notify_sends_to_the_socket_systemd_names(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert sdnotify.notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path})
        assert server.recv(100) == b"READY=1\nSTATUS=up"


def test_without_systemd_nothing_is_sent():
    assert sdnotify.notify("READY=1", {}) is False


def test_watchdog_pings_at_half_the_timeout_and_only_for_this_process():
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "5000000"}) == 2.5
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}) == 2.5
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None
