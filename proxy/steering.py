"""Steering each client address to one worker, so source-IP persistence stays exact across workers.

Every worker accepts on its own socket of a SO_REUSEPORT group. By default the kernel spreads new
connections over the group by a hash of the whole 4-tuple, so one client's connections would land on
different workers, each with its own persistence table. A classic BPF program attached to the group
(SO_ATTACH_REUSEPORT_CBPF) picks the socket instead: it loads the source address from the network header
and returns `address % N`, the index of the socket in the group. `worker_of` is the same function in
Python: the supervisor uses it to send a replicated persistence entry to the worker that owns it.

A service that keeps no source-IP persistence has no per-client state to keep together, and steering
would only cost it: a crowd behind one NAT address, or the one smart host that relays a site's mail,
would be one client on one core. Its group gets a program that returns a random number modulo N instead
(the ancillary load SKF_AD_RANDOM), so each connection goes to any worker. Random rather than a hash of
the source port: Linux gives connect() even ephemeral ports first, and `port % 2` would put all of one
client on one worker of two. Attaching a program replaces the group's, sockets untouched: a reload that
turns persistence on or off re-steers the group's next connections without closing anything.

Two facts that hold this together:
- the load must be relative to the network header (SKF_NET_OFF + 12 for IPv4). A plain offset counts
  from the end of the TCP header (the kernel runs the program with the data pulled past it), where a SYN
  has nothing: the load fails, the program returns 0, and everything silently goes to socket 0 (`ld [0]`
  and `ld [12]` sent 40 of 40 connections to socket 0 of 3, where `ld [SKF_NET_OFF + 20]`, the TCP
  ports, spread them 18/13/9);
- a group's index order is the order the sockets joined it, and closing one moves the last socket into
  its slot. So the supervisor makes the N sockets once, keeps them open for its whole life, and gives a
  re-forked worker the same socket its predecessor had (connections wait in the backlog meanwhile).

A crowd behind one NAT address is one source: it lands on one worker, as persistence requires.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

from proxy.listener import listening_socket

SO_ATTACH_REUSEPORT_CBPF = 51
SKF_NET_OFF = -0x100000
SKF_AD_OFF, SKF_AD_RANDOM = -0x1000, 56
_LD_W_ABS, _ALU_MOD_K, _RET_A = 0x00 | 0x00 | 0x20, 0x04 | 0x90 | 0x00, 0x06 | 0x10
#: Offset of the source address's last 32 bits in the network header.
_SOURCE_WORD = {4: 12, 6: 20}


def worker_of(source: str, workers: int) -> int:
    """The worker the kernel steers `source` to (the program below, in Python)."""
    address = ipaddress.ip_address(source)
    return (int(address) & 0xFFFFFFFF) % workers


def program(version: int, workers: int, by_source: bool = True) -> list[tuple[int, int, int, int]]:
    """The classic BPF program: (code, jt, jf, k) for each instruction. It loads the source address (or,
    not `by_source`, a random number) and returns it modulo `workers`."""
    load = SKF_NET_OFF + _SOURCE_WORD[version] if by_source else SKF_AD_OFF + SKF_AD_RANDOM
    return [
        (_LD_W_ABS, 0, 0, load & 0xFFFFFFFF),
        (_ALU_MOD_K, 0, 0, workers),
        (_RET_A, 0, 0, 0),
    ]


def attach(sock: socket.socket, workers: int, by_source: bool = True) -> None:
    """Attaches the steering program to `sock`'s reuseport group, in place of the one it had."""
    version = 6 if sock.family == socket.AF_INET6 else 4
    code = b"".join(struct.pack("HBBI", *insn) for insn in program(version, workers, by_source))
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def group(ip: str, port: int, workers: int, by_source: bool = True) -> list[socket.socket]:
    """`workers` listening sockets on ip:port, one per worker, with each source steered to one of them
    (or, not `by_source`, each connection to any one of them).

    Refused (EADDRINUSE) when anyone already listens there, with SO_REUSEPORT or not: a second daemon
    must not quietly join the group, replace the program and reshuffle the sockets' order."""
    listening_socket(ip, port).close()  # bound without SO_REUSEPORT: fails if the port is taken
    socks: list[socket.socket] = []
    try:
        for _ in range(workers):
            socks.append(listening_socket(ip, port, reuseport=True))
        if workers > 1:
            attach(socks[0], workers, by_source)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks
