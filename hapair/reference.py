"""The configuration reference, generated from the model: `python -m hapair.reference`.

Keys and defaults come from the dataclasses in `hapair.config`; what each key means comes from DOCS
below. A test fails when a field has no entry here or when the README's reference differs from what this
prints, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import enum
import sys

from hapair import config as c

#: (section heading, class, (type, meaning) for each field)
SECTIONS: list[tuple[str, type, dict[str, tuple[str, str]]]] = [
    ("node", c.NodeConfig, {
        "name": ("label", "this node's name, as its peer knows it"),
        "state_dir": ("path", "keys, certificates, the pinned peer, the replicated version"),
        "control_socket": ("path", "the UNIX socket the CLI talks to (mode 0660, group hapair)"),
        "workers": ("0-64", "proxy worker processes; blank: one per core; 0: the proxy runs in the supervisor"),
        "ha": ("mapping", "this node's side of a pair (below); absent: a single node"),
        "appliance": ("-", "hostname, dns, network, routing, date_time, physical_advanced, snmp, graphing, "
                           "firewall_script, firewall_lockdown_script, software_updates: kept as written, "
                           "never replicated"),
    }),
    ("node.ha", c.NodeHA, {
        "peer": ("label", "the other node's name"),
        "interface": ("name", "where the VIPs are added (as /32 or /128)"),
        "paths": ("list", "heartbeat paths, each `{local: ADDRESS, peer: ADDRESS}`; the first also carries replication"),
        "key_file": ("path", "the pair's heartbeat key in hex; written by `hapair pair add`"),
        "ping_nodes": ("addresses", "a slave that cannot reach one of these does not take over"),
        "hooks": ("commands", "run in order on each transition, with HAPAIR_STATE, HAPAIR_PREVIOUS, HAPAIR_VIPS, HAPAIR_NODE"),
        "admin_password_file": ("path", "this node's admin password, asked of whoever pairs with it"),
    }),
    ("cluster.virtual_services[]", c.VirtualService, {
        "label": ("label", "the service's name, e.g. CAS-RPC"),
        "ip": ("address", "the VIP, IPv4 or IPv6"),
        "ports": ("ports", "a list, or the WebUI's `80,443`"),
        "real_servers": ("list", "below"),
        "balance": ("choice", "weighted_round_robin or weighted_least_connection"),
        "persistence": ("mapping", "below"),
        "timeouts": ("mapping", "below"),
        "health_check": ("mapping", "below"),
        "maxconn": ("number", "clients beyond this are refused at once"),
        "allowed_sources": ("list", "hosts, CIDR blocks, `a.b.c.d-a.b.c.e` ranges; empty: every source"),
    }),
    ("real_servers[]", c.RealServer, {
        "label": ("label", "e.g. CAS1"),
        "ip": ("address", "the real server"),
        "port": ("port", "blank: the port the client connected to"),
        "weight": ("0-256", "share of new clients; 0 takes none"),
        "state": ("choice", "online, drain (keeps persistent clients, no new ones) or halt (nothing new)"),
    }),
    ("persistence", c.Persistence, {
        "mode": ("choice", "none or source_ip (one table for all the service's ports)"),
        "timeout": ("duration", "an entry lives this long after its last use"),
        "table_size": ("number", "entries kept at most; the least recently used goes"),
    }),
    ("timeouts", c.Timeouts, {
        "client": ("duration", "idle time before the session is closed (client side)"),
        "server": ("duration", "idle time before the session is closed (server side)"),
        "connect": ("duration", "to a real server, before the next one is tried"),
    }),
    ("health_check", c.HealthCheck, {
        "kind": ("choice", "none, connect, smtp (220), imap (* OK), pop3 (+OK), http (status below 400)"),
        "port": ("port", "blank: each real server's port (the service's first port if that is blank)"),
        "interval": ("duration", "between checks"),
        "timeout": ("duration", "for one check"),
        "rise": ("number", "passes in a row to be marked up"),
        "fall": ("number", "failures in a row to be marked down"),
        "shutdown_sessions": ("bool", "close a server's sessions when it is marked down"),
        "http_path": ("path", "http checks: what to GET"),
        "http_host": ("name", "http checks: the Host header (blank: the server's address)"),
    }),
    ("cluster.ha", c.HASettings, {
        "preferred_master": ("label", "ranks higher in elections"),
        "auto_failback": ("bool", "hand the VIPs back to the preferred master when it returns"),
        "interval": ("duration", "heartbeat every"),
        "warntime": ("duration", "a heartbeat this late is counted"),
        "deadtime": ("duration", "a peer silent this long is dead (more than twice the interval)"),
        "initdead": ("duration", "a starting node waits this for its peer (at least deadtime)"),
        "port": ("port", "heartbeat UDP port"),
        "garp": ("mapping", "below"),
    }),
    ("cluster.ha.garp", c.Garp, {
        "count": ("number", "gratuitous ARPs (and NAs) per burst"),
        "interval": ("duration", "between them"),
        "repeat_after": ("duration", "a second burst this much later; 0ms: none"),
        "refresh": ("duration", "announce again this often while master; 0ms: never"),
    }),
]


def _default(cls: type, f: dataclasses.Field, kind: str) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING and f.name not in ("appliance",):
        return "(see below)" if dataclasses.is_dataclass(f.default_factory) else "(empty)"
    else:
        return "required" if f.name != "appliance" else ""
    if value is None:
        return "(blank)"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if kind == "duration":
        from replication.document import format_duration

        return f"`{format_duration(value)}`"
    if value == ():
        return "(empty)"
    return f"`{value}`"


def markdown() -> str:
    out = []
    for heading, cls, docs in SECTIONS:
        out += [f"**{heading}**", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            kind, meaning = docs[f.name]
            key = "(appliance keys)" if f.name == "appliance" else f"`{f.name}`"
            out.append(f"| {key} | {kind} | {_default(cls, f, kind)} | {meaning} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


BEGIN, END = "<!-- reference: begin (python -m hapair.reference) -->", "<!-- reference: end -->"


def check(readme: str) -> bool:
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    return f"{BEGIN}\n{markdown()}{END}" in text


if __name__ == "__main__":
    sys.stdout.write(markdown())
