"""The replicated document: it reproduces the cluster exactly, and carries nothing node-local."""

import json

import pytest
import yaml

from hapair import configfile
from hapair.config import NODE_LOCAL_APPLIANCE_KEYS
from hapair.lab import pair_config
from replication.document import (
    REPLICATED_KEYS,
    Verdict,
    Versioned,
    cluster_document,
    digest,
    format_duration,
    judge,
)
from replication.store import load_version, prepare, save_version, with_cluster, write_atomic

#: A node section that fills every node-local field the guide lists, with values that must never travel.
NODE_EVERYTHING = {
    "name": "lb2", "state_dir": "/var/lib/hapair-lb2", "control_socket": "/run/hapair/lb2.sock",
    "hostname": "SECRET-hostname", "dns": ["SECRET-dns"], "network": {"eth0": "SECRET-network", "bond0": "x", "vlan": 7},
    "routing": {"default": "SECRET-gateway"}, "date_time": {"ntp": "SECRET-ntp"},
    "physical_advanced": {"internet_proxy": "SECRET-proxy:3128", "firewall_table_size": 424242,
                          "smtp_relay": "SECRET-relay", "syslog": "SECRET-syslog"},
    "snmp": {"community": "SECRET-community"}, "graphing": {"enabled": "SECRET-graphing"},
    "firewall_script": "SECRET-iptables -A INPUT", "firewall_lockdown_script": "SECRET-lockdown",
    "software_updates": {"channel": "SECRET-updates"},
    "ha": {"peer": "lb1", "interface": "SECRET-eth9", "key_file": "/SECRET/key", "ping_nodes": ["198.18.0.254"],
           "hooks": ["SECRET-hook"], "paths": [{"local": "198.18.0.3", "peer": "198.18.0.2"}]},
}  # fmt: skip


def full_config(tmp_path):
    def fill(doc):
        doc["node"] = dict(NODE_EVERYTHING)
        doc["cluster"]["virtual_services"][3]["allowed_sources"] = ["198.18.0.50-198.18.0.60", "198.18.1.0/24"]

    return configfile.parse(pair_config("lb2", str(tmp_path), fill, interval="30ms", warntime="60ms", deadtime="100ms"))


def test_every_node_local_appliance_key_is_filled_by_the_fixture():
    assert set(NODE_LOCAL_APPLIANCE_KEYS) <= set(NODE_EVERYTHING)


def test_the_document_reads_back_to_the_same_cluster(tmp_path):
    config = full_config(tmp_path)
    doc = cluster_document(config.cluster)
    text = yaml.safe_dump({"node": NODE_EVERYTHING, "cluster": doc})
    assert configfile.parse(text).cluster == config.cluster


def test_no_node_local_key_or_value_is_in_the_document(tmp_path):
    config = full_config(tmp_path)
    doc = cluster_document(config.cluster)
    wire = json.dumps(doc)
    assert "SECRET" not in wire and "lb2" != config.cluster.ha.preferred_master
    for key in list(NODE_EVERYTHING) + list(NODE_EVERYTHING["ha"]):
        if key not in REPLICATED_KEYS:
            assert f'"{key}"' not in wire, key

    def keys(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield k
                yield from keys(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from keys(v)

    assert set(keys(doc)) <= REPLICATED_KEYS


@pytest.mark.parametrize("seconds, text", [(3600, "1h"), (5400, "90m"), (4, "4s"), (0.5, "500ms"), (0.03, "30ms"), (0, "0ms")])
def test_durations_are_written_exactly(seconds, text):
    assert format_duration(seconds) == text
    assert configfile.parse_duration(text) == seconds


def test_digest_is_stable_and_sensitive(tmp_path):
    doc = cluster_document(full_config(tmp_path).cluster)
    again = json.loads(json.dumps(doc))
    assert digest(doc) == digest(again)
    again["virtual_services"][0]["real_servers"][0]["weight"] = 99
    assert digest(doc) != digest(again)


@pytest.mark.parametrize(
    "running, offered, verdict",
    [((3, "a"), (4, "b"), Verdict.APPLY), ((3, "a"), (3, "a"), Verdict.CURRENT), ((3, "a"), (2, "b"), Verdict.OLDER),
     ((3, "a"), (3, "b"), Verdict.CONFLICT), ((0, ""), (1, "x"), Verdict.APPLY)],
)  # fmt: skip
def test_version_ordering(running, offered, verdict):
    assert judge(Versioned(*running), Versioned(*offered)) is verdict


def test_rewrite_keeps_the_node_section_and_comments_byte_for_byte(tmp_path):
    original = pair_config("lb2", str(tmp_path), lambda d: d["node"].update(NODE_EVERYTHING))
    original = "# lb2's own file\n" + original.replace("cluster:", "# replicated below\ncluster:", 1)
    path = tmp_path / "lb2.yaml"
    path.write_text(original)
    master = full_config(tmp_path).cluster
    doc = cluster_document(master)
    doc["virtual_services"][0]["real_servers"][0]["weight"] = 42
    new_text, parsed = prepare(str(path), doc)
    node_part = original[: original.index("cluster:")]
    assert new_text.startswith(node_part)
    assert parsed.node == configfile.parse(original).node
    assert parsed.cluster.virtual_services[0].real_servers[0].weight == 42
    # and twice over: the rewrite is stable
    assert with_cluster(new_text, doc) == new_text


def test_a_document_the_reader_refuses_is_refused_whole(tmp_path):
    path = tmp_path / "lb2.yaml"
    text = pair_config("lb2", str(tmp_path))
    path.write_text(text)
    doc = cluster_document(configfile.parse(text).cluster)
    doc["virtual_services"][0]["ports"] = [80, 70000]
    with pytest.raises(configfile.ConfigError, match="70000"):
        prepare(str(path), doc)
    assert path.read_text() == text


def test_atomic_write_and_version_state(tmp_path):
    path = tmp_path / "f"
    path.write_text("old")
    path.chmod(0o600)
    write_atomic(str(path), b"new")
    assert path.read_text() == "new" and (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temp file left
    state = tmp_path / "state" / "replication.json"
    assert load_version(str(state)) is None
    save_version(str(state), Versioned(7, "abc"), "lb1")
    assert load_version(str(state)) == (Versioned(7, "abc"), "lb1")
    state.write_text("{garbage")
    assert load_version(str(state)) is None
