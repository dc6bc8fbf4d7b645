"""`make demo`: the guide's deployment as a pair in a namespace lab, real traffic, and a failover.

    python3 -m hapair.demo        (as root)

Builds the lab (see `hapair.lab`), starts nginx, dovecot, an SMTP server and the RPC stand-in on both
Exchange stand-ins, runs hapair on lb1 and lb2 with the shipped default configuration moved onto the
lab's addresses, sends traffic through every virtual service, kills the master (SIGKILL) while the client
probes the VIP every 10 ms, reports the outage the client saw, prints `hapair status` from both nodes,
and removes everything it made.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import socket
import subprocess
import sys
import time
from collections import Counter

import threading

from hapair.lab import CLIENT_EXTRA, VIP, Lab, pair_config


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _greeting(port: int, source: str) -> str:
    with socket.create_connection((VIP, port), timeout=5, source_address=(source, 0)) as s:
        return s.makefile().readline().split()[0]


def _imap_login() -> str:
    m = imaplib.IMAP4(VIP, 143)
    m.login("demo", "demo")
    m.select("INBOX")
    m.logout()
    return "logged in"


def _send_mail() -> str:
    with smtplib.SMTP(VIP, 25, local_hostname="client.lab.test", timeout=5) as smtp:
        smtp.sendmail("demo@lab.test", ["alice@lab.test"], "Subject: hapair demo\r\n\r\nhello\r\n")
    return "accepted"


def _probe(stop: threading.Event, limit: float) -> list[tuple[float, bool]]:
    """TCP connects to the VIP every 10 ms until `stop` (or `limit` seconds): (time, succeeded)."""
    samples, started = [], time.monotonic()
    while not stop.is_set() and time.monotonic() - started < limit:
        t = time.monotonic()
        try:
            socket.create_connection((VIP, 135), timeout=0.05).close()
            samples.append((t, True))
        except OSError:
            samples.append((t, False))
        time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))
    return samples


def _outage_ms(samples: list[tuple[float, bool]]) -> float:
    ok = [t for t, good in samples if good]
    return max((b - a for a, b in zip(ok, ok[1:])), default=0.0) * 1000


def _status(config: str) -> str:
    return subprocess.run([sys.executable, "-m", "hapair", "--config", config, "status"], capture_output=True,
                          text=True).stdout  # fmt: skip


def main() -> int:
    if os.geteuid() != 0:
        print("the demo builds network namespaces: run it as root", file=sys.stderr)
        return 2
    started = time.monotonic()
    with Lab() as lab:
        step(f"lab built: namespaces {', '.join(lab.namespaces)} on 198.18.0.0/24")
        for host, label in (("cas1", "CAS1"), ("cas2", "CAS2")):
            lab.start_nginx(host, label)
            lab.start_dovecot(host, {"demo": "demo"})
            lab.start_smtp(host)
            lab.start_standin(host, label, [135, 60200, 60201])
            step(f"{host}: nginx (80, 443), dovecot (143, 993), SMTP (25), RPC stand-in (135, 60200, 60201)")
        lb1, config1 = lab.start_node("lb1", pair_config("lb1", lab.dir))
        lb2, config2 = lab.start_node("lb2", pair_config("lb2", lab.dir))
        lab.wait_port("client", VIP, 80, proc=lb1)
        step(f"lb1 and lb2: hapair pair on the shipped default (guide Option 1); lb1 is master of VIP {VIP}")

        web = Counter(lab.run("client", "curl", "-s", "--interface", src, f"http://{VIP}/").stdout.strip()
                      for src in CLIENT_EXTRA[:20])  # fmt: skip
        step(f"CAS-WEB  http from 20 clients: {dict(web)}")
        https = lab.run("client", "curl", "-sk", "--resolve", f"cas.lab.test:443:{VIP}", "https://cas.lab.test/")
        step(f"CAS-WEB  https (TLS passed through): {https.stdout.strip()}")
        rpc = {src: {lab.call("client", _greeting, port, src) for port in (135, 60200, 60201)} for src in CLIENT_EXTRA[:6]}
        step(f"CAS-RPC  each client on one CAS across 135/60200/60201: {[sorted(v) for v in rpc.values()]}")
        step(f"CAS-IMAP4 imaplib: {lab.call('client', _imap_login)}")
        step(f"HT-SMTP  smtplib: {lab.call('client', _send_mail)}")

        step("hapair status on lb1:")
        print(_status(config1), flush=True)

        stop = threading.Event()
        box: dict = {}
        prober = threading.Thread(target=lambda: box.update(samples=lab.call("client", _probe, stop, 15.0)))
        prober.start()
        time.sleep(0.5)
        step("killing lb1's daemon (SIGKILL) while the client probes the VIP every 10 ms")
        lb1.stop(9)
        deadline = time.monotonic() + 10
        while not lab.holds("lb2", VIP) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)
        stop.set()
        prober.join()
        held_by = "lb2" if lab.holds("lb2", VIP) else "nobody"
        step(f"failover: VIP now on {held_by}; the client's ARP entry points at "
             f"{'lb2' if lab.neigh('client', VIP) == lab.macs['lb2'] else 'lb1'}")  # fmt: skip
        step(f"outage seen by the client: {_outage_ms(box['samples']):.0f} ms")
        web = lab.run("client", "curl", "-s", f"http://{VIP}/").stdout.strip()
        step(f"CAS-WEB  http after the failover: {web}")
        step("hapair status on lb2:")
        print(_status(config2), flush=True)
        step("hapair status on lb1 (its daemon is dead; the CLI says so):")
        print(subprocess.run([sys.executable, "-m", "hapair", "--config", config1, "status"], capture_output=True,
                             text=True).stderr, flush=True)  # fmt: skip
        step("tearing down")
    step(f"done in {time.monotonic() - started:.1f}s; namespaces and processes removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
