"""bench/python_floor.py, the relay whose cost bench/paired.py --floor reports as the interpreter's floor:
it must really relay (both ways, byte for byte, on many connections) and close a pair when either side
closes, or the floor it reports is the cost of doing less than a proxy."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .ports import free_port

FLOOR = Path(__file__).resolve().parents[2] / "bench" / "python_floor.py"


def wait_until(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def upper_server(sock: socket.socket, stop: threading.Event, ended: list[int]) -> None:
    """Answers each message with its upper case, until the client closes; one thread per connection.
    Appends to `ended` each time a client closes."""

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data.upper())
        ended.append(1)

    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def test_the_floor_relays_both_ways_on_many_connections_and_closes_with_its_peers():
    backend = socket.create_server(("127.0.0.1", 0))
    stop, ended = threading.Event(), []
    server = threading.Thread(target=upper_server, args=(backend, stop, ended), daemon=True)
    server.start()
    port = free_port()
    relay = subprocess.Popen([sys.executable, str(FLOOR), str(port), str(backend.getsockname()[1])],
                             stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert relay.poll() is None and time.monotonic() < deadline, relay.stderr.read()
                time.sleep(0.05)
        # The probe connection's pair was closed on the server's side too.
        wait_until(lambda: ended, "the relay did not close the server's side")
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
        for round_ in range(3):
            for i, c in enumerate(clients):
                c.sendall(f"request {round_} on {i} ".encode() * 40)
            for i, c in enumerate(clients):
                want = f"REQUEST {round_} ON {i} ".encode() * 40
                got = b""
                while len(got) < len(want):
                    chunk = c.recv(4096)
                    assert chunk, f"connection {i} closed after {len(got)} of {len(want)} bytes"
                    got += chunk
                assert got == want
        clients[0].close()
        wait_until(lambda: len(ended) >= 2, "the relay did not close the server's side")
        # A fresh connection still works, and the others as well.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"again")
            assert c.recv(100) == b"AGAIN"
        clients[1].sendall(b"still")
        assert clients[1].recv(100) == b"STILL"
        for c in clients[1:]:
            c.close()
        assert relay.poll() is None, relay.stderr.read()
    finally:
        relay.kill()
        relay.wait(5)
        relay.stderr.close()
        stop.set()
        server.join(2)
        backend.close()
