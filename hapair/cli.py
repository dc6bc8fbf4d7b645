"""`hapair`: the operator's command line.

Exit codes (for scripts and monitoring):
  0  done; for `status`, the node is healthy
  1  the daemon could not be reached, or refused the command (the message says why)
  2  bad arguments, or a configuration file with errors
  3  `status` only: degraded, a real server is down or a virtual service has no server taking clients
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from hapair import configfile

DEFAULT_CONFIG = os.environ.get("HAPAIR_CONFIG", "/etc/hapair/hapair.yaml")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DEGRADED = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hapair", description="A highly available load-balancer pair.")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"the node's configuration file ({DEFAULT_CONFIG})")
    p.add_argument("--socket", help="the control socket (default: node.control_socket of --config)")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the daemon in the foreground")
    check = sub.add_parser("check-config", help="check a configuration file and print every error")
    check.add_argument("file", nargs="?", help="the file (default: --config)")
    sub.add_parser("status", help="the node's virtual services and real servers")
    for state, text in (("drain", "keep persistent clients, take no new ones"), ("halt", "take nothing new"),
                        ("online", "take new clients again")):  # fmt: skip
        cmd = sub.add_parser(state, help=f"{text} (a real server)")
        cmd.add_argument("server", help="the real server's label, e.g. CAS2")
        cmd.add_argument("--vip", help="only in this virtual service (default: every one that has the server)")
        if state == "drain":
            cmd.add_argument("--clear-persistence", action="store_true", help="also forget its persistent clients")
    sub.add_parser("reload", help="re-read the configuration file and apply what changed")
    pair = sub.add_parser("pair", help="pair this node with its peer, or undo it")
    pair_sub = pair.add_subparsers(dest="pair_command", required=True, metavar="add|remove")
    add = pair_sub.add_parser("add", help="pair with the node at PEER_ADDRESS (asks for its admin password)")
    add.add_argument("address", metavar="PEER_ADDRESS")
    add.add_argument("--password-file", help="read the peer's admin password from this file (for automation)")
    pair_sub.add_parser("remove", help="forget the peer: no more heartbeats or replication with it")
    failover = sub.add_parser("failover", help="hand the VIPs to the peer (on the master)")
    failover.add_argument("--force", action="store_true", help="even when the peer looks unhealthy or silent")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        from hapair import daemon

        return daemon.run(args.config)
    if args.command == "check-config":
        return _check_config(args.file or args.config, args.json)
    return _remote(args)


def _check_config(path: str, as_json: bool) -> int:
    try:
        config = configfile.load(path)
    except configfile.ConfigError as e:
        if as_json:
            print(json.dumps({"ok": False, "problems": [vars(p) for p in e.problems]}, indent=2))
        else:
            print(f"{path}: {len(e.problems)} problem(s)", file=sys.stderr)
            for problem in e.problems:
                print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    services = config.cluster.virtual_services
    if as_json:
        print(json.dumps({"ok": True, "virtual_services": [vs.label for vs in services]}))
    else:
        print(f"{path}: OK, node {config.node.name}, {len(services)} virtual service(s)")
    return EXIT_OK


def _socket_path(args: argparse.Namespace) -> str:
    """--socket, else node.control_socket of --config. A file with errors elsewhere still names its
    socket: `hapair reload` on a broken file must reach the daemon and get its refusal."""
    if args.socket:
        return args.socket
    try:
        return configfile.load(args.config).node.control_socket
    except configfile.ConfigError as e:
        path = configfile.control_socket_of(args.config)
        if path is None:
            raise SystemExit(f"hapair: cannot find the control socket: {e}\n(give --socket PATH or --config FILE)")
        return path


def _remote(args: argparse.Namespace) -> int:
    from twisted.internet import error, task

    from hapair import control

    path = _socket_path(args)
    outcome: dict[str, Any] = {}
    password = ""
    if args.command == "pair" and args.pair_command == "add":
        try:
            password = _read_password(args.password_file, args.address)
        except OSError as e:
            print(f"hapair pair add: cannot read the password: {e.strerror}", file=sys.stderr)
            return EXIT_USAGE

    def go(reactor: Any) -> Any:
        if args.command == "status":
            d = control.call(path, control.Status, reactor)
        elif args.command == "reload":
            d = control.call(path, control.Reload, reactor)
        elif args.command == "failover":
            d = control.call(path, control.Failover, reactor, force=args.force)
        elif args.command == "pair" and args.pair_command == "add":
            d = control.call(path, control.Pair, reactor, address=args.address, password=password)
        elif args.command == "pair":
            d = control.call(path, control.Unpair, reactor)
        else:
            d = control.call(
                path, control.SetAdminState, reactor, server=args.server, state=args.command, vs=args.vip,
                clear_persistence=getattr(args, "clear_persistence", False),
            )  # fmt: skip

        def ok(answer: dict) -> None:
            outcome["answer"] = answer

        def failed(f: Any) -> None:
            if f.check(error.ConnectError, FileNotFoundError, ConnectionRefusedError):
                outcome["error"] = f"the daemon is not running (no answer on {path}: {f.getErrorMessage()})"
            else:
                outcome["error"] = f.getErrorMessage()

        return d.addCallbacks(ok, failed)

    try:
        task.react(go)
    except SystemExit as e:
        if e.code not in (0, None):
            outcome.setdefault("error", f"exit {e.code}")
    if "error" in outcome:
        if args.json:
            print(json.dumps({"ok": False, "error": outcome["error"]}))
        else:
            print(f"hapair {args.command}: {outcome['error']}", file=sys.stderr)
        return EXIT_FAILED
    answer = outcome["answer"]
    if args.command == "status":
        status = answer["status"]
        degraded = _degraded(status)
        print(json.dumps(status, indent=2) if args.json else _status_table(status, degraded))
        return EXIT_DEGRADED if degraded else EXIT_OK
    if args.json:
        print(json.dumps({"ok": True, **answer}))
    elif args.command == "reload":
        print("reloaded: " + ", ".join(answer["result"]["virtual_services"]))
    elif args.command in ("failover", "pair"):
        print(answer["result"])
    else:
        for vs, server in answer["changed"]:
            print(f"{vs}/{server}: {args.command}")
    return EXIT_OK


def _read_password(path: str | None, address: str) -> str:
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    import getpass

    return getpass.getpass(f"admin password of the node at {address}: ")


def _degraded(status: dict) -> list[str]:
    problems = []
    cluster = status.get("cluster")
    if cluster is not None:
        if not cluster["peer"]["alive"]:
            problems.append(f"peer {cluster['peer']['node']} is not answering heartbeats")
        if cluster["role"] == "fault":
            problems.append(f"this node is in FAULT: {cluster['why']}")
        if cluster["peer"]["config_in_sync"] is False:
            problems.append("the peer runs a different configuration")
        if any(e["ended"] is None for e in cluster["dual_masters"]):
            problems.append("both nodes are master")
    replication = status.get("replication")
    if replication is not None and replication["paired"] and replication["sync"].startswith("failed"):
        problems.append(f"replication {replication['sync']}")
    for vs in status["virtual_services"]:
        for s in vs["servers"]:
            if s["health"] != "up":
                problems.append(f"{vs['label']}/{s['label']} down")
        if not any(s["health"] == "up" and s["admin"] == "online" and s["weight"] > 0 for s in vs["servers"]):
            problems.append(f"{vs['label']} has no real server taking new clients")
    return problems


def _status_table(status: dict, degraded: list[str]) -> str:
    lines = [f"node {status['node']} (pid {status['pid']}) - {'DEGRADED' if degraded else 'healthy'}"]
    for problem in degraded:
        lines.append(f"  ! {problem}")
    cluster = status.get("cluster")
    if cluster is not None:
        peer = cluster["peer"]
        lines.append(f"role {cluster['role'].upper()} ({cluster['why']}); peer {peer['node']} {peer['role'].upper()}"
                     f"; config {'in sync' if peer['config_in_sync'] else 'DIFFERENT' if peer['config_in_sync'] is False else 'unknown'}")
        ages = ", ".join(f"{p['local']}->{p['peer']} {'never' if p['last_heartbeat_age'] is None else str(round(p['last_heartbeat_age'] * 1000)) + ' ms'}"
                         for p in cluster["paths"])  # fmt: skip
        lines.append(f"heartbeat paths: {ages}")
        dropped = sum(cluster["heartbeats_dropped"].values())
        rep = status.get("replication")
        if rep is not None:
            peer_v = "?" if rep["peer_version"] is None else rep["peer_version"]
            lines.append(f"replication: {'paired' if rep['paired'] else 'NOT PAIRED'}; {rep['sync']}; version "
                         f"{rep['version']} ({rep['digest'][:12]}), peer version {peer_v}"
                         + (f" ({rep['peer_digest'][:12]})" if rep["peer_digest"] else ""))  # fmt: skip
        lines.append(f"VIPs held: {', '.join(cluster['vips_held']) or 'none'}; GARPs sent {cluster['garps_sent']}; "
                     f"takeovers {cluster['takeovers']}; dropped heartbeats {dropped} "
                     f"(bad key {cluster['heartbeats_dropped'].get('bad_mac', 0)}); dual-master episodes {len(cluster['dual_masters'])}")
    rows = []
    for vs in status["virtual_services"]:
        persist = "" if vs["persistence_entries"] is None else f"sticky {vs['persistence_entries']}"
        rows.append([vs["label"], f"{vs['ip']}:{','.join(map(str, vs['ports']))}", "", "", persist, str(vs["current"]),
                     str(vs["total"]), str(vs["refused"]), _size(vs["bytes_in"]), _size(vs["bytes_out"])])
        for s in vs["servers"]:
            rows.append(["  " + s["label"], f"{s['ip']}:{s['port'] if s['port'] is not None else '*'}", s["health"],
                         s["admin"], str(s["weight"]), str(s["current"]), str(s["total"]), str(s["failed"]),
                         _size(s["bytes_in"]), _size(s["bytes_out"])])  # fmt: skip
    lines += _table(["SERVICE/SERVER", "ADDRESS", "HEALTH", "ADMIN", "WEIGHT", "CUR", "TOTAL", "FAIL", "IN", "OUT"],
                    rows, _terminal_width())  # fmt: skip
    return "\n".join(lines)


#: Columns a narrow terminal drops first: bytes, then failures, then totals.
_DROP_ORDER = ("OUT", "IN", "FAIL", "TOTAL")


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


def _table(head: list[str], rows: list[list[str]], width: int) -> list[str]:
    """Rows under a header, left-aligned text and right-aligned numbers, dropping the least useful
    columns until the table fits `width`."""
    keep = list(range(len(head)))

    def render() -> list[str]:
        widths = {i: max(len(head[i]), *(len(r[i]) for r in rows)) for i in keep}
        numeric = {i for i in keep if i >= 4}
        out = []
        for r in [head, *rows]:
            cells = [r[i].rjust(widths[i]) if i in numeric and r is not head else r[i].ljust(widths[i]) for i in keep]
            out.append("  ".join(cells).rstrip())
        return out

    lines = render()
    for name in _DROP_ORDER:
        if max(map(len, lines)) <= width:
            break
        keep.remove(head.index(name))
        lines = render()
    return lines


def _size(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


if __name__ == "__main__":
    sys.exit(main())
