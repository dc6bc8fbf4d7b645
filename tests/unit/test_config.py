"""The configuration reader: the embedded guide configurations, and every kind of error."""

import ipaddress
import textwrap

import pytest

from hapair import cli, configfile
from hapair.config import AdminState, BalanceMode, CheckKind, PersistenceMode

GOOD = """\
node: {name: lb1}
cluster:
  virtual_services:
    - label: WEB
      ip: 198.18.0.10
      ports: [80, 443]
      real_servers:
        - {label: CAS1, ip: 198.18.0.20}
"""


def problems(text: str) -> list[configfile.Problem]:
    with pytest.raises(configfile.ConfigError) as e:
        configfile.parse(textwrap.dedent(text), "t.yaml")
    return e.value.problems


def one_problem(text: str) -> configfile.Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def with_service(body: str) -> str:
    """GOOD with the WEB service's body replaced by `body` (indented as a service mapping)."""
    lines = "\n".join("      " + line if i else "    - " + line for i, line in enumerate(textwrap.dedent(body).strip().splitlines()))
    return "node: {name: lb1}\ncluster:\n  virtual_services:\n" + lines + "\n"


def test_embedded_default_is_the_guides_option_1():
    config = configfile.load_default()
    services = {vs.label: vs for vs in config.cluster.virtual_services}
    assert list(services) == ["CAS-WEB", "CAS-RPC", "CAS-IMAP4", "HT-SMTP"]
    vip = ipaddress.ip_address("192.168.30.10")
    assert {vs.ip for vs in services.values()} == {vip}
    assert services["CAS-WEB"].ports == (80, 443)
    assert services["CAS-RPC"].ports == (135, 60200, 60201)
    assert services["CAS-IMAP4"].ports == (143, 993)
    assert services["HT-SMTP"].ports == (25,)
    for label in ("CAS-WEB", "CAS-RPC"):
        assert services[label].persistence.mode is PersistenceMode.SOURCE_IP
        assert services[label].persistence.timeout == 3600
    for vs in services.values():
        assert vs.balance is BalanceMode.WEIGHTED_ROUND_ROBIN
        assert (vs.timeouts.client, vs.timeouts.server) == (3600, 3600)
        assert [str(s.ip) for s in vs.real_servers] == ["192.168.30.20", "192.168.30.21"]
    assert services["CAS-RPC"].health_check.port == 60200
    assert services["CAS-IMAP4"].persistence.mode is PersistenceMode.NONE
    # Blank real-server port: the port the client used. SMTP's real servers are on 25.
    assert services["CAS-WEB"].real_servers[0].port is None
    assert services["CAS-WEB"].real_servers[0].target_port(443) == 443
    assert services["HT-SMTP"].real_servers[0].port == 25
    assert services["HT-SMTP"].health_check.kind is CheckKind.SMTP


def test_option_2_example_is_one_vip_for_all_nine_cas_ports():
    config = configfile.load_default("examples/option2.yaml")
    cas = config.cluster.virtual_services[0]
    assert cas.ports == (80, 110, 135, 143, 443, 993, 995, 60200, 60201)


def test_check_config_cli_accepts_the_default(tmp_path, capsys):
    path = tmp_path / "hapair.yaml"
    path.write_text(configfile.default_text())
    assert cli.main(["check-config", str(path)]) == 0
    assert "OK, node lb1, 4 virtual service(s)" in capsys.readouterr().out


def test_check_config_cli_prints_every_error_and_fails(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("198.18.0.10", "not-an-ip").replace("[80, 443]", "[80, 0]"))
    assert cli.main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert f"{path}:5: cluster.virtual_services[WEB].ip: 'not-an-ip' is not an IPv4 or IPv6 address" in err
    assert f"{path}:6: cluster.virtual_services[WEB].ports: 0 is not a whole number from 1 to 65535" in err


def test_daemon_refuses_to_start_on_a_bad_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("node: {name: lb1}\ncluster: {virtual_services: [{label: X}]}\n")
    assert cli.main(["--config", str(path), "run"]) == 2
    assert "not starting" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, seconds",
    [("500ms", 0.5), ("4s", 4), ("60m", 3600), ("1h", 3600), ("1h30m", 5400), ("2.5s", 2.5), ("1d", 86400)],
)
def test_durations_are_written_as_people_write_them(text, seconds):
    assert configfile.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "60", "1 h", "h", "1x", "1h-5m", "m60"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        configfile.parse_duration(text)


