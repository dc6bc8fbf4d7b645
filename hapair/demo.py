"""`make demo`: the guide's deployment in a namespace lab, with real servers and real client traffic.

    python3 -m hapair.demo        (as root)

Builds the lab (see `hapair.lab`), starts nginx, dovecot, an SMTP server and the RPC stand-in on both
Exchange stand-ins, runs hapair on lb1 with the shipped default configuration moved onto the lab's
addresses, sends traffic through every virtual service, prints `hapair status`, and removes everything.
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

from hapair.lab import CLIENT_EXTRA, VIP, Lab, guide_config


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
        node, config = lab.start_node("lb1", guide_config("lb1", lab.dir))
        lab.add_address("lb1", VIP)
        lab.wait_port("client", VIP, 80, proc=node)
        step(f"lb1: hapair running the shipped default (guide Option 1) on VIP {VIP}")

        web = Counter(lab.run("client", "curl", "-s", "--interface", src, f"http://{VIP}/").stdout.strip()
                      for src in CLIENT_EXTRA[:20])  # fmt: skip
        step(f"CAS-WEB  http from 20 clients: {dict(web)}")
        https = lab.run("client", "curl", "-sk", "--resolve", f"cas.lab.test:443:{VIP}", "https://cas.lab.test/")
        step(f"CAS-WEB  https (TLS passed through): {https.stdout.strip()}")
        rpc = {src: {lab.call("client", _greeting, port, src) for port in (135, 60200, 60201)} for src in CLIENT_EXTRA[:6]}
        step(f"CAS-RPC  each client on one CAS across 135/60200/60201: {[sorted(v) for v in rpc.values()]}")
        step(f"CAS-IMAP4 imaplib: {lab.call('client', _imap_login)}")
        step(f"HT-SMTP  smtplib: {lab.call('client', _send_mail)}")

        status = subprocess.run([sys.executable, "-m", "hapair", "--config", config, "status"],
                                capture_output=True, text=True)  # fmt: skip
        step("hapair status on lb1:")
        print(status.stdout, flush=True)
        step("tearing down")
    step(f"done in {time.monotonic() - started:.1f}s; namespaces and processes removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
