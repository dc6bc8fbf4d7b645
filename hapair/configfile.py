"""Reading a node's YAML file into the `hapair.config` model.

The file is read once, into PyYAML's node tree (which keeps line numbers), and every problem found is
collected rather than stopping at the first: an operator fixing a file wants the whole list, each naming
the file, the line and the key, and saying what was expected.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hapair.timers import Timers
from hapair.config import (
    MAX_WORKERS,
    NODE_LOCAL_APPLIANCE_KEYS,
    AddressRange,
    AdminState,
    BalanceMode,
    CheckKind,
    ClusterConfig,
    Config,
    Garp,
    HASettings,
    HealthCheck,
    HeartbeatPath,
    IPAddress,
    NodeConfig,
    NodeHA,
    Persistence,
    PersistenceMode,
    RealServer,
    Timeouts,
    VirtualService,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}"


class ConfigError(Exception):
    """A configuration file that cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class _Invalid(Exception):
    """One value is wrong; raised by a converter, recorded by `_Reader.field`."""

    def __init__(self, message: str, node: Node | None = None):
        super().__init__(message)
        self.node = node


_BAD: Any = object()  # a value that failed; its problem is already recorded
_REQUIRED: Any = object()

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_duration(text: str) -> float:
    """Seconds from a duration written as people write them: `500ms`, `4s`, `60m`, `1h`, `1h30m`."""
    text = text.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration; write a number and a unit, e.g. 500ms, 4s, 60m, 1h")
    return total


def parse_address_range(text: str) -> AddressRange:
    """A host, a CIDR block or an inclusive `first-last` range, as the guide's firewall examples use."""
    text = text.strip()
    try:
        if "-" in text:
            first_text, last_text = (part.strip() for part in text.split("-", 1))
            first, last = ipaddress.ip_address(first_text), ipaddress.ip_address(last_text)
            if first.version != last.version:
                raise ValueError(f"{text!r} mixes IPv4 and IPv6")
            if first > last:
                raise ValueError(f"{text!r} ends before it starts")
            return AddressRange(first, last)
        if "/" in text:
            net = ipaddress.ip_network(text, strict=True)
            return AddressRange(net[0], net[-1])
        addr = ipaddress.ip_address(text)
        return AddressRange(addr, addr)
    except ValueError as e:
        raise ValueError(f"{e}; expected a host, a CIDR block (198.18.0.0/24) or a range (a.b.c.d-a.b.c.e)")


