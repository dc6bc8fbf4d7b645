#!/usr/bin/env python3
"""How fast a change made on the master is in force on the slave.

    python3 bench/replication_latency.py [--changes N]      (as root)

Builds a small namespace lab (lb1, lb2, client), starts two unpaired hapair daemons, pairs them with
`hapair pair add`, then N times: edits lb1's file, runs `hapair reload` on lb1 and waits for the change to
appear in lb2's file (written only after lb2 applied it). Prints the time of the whole reload command and
the time from starting it to the change being on lb2, median and range.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from hapair.lab import Lab, pair_config  # noqa: E402


def cli(config: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hapair", "--config", config, *args], capture_output=True, text=True)


def wait(what: str, predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.05)


def status(config: str) -> dict:
    result = cli(config, "--json", "status")
    return json.loads(result.stdout) if result.stdout.startswith("{") else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=10)
    args = parser.parse_args()
    with Lab(hosts=["lb1", "lb2", "client"]) as lab:
        state = os.path.join(lab.dir, "rep")
        os.makedirs(state)
        _, c1 = lab.start_node("lb1", pair_config("lb1", state, paired=False))
        _, c2 = lab.start_node("lb2", pair_config("lb2", state, paired=False))
        wait("both daemons", lambda: status(c1) and status(c2))
        result = cli(c1, "pair", "add", "198.18.0.3", "--password-file", os.path.join(state, "lb2", "admin.pw"))
        if result.returncode != 0:
            raise SystemExit(f"pairing failed: {result.stderr}")
        wait("lb1 master and in sync", lambda: (s := status(c1)) and s["cluster"]["role"] == "master"
             and s["replication"]["sync"] == "in sync")  # fmt: skip
        command, applied = [], []
        for i in range(args.changes):
            marker = f"{i + 2}h"
            with open(c1) as f:
                doc = yaml.safe_load(f)
            doc["cluster"]["virtual_services"][0]["timeouts"]["client"] = marker
            with open(c1, "w") as f:
                yaml.safe_dump(doc, f, sort_keys=False)
            started = time.monotonic()
            result = cli(c1, "reload")
            command.append((time.monotonic() - started) * 1000)
            if result.returncode != 0:
                raise SystemExit(f"reload failed: {result.stderr}")
            wait("the change on lb2", lambda: f"client: {marker}" in open(c2).read(), 5)
            applied.append((time.monotonic() - started) * 1000)
    for name, values in (("hapair reload on lb1 (the whole CLI process)", command),
                         ("from starting it to the change written on lb2", applied)):  # fmt: skip
        print(f"{name}: median {statistics.median(values):.0f} ms, {min(values):.0f}-{max(values):.0f} ms "
              f"over {len(values)} changes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
