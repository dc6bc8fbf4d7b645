"""A lab of network namespaces on one machine: the guide's deployment, for tests, demo and benchmarks.

    client (198.18.0.100)          lb1 (198.18.0.2)   lb2 (198.18.0.3)
            \\                        |                 /
             +------------- br0 (in namespace <prefix>-sw) --------+
            /                                                       \\
    cas1 (198.18.0.20)                                        cas2 (198.18.0.21)

Every host is a namespace with one veth `eth0` into the bridge. Addresses are from 198.18.0.0/15 (RFC 2544)
only; nothing here touches the machine's own interfaces. Everything the lab starts is tracked by PID and
every namespace by the name given it, so `close()` removes exactly what was made.

Code can run inside a host two ways: a subprocess under `ip netns exec`, or a Python callable in a thread
that has entered the namespace (`Lab.call`): setns(2) moves only the calling thread, and the sockets it
makes stay in that namespace for good, so a test can drive imaplib or smtplib from inside the client.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")

SUBNET = "198.18.0"
HOSTS = {"lb1": f"{SUBNET}.2", "lb2": f"{SUBNET}.3", "cas1": f"{SUBNET}.20", "cas2": f"{SUBNET}.21",
         "client": f"{SUBNET}.100"}  # fmt: skip
VIP = f"{SUBNET}.10"
#: The direct heartbeat cable between lb1 and lb2 (a second path that bypasses the switch).
HB_LINK = {"lb1": "198.18.1.1", "lb2": "198.18.1.2"}
PING_NODE = HOSTS["client"]  # the client stands in for the gateway the nodes ping
#: Extra client addresses, so tests can be many distinct sources.
CLIENT_EXTRA = [f"{SUBNET}.{i}" for i in range(101, 131)]
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class LabError(RuntimeError):
    pass


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


def enter_netns(name: str) -> None:
    """Moves the calling thread into namespace `name`."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Runs fn in a fresh thread inside namespace `name` and returns (or raises) what it did."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            enter_netns(name)
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class Proc:
    name: str
    host: str
    popen: subprocess.Popen
    log: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def output(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class Lab:
    def __init__(self, prefix: str | None = None, hosts: Sequence[str] = tuple(HOSTS), workdir: str | None = None):
        self.prefix = prefix or f"hp{os.getpid() % 100000}"
        self.hosts = list(hosts)
        self.dir = workdir or tempfile.mkdtemp(prefix=f"{self.prefix}-")
        os.chmod(self.dir, 0o755)  # the servers' unprivileged helpers (dovecot's auth) read their files here
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.macs: dict[str, str] = {}

    # --- topology -----------------------------------------------------------------------------------

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def build(self) -> Lab:
        try:
            sw = self.ns("sw")
            self._add_ns(sw)
            sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", sw, "link", "set", "br0", "up")
            for host in self.hosts:
                ns = self.ns(host)
                self._add_ns(ns)
                sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"v{host}", "netns", sw)
                sh("ip", "-n", sw, "link", "set", f"v{host}", "master", "br0", "up")
                sh("ip", "-n", ns, "addr", "add", f"{HOSTS[host]}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                self.macs[host] = sh("ip", "-n", ns, "-br", "link", "show", "eth0").stdout.split()[2]
            if "lb1" in self.hosts and "lb2" in self.hosts:
                sh("ip", "link", "add", "hb0", "netns", self.ns("lb1"), "type", "veth", "peer", "name", "hb0",
                   "netns", self.ns("lb2"))  # fmt: skip
                for host in ("lb1", "lb2"):
                    sh("ip", "-n", self.ns(host), "addr", "add", f"{HB_LINK[host]}/30", "dev", "hb0")
                    sh("ip", "-n", self.ns(host), "link", "set", "hb0", "up")
            if "client" in self.hosts:
                for address in CLIENT_EXTRA:
                    sh("ip", "-n", self.ns("client"), "addr", "add", f"{address}/24", "dev", "eth0")
        except BaseException:
            self.close()
            raise
        return self

    def add_address(self, host: str, address: str, prefix_len: int = 24) -> None:
        """Puts an address on a host by hand. Nothing announces it, so the client forgets any old
        neighbour entry for it (what a takeover's gratuitous ARP would have updated)."""
        sh("ip", "-n", self.ns(host), "addr", "add", f"{address}/{prefix_len}", "dev", "eth0")
        if "client" in self.hosts and host != "client":
            sh("ip", "-n", self.ns("client"), "neigh", "flush", "to", address, check=False)

    def del_address(self, host: str, address: str, prefix_len: int = 24) -> None:
        sh("ip", "-n", self.ns(host), "addr", "del", f"{address}/{prefix_len}", "dev", "eth0", check=False)

    def set_link(self, host: str, up: bool) -> None:
        """Cuts or restores a host's cable (the switch side of its veth)."""
        sh("ip", "-n", self.ns("sw"), "link", "set", f"v{host}", "up" if up else "down")

    def set_hb_link(self, up: bool) -> None:
        """Cuts or restores the direct heartbeat cable between lb1 and lb2."""
        sh("ip", "-n", self.ns("lb2"), "link", "set", "hb0", "up" if up else "down")

    def holds(self, host: str, address: str) -> bool:
        return f" {address}/" in self.run(host, "ip", "-o", "addr", "show", "dev", "eth0").stdout

    # --- running things -----------------------------------------------------------------------------

    def call(self, host: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return call_in_netns(self.ns(host), fn, *args, **kwargs)

    def run(self, host: str, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns(host), *argv, timeout=timeout, check=check)

    def spawn(self, host: str, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        log = os.path.join(self.dir, f"{name}.log")
        n = 1
        while os.path.exists(log):  # one log per process, even when a name is started again
            n += 1
            log = os.path.join(self.dir, f"{name}.{n}.log")
        out = open(log, "ab")
        popen = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *argv],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )  # fmt: skip
        out.close()
        proc = Proc(name, host, popen, log)
        self.procs.append(proc)
        return proc

    def wait_port(self, host: str, ip: str, port: int, timeout: float = 15.0, proc: Proc | None = None) -> None:
        """Waits until ip:port accepts a connection from inside `host` (bounded)."""

        def attempt() -> bool:
            try:
                socket.create_connection((ip, port), timeout=0.5).close()
                return True
            except OSError:
                return False

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.call(host, attempt):
                return
            if proc is not None and not proc.alive():
                raise LabError(f"{proc.name} exited ({proc.popen.returncode}) before {ip}:{port} opened:\n{proc.output()[-2000:]}")
            time.sleep(0.05)
        raise LabError(f"{ip}:{port} not accepting from {host} after {timeout}s")

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        self.namespaces.clear()

    def __enter__(self) -> Lab:
        return self.build()

    def __exit__(self, *exc: object) -> None:
        self.close()
        if os.environ.get("HAPAIR_KEEP_LAB_DIR") is None:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- real servers -------------------------------------------------------------------------------

    def tls_pair(self) -> tuple[str, str]:
        cert, key = os.path.join(self.dir, "cas.crt"), os.path.join(self.dir, "cas.key")
        if not os.path.exists(cert):
            sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cas.lab.test",
               "-addext", "subjectAltName=DNS:cas.lab.test", "-keyout", key, "-out", cert)  # fmt: skip
        return cert, key

    def start_nginx(self, host: str, label: str) -> Proc:
        """nginx on ports 80 and 443 (TLS, which the proxy passes through), answering with its label."""
        ip = HOSTS[host]
        base = os.path.join(self.dir, f"nginx-{host}")
        os.makedirs(os.path.join(base, "tmp"), exist_ok=True)
        cert, key = self.tls_pair()
        with open(os.path.join(base, "big.bin"), "wb") as f:
            f.truncate(512 * 1024 * 1024)  # sparse: streams 512 MiB of zeros, costs no disk
        conf = os.path.join(base, "nginx.conf")
        with open(conf, "w") as f:
            f.write(textwrap.dedent(f"""\
                daemon off;
                worker_processes 1;
                pid {base}/nginx.pid;
                error_log {base}/error.log;
                events {{ worker_connections 4096; }}
                http {{
                    access_log {base}/access.log;
                    client_body_temp_path {base}/tmp/body;
                    proxy_temp_path {base}/tmp/proxy;
                    fastcgi_temp_path {base}/tmp/fastcgi;
                    uwsgi_temp_path {base}/tmp/uwsgi;
                    scgi_temp_path {base}/tmp/scgi;
                    keepalive_requests 1000000;
                    server {{
                        listen {ip}:80;
                        listen {ip}:443 ssl;
                        ssl_certificate {cert};
                        ssl_certificate_key {key};
                        location = /big.bin {{ root {base}; }}
                        location / {{ default_type text/plain; return 200 "{label}\\n"; }}
                    }}
                }}
            """))
        proc = self.spawn(host, f"nginx-{host}", ["nginx", "-p", base, "-c", conf, "-e", f"{base}/error.log"])
        self.wait_port(host, ip, 80, proc=proc)
        return proc

    def start_dovecot(self, host: str, users: dict[str, str]) -> Proc:
        """dovecot with IMAP (143, 993) and POP3 (110, 995), plaintext logins allowed, users in a passwd-file."""
        ip = HOSTS[host]
        base = os.path.join(self.dir, f"dovecot-{host}")
        for sub in ("run", "state", "mail"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        os.chmod(os.path.join(base, "mail"), 0o777)
        cert, key = self.tls_pair()
        with open(os.path.join(base, "passwd"), "w") as f:
            for user, password in users.items():
                f.write(f"{user}:{{PLAIN}}{password}::::::\n")
        conf = os.path.join(base, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(textwrap.dedent(f"""\
                base_dir = {base}/run
                state_dir = {base}/state
                log_path = {base}/dovecot.log
                protocols = imap pop3
                listen = {ip}
                ssl = yes
                ssl_cert = <{cert}
                ssl_key = <{key}
                disable_plaintext_auth = no
                auth_mechanisms = plain login
                mail_location = maildir:{base}/mail/%u
                first_valid_uid = 1
                passdb {{
                  driver = passwd-file
                  args = scheme=PLAIN username_format=%u {base}/passwd
                }}
                userdb {{
                  driver = static
                  args = uid=65534 gid=65534 home={base}/mail/%u
                }}
                service imap-login {{
                  chroot =
                  inet_listener imap {{
                    port = 143
                  }}
                  inet_listener imaps {{
                    port = 993
                    ssl = yes
                  }}
                }}
                service pop3-login {{
                  chroot =
                  inet_listener pop3 {{
                    port = 110
                  }}
                  inet_listener pop3s {{
                    port = 995
                    ssl = yes
                  }}
                }}
                service anvil {{
                  chroot =
                }}
            """))
        proc = self.spawn(host, f"dovecot-{host}", ["dovecot", "-F", "-c", conf])
        self.wait_port(host, ip, 143, proc=proc)
        return proc

    def start_smtp(self, host: str) -> tuple[Proc, str]:
        """aiosmtpd on port 25, delivering into a maildir; returns the process and the maildir."""
        ip = HOSTS[host]
        maildir = os.path.join(self.dir, f"maildir-{host}")
        proc = self.spawn(host, f"smtp-{host}", [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"{ip}:25",
                                                 "-c", "aiosmtpd.handlers.Mailbox", maildir])  # fmt: skip
        self.wait_port(host, ip, 25, proc=proc)
        return proc, maildir

    def start_standin(self, host: str, label: str, ports: Sequence[int]) -> Proc:
        """The TCP stand-in (RPC end point mapper and static RPC ports): see `hapair.standin`."""
        ip = HOSTS[host]
        argv = [sys.executable, "-m", "hapair.standin", label, ip, ",".join(map(str, ports))]
        proc = self.spawn(host, f"standin-{host}", argv)
        for port in ports:
            self.wait_port(host, ip, port, proc=proc)
        return proc

    def start_node(self, host: str, config_text: str, path: str | None = None,
                   env: dict[str, str] | None = None) -> tuple[Proc, str]:  # fmt: skip
        """A hapair daemon in `host` on the given configuration; returns it and its config path."""
        path = path or os.path.join(self.dir, f"{host}.yaml")
        with open(path, "w") as f:
            f.write(config_text)
        proc = self.spawn(host, f"hapair-{host}", [sys.executable, "-m", "hapair", "--config", path, "run"], env)
        return proc, path

    def neigh(self, host: str, address: str) -> str | None:
        """The MAC `host`'s neighbour table maps `address` to, if any (`ip neigh`)."""
        out = self.run(host, "ip", "neigh", "show", address).stdout.split()
        return out[out.index("lladdr") + 1] if "lladdr" in out else None


def pair_config(node: str, lab_dir: str, mutate: Callable[[dict], None] | None = None, paired: bool = True,
                **ha: Any) -> str:  # fmt: skip
    """`guide_config` for one node of the lab's pair: heartbeats over the switch and over hb0, the
    client as ping node, lb1 preferred, state in `lab_dir/<node>`, admin password `pw-<node>`.
    paired: both nodes get the same heartbeat key up front; otherwise they start unpaired and
    `hapair pair add` must pair them. `ha` overrides cluster.ha settings (timers, auto_failback...)."""
    peer = "lb2" if node == "lb1" else "lb1"
    node_dir = os.path.join(lab_dir, node)
    os.makedirs(node_dir, mode=0o700, exist_ok=True)
    key = os.path.join(node_dir, "heartbeat.key")
    shared = os.path.join(lab_dir, "heartbeat.key")
    if paired and not os.path.exists(key):
        if not os.path.exists(shared):
            with open(shared, "w") as f:
                f.write(os.urandom(32).hex())
        shutil.copy(shared, key)
    password = os.path.join(node_dir, "admin.pw")
    with open(password, "w") as f:
        f.write(f"pw-{node}\n")
    os.chmod(password, 0o600)

    def pair(doc: dict) -> None:
        doc["node"]["ha"] = {
            "peer": peer, "interface": "eth0", "key_file": key, "ping_nodes": [PING_NODE],
            "paths": [{"local": HOSTS[node], "peer": HOSTS[peer]}, {"local": HB_LINK[node], "peer": HB_LINK[peer]}],
            "admin_password_file": password,
        }  # fmt: skip
        doc["cluster"]["ha"] = {"preferred_master": "lb1", **ha}
        if mutate is not None:
            mutate(doc)

    return guide_config(node, node_dir, pair)


def guide_config(node: str, state_dir: str, mutate: Callable[[dict], None] | None = None) -> str:
    """The shipped default (the guide's Option 1) moved onto the lab's addresses, for node `node`.

    192.168.30.x becomes 198.18.0.x; health checks run every 500 ms so that tests and the demo see
    failures in seconds. `mutate` edits the YAML document before it is written."""
    import yaml

    from hapair.configfile import default_text

    doc = yaml.safe_load(default_text().replace("192.168.30.", f"{SUBNET}."))
    doc["node"] = {"name": node, "state_dir": state_dir, "control_socket": os.path.join(state_dir, f"{node}.sock"),
                   "hostname": f"{node}.lab.test"}  # fmt: skip
    for vs in doc["cluster"]["virtual_services"]:
        vs["health_check"].update(interval="500ms", timeout="400ms", rise=2, fall=2)
    if mutate is not None:
        mutate(doc)
    return yaml.safe_dump(doc, sort_keys=False)