def test_allowed_sources_hosts_cidrs_and_ranges():
    config = configfile.parse(with_service("""
        label: SMTP
        ip: 198.18.0.10
        ports: 25
        allowed_sources: [198.18.0.50, 198.18.1.0/24, 198.18.0.50-198.18.0.60, "2001:db8::1"]
        real_servers: [{label: HT1, ip: 198.18.0.20, port: 25}]
    """))
    vs = config.cluster.virtual_services[0]
    ip = ipaddress.ip_address
    assert vs.allows(ip("198.18.0.50")) and vs.allows(ip("198.18.0.60")) and vs.allows(ip("198.18.1.255"))
    assert not vs.allows(ip("198.18.0.61")) and not vs.allows(ip("198.18.0.49"))
    assert vs.allows(ip("2001:db8::1")) and not vs.allows(ip("2001:db8::2"))


def test_full_service_with_ipv6_vip_and_every_field():
    config = configfile.parse(with_service("""
        label: V6
        ip: "2001:db8::10"
        ports: "80, 443"
        balance: weighted_least_connection
        persistence: {mode: source_ip, timeout: 30m, table_size: 500}
        timeouts: {client: 10s, server: 20s, connect: 1s}
        health_check: {kind: http, port: 8080, interval: 1s, timeout: 500ms, rise: 1, fall: 2,
                       shutdown_sessions: true, http_path: /owa/healthcheck.htm, http_host: mail.example}
        maxconn: 100
        real_servers:
          - {label: A, ip: "2001:db8::20", weight: 0, state: drain}
          - {label: B, ip: 198.18.0.21, port: 8443, state: halt}
    """))
    vs = config.cluster.virtual_services[0]
    assert vs.ip.version == 6 and vs.ports == (80, 443)
    assert vs.balance is BalanceMode.WEIGHTED_LEAST_CONNECTION
    assert (vs.persistence.timeout, vs.persistence.table_size) == (1800, 500)
    assert (vs.timeouts.client, vs.timeouts.server, vs.timeouts.connect) == (10, 20, 1)
    hc = vs.health_check
    assert (hc.kind, hc.port, hc.interval, hc.timeout, hc.rise, hc.fall) == (CheckKind.HTTP, 8080, 1, 0.5, 1, 2)
    assert hc.shutdown_sessions and hc.http_path == "/owa/healthcheck.htm" and hc.http_host == "mail.example"
    assert vs.maxconn == 100
    a, b = vs.real_servers
    assert (a.weight, a.state, b.port, b.state) == (0, AdminState.DRAIN, 8443, AdminState.HALT)


# --- one test per kind of error: each names the line and the key, and says what was expected ----------


def test_yaml_syntax_error_names_the_line():
    p = one_problem("node: {name: lb1}\ncluster:\n  virtual_services: [\n")
    assert p.key == "(syntax)" and p.line >= 3 and "not valid YAML" in p.message


def test_empty_file():
    assert "empty" in one_problem("").message


def test_unreadable_file(tmp_path):
    with pytest.raises(configfile.ConfigError) as e:
        configfile.load(str(tmp_path / "missing.yaml"))
    assert "cannot read" in str(e.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"node: {name: lb\xe9}\n")
    with pytest.raises(configfile.ConfigError) as e:
        configfile.load(str(path))
    assert "not UTF-8" in str(e.value)


def test_top_level_must_be_a_mapping():
    assert one_problem("- a\n- b\n").key == "(top)"


def test_unknown_key_lists_the_expected_ones():
    p = one_problem(GOOD.replace("      ports:", "      pots: 1\n      ports:"))
    assert p.line == 6 and p.key.endswith(".pots") and "expected one of: label, ip, ports" in p.message


def test_key_given_twice():
    p = one_problem(GOOD.replace("      ports: [80, 443]", "      ports: [80, 443]\n      ports: [81]"))
    assert p.key.endswith(".ports") and "twice" in p.message


def test_missing_required_key():
    p = one_problem(GOOD.replace("      ip: 198.18.0.10\n", ""))
    assert p.key == "cluster.virtual_services[WEB].ip" and "missing" in p.message


def test_missing_node_name():
    p = one_problem(GOOD.replace("node: {name: lb1}", "node: {}"))
    assert p.key == "node.name" and p.line == 1


def test_bad_label():
    p = one_problem(GOOD.replace("label: WEB", "label: 'my web'"))
    assert p.key.endswith(".label") and "not a label" in p.message


def test_bad_address():
    p = one_problem(GOOD.replace("ip: 198.18.0.20", "ip: 198.18.0.300"))
    assert p.line == 8 and p.key == "cluster.virtual_services[WEB].real_servers[0].ip"


def test_port_out_of_range_in_a_list_points_at_the_item():
    p = one_problem(GOOD.replace("[80, 443]", "[80,\n        70000]"))
    assert p.line == 7 and "1 to 65535" in p.message


