"""A loopback port nobody listens on, for tests that start a server of their own on it."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the kernel just handed out and took back: free now, though not reserved."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
