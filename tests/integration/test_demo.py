"""The README's first command, end to end: it must show the failover and leave nothing behind."""

import os
import re
import subprocess
import sys

import pytest


def test_demo_shows_traffic_a_failover_and_both_nodes_and_cleans_up():
    if os.geteuid() != 0:
        pytest.skip("the demo builds network namespaces: needs root")
    proc = subprocess.Popen([sys.executable, "-m", "hapair.demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    for service in ("CAS-WEB  http", "CAS-WEB  https", "CAS-RPC", "CAS-IMAP4 imaplib: logged in", "HT-SMTP  smtplib: accepted"):
        assert service in out
    outage = re.search(r"outage seen by the client: (\d+) ms", out)
    assert outage and 0 < int(outage.group(1)) < 5000, out
    assert "failover: VIP now on lb2; the client's ARP entry points at lb2" in out
    assert "hapair status on lb1:" in out and "hapair status on lb2:" in out and "role MASTER" in out
    prefix = f"hp{proc.pid % 100000}-"
    assert prefix not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    leftovers = subprocess.run(["pgrep", "-af", prefix], capture_output=True, text=True).stdout
    assert leftovers == "", leftovers