def test_port_listed_twice():
    assert "twice" in one_problem(GOOD.replace("[80, 443]", "[80, 80]")).message


def test_no_ports():
    assert "at least one port" in one_problem(GOOD.replace("[80, 443]", "[]")).message


def test_ports_string_with_garbage():
    assert "not a list of ports" in one_problem(GOOD.replace("[80, 443]", "'80, https'")).message


def test_duration_without_unit():
    p = one_problem(GOOD.replace("      ports:", "      timeouts: {client: 60}\n      ports:"))
    assert p.key.endswith("timeouts.client") and "no unit" in p.message


def test_zero_duration():
    p = one_problem(GOOD.replace("      ports:", "      timeouts: {connect: 0s}\n      ports:"))
    assert "longer than zero" in p.message


def test_weight_out_of_range():
    p = one_problem(GOOD.replace("ip: 198.18.0.20}", "ip: 198.18.0.20, weight: 257}"))
    assert p.key.endswith("real_servers[0].weight") and "0 to 256" in p.message


def test_boolean_expected():
    p = one_problem(GOOD.replace("      ports:", "      health_check: {shutdown_sessions: maybe}\n      ports:"))
    assert "true or false" in p.message


def test_unknown_choice_lists_the_choices():
    p = one_problem(GOOD.replace("      ports:", "      balance: random\n      ports:"))
    assert "weighted_round_robin, weighted_least_connection" in p.message


def test_unknown_admin_state():
    p = one_problem(GOOD.replace("ip: 198.18.0.20}", "ip: 198.18.0.20, state: sleeping}"))
    assert "online, drain, halt" in p.message


def test_list_expected():
    assert "expected a list" in one_problem(GOOD.replace("real_servers:\n        - {label: CAS1, ip: 198.18.0.20}", "real_servers: CAS1")).message


def test_mapping_expected():
    p = one_problem(GOOD.replace("      ports:", "      persistence: source_ip\n      ports:"))
    assert p.key.endswith(".persistence") and "expected a mapping" in p.message


def test_scalar_expected():
    assert "single value" in one_problem(GOOD.replace("ip: 198.18.0.10", "ip: [198.18.0.10]")).message


@pytest.mark.parametrize(
    "source, message",
    [("198.18.0.60-198.18.0.50", "ends before it starts"), ("198.18.0.1-2001:db8::1", "mixes IPv4 and IPv6"),
     ("198.18.0.1/24", "host bits set"), ("smarthost", "expected a host")],
)  # fmt: skip
def test_bad_allowed_source(source, message):
    p = one_problem(GOOD.replace("      ports:", f"      allowed_sources: ['{source}']\n      ports:"))
    assert p.line == 6 and message in p.message


def test_two_services_with_one_label():
    text = GOOD + "    - {label: WEB, ip: 198.18.0.11, ports: [80], real_servers: []}\n"
    assert "names two virtual services" in one_problem(text).message


def test_two_services_on_one_address_and_port():
    text = GOOD + "    - {label: WEB2, ip: 198.18.0.10, ports: [443], real_servers: []}\n"
    p = one_problem(text)
    assert p.line == 9 and "198.18.0.10 port 443 is already WEB's" in p.message


def test_two_real_servers_with_one_label():
    text = GOOD + "        - {label: CAS1, ip: 198.18.0.21}\n"
    assert "names two real servers" in one_problem(text).message


def test_http_path_must_be_absolute():
    p = one_problem(GOOD.replace("      ports:", "      health_check: {kind: http, http_path: owa}\n      ports:"))
    assert "must start with '/'" in p.message


def test_every_problem_is_reported_at_once():
    text = GOOD.replace("198.18.0.10", "x").replace("[80, 443]", "[0]").replace("ip: 198.18.0.20", "ip: y")
    assert len(problems(text)) == 3


def test_ipv6_ping_nodes_are_refused_rather_than_silently_ignored(tmp_path):
    from hapair.lab import pair_config

    text = pair_config("lb1", str(tmp_path), lambda d: d["node"]["ha"].update(ping_nodes=["2001:db8::1"]))
    p = one_problem(text)
    assert p.key == "node.ha.ping_nodes" and "must be IPv4" in p.message


def test_fingerprint_is_stable_per_configuration_and_differs_between_them():
    a = configfile.parse(GOOD).cluster
    assert a.fingerprint() == a.fingerprint() == configfile.parse(GOOD).cluster.fingerprint()
    b = configfile.parse(GOOD.replace("[80, 443]", "[80]")).cluster
    assert a.fingerprint() != b.fingerprint()
    assert a == configfile.parse(GOOD).cluster  # the cache is not part of equality
