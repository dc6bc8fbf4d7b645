"""bench/one_source.py's configuration: the benchmark's own, with persistence switched for every service."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import proxy_vs_haproxy  # noqa: E402
from one_source import with_persistence  # noqa: E402


def test_every_service_loses_its_persistence_and_nothing_else_changes(tmp_path):
    original = proxy_vs_haproxy.hapair_config(tmp_path, 2)
    text = with_persistence("none", proxy_vs_haproxy.hapair_config)(tmp_path, 2)
    assert text.count("mode: none") == original.count("mode: source_ip") == len(proxy_vs_haproxy.WORKLOADS)
    assert text.replace("mode: none", "mode: source_ip") == original


def test_a_configuration_without_source_persistence_to_switch_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="no longer sets source_ip persistence"):
        with_persistence("none", lambda workdir, workers: "cluster: {}\n")(tmp_path, 2)