class _Reader:
    def __init__(self, filename: str):
        self.filename = filename
        self.problems: list[Problem] = []
        self._constructor = SafeConstructor()

    def problem(self, node: Node | None, key: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.problems.append(Problem(self.filename, line, key, message))

    # --- shapes -------------------------------------------------------------------------------------

    def mapping(self, node: Node, path: str, allowed: tuple[str, ...]) -> dict[str, Node] | None:
        if not isinstance(node, MappingNode):
            self.problem(node, path, f"expected a mapping with keys {', '.join(allowed)}")
            return None
        items: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if key not in allowed:
                self.problem(key_node, f"{path}.{key}", f"unknown key; expected one of: {', '.join(allowed)}")
            elif key in items:
                self.problem(key_node, f"{path}.{key}", "given twice")
            else:
                items[key] = value_node
        return items

    def field(
        self,
        items: dict[str, Node],
        parent: Node,
        path: str,
        name: str,
        convert: Callable[[Node], T],
        default: T = _REQUIRED,
    ) -> T:
        node = items.get(name)
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            node = None  # `key: ~` or `key: null` means not given: the default applies
        if node is None:
            if default is _REQUIRED:
                self.problem(parent, f"{path}.{name}", "missing (required)")
                return _BAD
            return default
        try:
            return convert(node)
        except _Invalid as e:
            self.problem(e.node or node, f"{path}.{name}", str(e))
            return _BAD

    def scalar(self, node: Node) -> Any:
        if not isinstance(node, ScalarNode):
            raise _Invalid("expected a single value, not a list or mapping")
        return self._constructor.construct_object(node)

    def sequence(self, node: Node) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise _Invalid("expected a list")
        return list(node.value)

    # --- values -------------------------------------------------------------------------------------

    def label(self, node: Node) -> str:
        value = self.scalar(node)
        if not isinstance(value, str) or not _LABEL.match(value):
            raise _Invalid(f"{value!r} is not a label; use letters, digits, '.', '_' or '-' (at most 64)")
        return value

    def text(self, node: Node) -> str:
        value = self.scalar(node)
        if not isinstance(value, str) or not value:
            raise _Invalid("expected a non-empty string")
        return value

    def ip(self, node: Node) -> IPAddress:
        value = self.scalar(node)
        try:
            return ipaddress.ip_address(str(value))
        except ValueError:
            raise _Invalid(f"{value!r} is not an IPv4 or IPv6 address")

    def integer(self, lo: int, hi: int) -> Callable[[Node], int]:
        def convert(node: Node) -> int:
            value = self.scalar(node)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise _Invalid(f"{value!r} is not a whole number from {lo} to {hi}")
            return value

        return convert

    def port(self, node: Node) -> int:
        return self.integer(1, 65535)(node)

    def optional_port(self, node: Node) -> int | None:
        if isinstance(node, ScalarNode) and self.scalar(node) in (None, ""):
            return None
        return self.port(node)

    def ports(self, node: Node) -> tuple[int, ...]:
        """A list of ports, or the WebUI's comma-separated string (`80,443`)."""
        if isinstance(node, ScalarNode) and isinstance(self.scalar(node), str):
            parts = [p.strip() for p in self.scalar(node).split(",")]
            if not all(p.isdigit() for p in parts):
                raise _Invalid(f"{self.scalar(node)!r} is not a list of ports (e.g. 80,443)")
            values = [int(p) for p in parts]
            if not all(1 <= v <= 65535 for v in values):
                raise _Invalid("ports run from 1 to 65535")
        elif isinstance(node, ScalarNode):
            values = [self.port(node)]
        else:
            values = []
            for item in self.sequence(node):
                try:
                    values.append(self.port(item))
                except _Invalid as e:
                    raise _Invalid(str(e), item)
        if not values:
            raise _Invalid("expected at least one port")
        if len(set(values)) != len(values):
            raise _Invalid(f"a port is listed twice in {values}")
        return tuple(values)

    def duration(self, positive: bool = True) -> Callable[[Node], float]:
        def convert(node: Node) -> float:
            value = self.scalar(node)
            if not isinstance(value, str):
                raise _Invalid(f"{value!r} has no unit; write e.g. 500ms, 4s, 60m, 1h")
            try:
                seconds = parse_duration(value)
            except ValueError as e:
                raise _Invalid(str(e))
            if positive and seconds <= 0:
                raise _Invalid("must be longer than zero")
            return seconds

        return convert

    def boolean(self, node: Node) -> bool:
        value = self.scalar(node)
        if not isinstance(value, bool):
            raise _Invalid(f"{value!r} is not true or false")
        return value

    def choice(self, enum_type: type) -> Callable[[Node], Any]:
        def convert(node: Node) -> Any:
            value = self.scalar(node)
            try:
                return enum_type(value)
            except ValueError:
                names = ", ".join(m.value for m in enum_type)
                raise _Invalid(f"{value!r} is not one of: {names}")

        return convert

    def sources(self, node: Node) -> tuple[AddressRange, ...]:
        result = []
        for item in self.sequence(node):
            value = self.scalar(item)
            try:
                result.append(parse_address_range(str(value)))
            except ValueError as e:
                raise _Invalid(str(e), item)
        return tuple(result)

    # --- sections -----------------------------------------------------------------------------------

    def config(self, root: Node) -> Config | None:
        items = self.mapping(root, "(top)", ("node", "cluster"))
        if items is None:
            return None
        node = self.field(items, root, "(top)", "node", lambda n: self.node_section(n, "node"))
        cluster = self.field(
            items, root, "(top)", "cluster", lambda n: self.cluster_section(n, "cluster"), ClusterConfig()
        )
        if _BAD in (node, cluster) or self.problems:
            return None
        if (node.ha is None) != (cluster.ha is None):
            present, missing = ("node.ha", "cluster.ha") if node.ha is not None else ("cluster.ha", "node.ha")
            self.problem(items.get(present.split(".")[0]), missing, f"missing: {present} is set, and a pair needs both")
            return None
        if node.ha is not None:
            pair = (node.name, node.ha.peer)
            if node.ha.peer == node.name:
                self.problem(items["node"], "node.ha.peer", "names this node; expected the other node of the pair")
            if cluster.ha.preferred_master not in (None, *pair):
                self.problem(items["cluster"], "cluster.ha.preferred_master",
                             f"{cluster.ha.preferred_master!r} is neither {pair[0]!r} nor {pair[1]!r}")  # fmt: skip
            if self.problems:
                return None
        return Config(node=node, cluster=cluster)

    def node_section(self, node: Node, path: str) -> NodeConfig:
        allowed = ("name", "state_dir", "control_socket", "workers", "ha") + NODE_LOCAL_APPLIANCE_KEYS
        items = self.mapping(node, path, allowed)
        if items is None:
            return _BAD
        name = self.field(items, node, path, "name", self.label)
        state_dir = self.field(items, node, path, "state_dir", self.text, NodeConfig.state_dir)
        control = self.field(items, node, path, "control_socket", self.text, NodeConfig.control_socket)
        workers = self.field(items, node, path, "workers", self.integer(0, MAX_WORKERS), NodeConfig.workers)
        ha = self.field(items, node, path, "ha", lambda n: self.node_ha(n, f"{path}.ha"), None)
        appliance = {
            key: self._constructor.construct_object(items[key], deep=True)
            for key in NODE_LOCAL_APPLIANCE_KEYS
            if key in items
        }
        if _BAD in (name, state_dir, control, workers, ha):
            return _BAD
        return NodeConfig(name=name, state_dir=state_dir, control_socket=control, workers=workers, ha=ha,
                          appliance=appliance)  # fmt: skip

    def node_ha(self, node: Node, path: str) -> NodeHA:
        items = self.mapping(node, path, ("peer", "interface", "paths", "key_file", "ping_nodes", "hooks",
                                          "admin_password_file"))  # fmt: skip
        if items is None:
            return _BAD
        values = dict(
            peer=self.field(items, node, path, "peer", self.label),
            interface=self.field(items, node, path, "interface", self.text),
            paths=self.field(items, node, path, "paths", lambda n: self.heartbeat_paths(n, f"{path}.paths")),
            key_file=self.field(items, node, path, "key_file", self.text),
            ping_nodes=self.field(items, node, path, "ping_nodes", self.ping_nodes, ()),
            hooks=self.field(items, node, path, "hooks", lambda n: tuple(self.text(i) for i in self.sequence(n)), ()),
            admin_password_file=self.field(items, node, path, "admin_password_file", self.text, None),
        )
        return _BAD if _BAD in values.values() else NodeHA(**values)

    def ping_nodes(self, node: Node) -> tuple[IPAddress, ...]:
        result = []
        for item in self.sequence(node):
            ip = self.ip(item)
            if ip.version != 4:
                raise _Invalid(f"{ip}: ping nodes must be IPv4 addresses (ICMPv6 echo is not supported yet)", item)
            result.append(ip)
        return tuple(result)

    def heartbeat_paths(self, node: Node, path: str) -> tuple[HeartbeatPath, ...]:
        result = []
        for index, item in enumerate(self.sequence(node)):
            items = self.mapping(item, f"{path}[{index}]", ("local", "peer"))
            if items is None:
                continue
            local = self.field(items, item, f"{path}[{index}]", "local", self.ip)
            peer = self.field(items, item, f"{path}[{index}]", "peer", self.ip)
            if _BAD in (local, peer):
                continue
            if local.version != peer.version:
                self.problem(item, f"{path}[{index}]", "local and peer addresses must be of one IP version")
                continue
            result.append(HeartbeatPath(local, peer))
        if not result:
            raise _Invalid("expected at least one path: {local: ADDRESS, peer: ADDRESS}")
        return tuple(result)

    def cluster_section(self, node: Node, path: str) -> ClusterConfig:
        items = self.mapping(node, path, ("virtual_services", "ha"))
        if items is None:
            return _BAD
        services = self.field(items, node, path, "virtual_services", self.sequence, [])
        ha = self.field(items, node, path, "ha", lambda n: self.ha_settings(n, f"{path}.ha"), None)
        if _BAD in (services, ha):
            return _BAD
        result: list[VirtualService] = []
        bound: dict[tuple[IPAddress, int], str] = {}
        for index, item in enumerate(services):
            vs = self.virtual_service(item, f"{path}.virtual_services[{index}]")
            if vs is _BAD:
                continue
            vs_path = f"{path}.virtual_services[{vs.label}]"
            if any(other.label == vs.label for other in result):
                self.problem(item, f"{vs_path}.label", f"{vs.label!r} names two virtual services")
            for port in vs.ports:
                if (vs.ip, port) in bound:
                    self.problem(item, f"{vs_path}.ports", f"{vs.ip} port {port} is already {bound[vs.ip, port]}'s")
                bound[vs.ip, port] = vs.label
            result.append(vs)
        return ClusterConfig(virtual_services=tuple(result), ha=ha)

    def ha_settings(self, node: Node, path: str) -> HASettings:
        allowed = ("preferred_master", "auto_failback", "interval", "warntime", "deadtime", "initdead", "port", "garp")
        items = self.mapping(node, path, allowed)
        if items is None:
            return _BAD
        d = HASettings()
        values = dict(
            preferred_master=self.field(items, node, path, "preferred_master", self.label, None),
            auto_failback=self.field(items, node, path, "auto_failback", self.boolean, False),
            interval=self.field(items, node, path, "interval", self.duration(), d.interval),
            warntime=self.field(items, node, path, "warntime", self.duration(), d.warntime),
            deadtime=self.field(items, node, path, "deadtime", self.duration(), d.deadtime),
            initdead=self.field(items, node, path, "initdead", self.duration(), d.initdead),
            port=self.field(items, node, path, "port", self.port, d.port),
            garp=self.field(items, node, path, "garp", lambda n: self.garp(n, f"{path}.garp"), d.garp),
        )
        if _BAD in values.values():
            return _BAD
        timers = Timers(values["interval"], values["warntime"], values["deadtime"], values["initdead"])
        for problem in timers.problems():
            self.problem(node, f"{path}", problem)
        return _BAD if timers.problems() else HASettings(**values)

    def garp(self, node: Node, path: str) -> Garp:
        items = self.mapping(node, path, ("count", "interval", "repeat_after", "refresh"))
        if items is None:
            return _BAD
        zero_ok = self.duration(positive=False)
        values = dict(
            count=self.field(items, node, path, "count", self.integer(1, 100), Garp.count),
            interval=self.field(items, node, path, "interval", zero_ok, Garp.interval),
            repeat_after=self.field(items, node, path, "repeat_after", zero_ok, Garp.repeat_after),
            refresh=self.field(items, node, path, "refresh", zero_ok, Garp.refresh),
        )
        return _BAD if _BAD in values.values() else Garp(**values)

    def virtual_service(self, node: Node, path: str) -> VirtualService:
        allowed = (
            "label", "ip", "ports", "balance", "persistence", "timeouts", "health_check", "maxconn",
            "allowed_sources", "real_servers",
        )  # fmt: skip
        items = self.mapping(node, path, allowed)
        if items is None:
            return _BAD
        label = self.field(items, node, path, "label", self.label)
        if label is not _BAD:
            path = path.rsplit("[", 1)[0] + f"[{label}]"
        values = dict(
            label=label,
            ip=self.field(items, node, path, "ip", self.ip),
            ports=self.field(items, node, path, "ports", self.ports),
            balance=self.field(
                items, node, path, "balance", self.choice(BalanceMode), BalanceMode.WEIGHTED_ROUND_ROBIN
            ),
            persistence=self.field(
                items, node, path, "persistence", lambda n: self.persistence(n, f"{path}.persistence"), Persistence()
            ),
            timeouts=self.field(
                items, node, path, "timeouts", lambda n: self.timeouts(n, f"{path}.timeouts"), Timeouts()
            ),
            health_check=self.field(
                items, node, path, "health_check", lambda n: self.health_check(n, f"{path}.health_check"),
                HealthCheck(),
            ),  # fmt: skip
            maxconn=self.field(items, node, path, "maxconn", self.integer(1, 1_000_000), 40_000),
            allowed_sources=self.field(items, node, path, "allowed_sources", self.sources, ()),
            real_servers=self.field(
                items, node, path, "real_servers", lambda n: self.real_servers(n, f"{path}.real_servers"), ()
            ),
        )
        if _BAD in values.values():
            return _BAD
        return VirtualService(**values)

    def real_servers(self, node: Node, path: str) -> tuple[RealServer, ...]:
        result: list[RealServer] = []
        for index, item in enumerate(self.sequence(node)):
            server = self.real_server(item, f"{path}[{index}]")
            if server is _BAD:
                continue
            if any(other.label == server.label for other in result):
                self.problem(item, f"{path}[{server.label}].label", f"{server.label!r} names two real servers")
            result.append(server)
        return tuple(result)

    def real_server(self, node: Node, path: str) -> RealServer:
        items = self.mapping(node, path, ("label", "ip", "port", "weight", "state"))
        if items is None:
            return _BAD
        values = dict(
            label=self.field(items, node, path, "label", self.label),
            ip=self.field(items, node, path, "ip", self.ip),
            port=self.field(items, node, path, "port", self.optional_port, None),
            weight=self.field(items, node, path, "weight", self.integer(0, 256), 100),
            state=self.field(items, node, path, "state", self.choice(AdminState), AdminState.ONLINE),
        )
        if _BAD in values.values():
            return _BAD
        return RealServer(**values)

    def persistence(self, node: Node, path: str) -> Persistence:
        items = self.mapping(node, path, ("mode", "timeout", "table_size"))
        if items is None:
            return _BAD
        values = dict(
            mode=self.field(items, node, path, "mode", self.choice(PersistenceMode), PersistenceMode.NONE),
            timeout=self.field(items, node, path, "timeout", self.duration(), Persistence.timeout),
            table_size=self.field(items, node, path, "table_size", self.integer(1, 10_000_000), 100_000),
        )
        return _BAD if _BAD in values.values() else Persistence(**values)

    def timeouts(self, node: Node, path: str) -> Timeouts:
        items = self.mapping(node, path, ("client", "server", "connect"))
        if items is None:
            return _BAD
        values = {
            name: self.field(items, node, path, name, self.duration(), getattr(Timeouts, name))
            for name in ("client", "server", "connect")
        }
        return _BAD if _BAD in values.values() else Timeouts(**values)

    def health_check(self, node: Node, path: str) -> HealthCheck:
        allowed = ("kind", "port", "interval", "timeout", "rise", "fall", "shutdown_sessions", "http_path", "http_host")
        items = self.mapping(node, path, allowed)
        if items is None:
            return _BAD
        values = dict(
            kind=self.field(items, node, path, "kind", self.choice(CheckKind), CheckKind.CONNECT),
            port=self.field(items, node, path, "port", self.optional_port, None),
            interval=self.field(items, node, path, "interval", self.duration(), HealthCheck.interval),
            timeout=self.field(items, node, path, "timeout", self.duration(), HealthCheck.timeout),
            rise=self.field(items, node, path, "rise", self.integer(1, 100), HealthCheck.rise),
            fall=self.field(items, node, path, "fall", self.integer(1, 100), HealthCheck.fall),
            shutdown_sessions=self.field(items, node, path, "shutdown_sessions", self.boolean, False),
            http_path=self.field(items, node, path, "http_path", self.text, "/"),
            http_host=self.field(items, node, path, "http_host", self.text, None),
        )
        if _BAD in values.values():
            return _BAD
        if not values["http_path"].startswith("/"):
            self.problem(items["http_path"], f"{path}.http_path", "must start with '/'")
            return _BAD
        return HealthCheck(**values)


def parse(text: str, filename: str = "<config>") -> Config:
    """The model from a file's text; raises `ConfigError` listing every problem."""
    reader = _Reader(filename)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError([Problem(filename, line, "(syntax)", f"not valid YAML: {e.problem or e}")])
    if root is None:
        raise ConfigError([Problem(filename, 1, "(top)", "the file is empty; expected 'node' and 'cluster'")])
    config = reader.config(root)
    if reader.problems or config is None:
        raise ConfigError(reader.problems)
    return config


def load(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([Problem(path, 0, "(file)", f"cannot read: {e.strerror}")])
    except UnicodeDecodeError as e:
        raise ConfigError([Problem(path, 0, "(file)", f"not UTF-8 text: {e.reason}")])
    return parse(text, path)


def control_socket_of(path: str) -> str | None:
    """The control socket a file names, read leniently: the rest of the file may have errors."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        node = doc.get("node") if isinstance(doc, dict) else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(node, dict):
        return None
    value = node.get("control_socket", NodeConfig.control_socket)
    return value if isinstance(value, str) and value else None


def default_text(name: str = "default.yaml") -> str:
    """The embedded configuration: the guide's Option 1 (`default.yaml`) or an example under `examples/`."""
    return resources.files("hapair").joinpath(name).read_text(encoding="utf-8")


def load_default(name: str = "default.yaml") -> Config:
    return parse(default_text(name), f"<embedded {name}>")
