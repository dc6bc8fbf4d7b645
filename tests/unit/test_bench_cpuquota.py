"""The benchmark's CPU quota (bench/cpuquota.py): which cgroup hierarchy it uses, what it writes there, and,
as root on a machine with the cpu controller, that a busy process put in it gets no more than its share
and that closing it leaves no cgroup behind and no process stranded."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from cpuquota import (  # noqa: E402
    CpuQuota, QuotaError, QuotaUnavailable, add_quota_option, close_all, cpu_hierarchy, hold, quota_name, quota_problem,
    quota_settings)


def test_cgroup_v2_is_used_when_its_root_offers_the_cpu_controller(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert cpu_hierarchy(tmp_path) == ("v2", tmp_path)


def test_cgroup_v2_without_the_cpu_controller_is_a_clear_error(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset io memory pids\n")
    with pytest.raises(QuotaUnavailable, match="cpu controller is not available"):
        cpu_hierarchy(tmp_path)


@pytest.mark.parametrize("name", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_is_found_under_either_name_of_its_cpu_hierarchy(tmp_path, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_hierarchy(tmp_path) == ("v1", tmp_path / name)


def test_no_cpu_controller_at_all_is_a_clear_error(tmp_path):
    (tmp_path / "memory").mkdir()
    with pytest.raises(QuotaUnavailable, match="no cgroup cpu controller"):
        cpu_hierarchy(tmp_path)


def test_the_quota_is_the_share_of_one_period_in_each_version():
    assert quota_settings("v2", 50) == {"cpu.max": "2000 4000"}
    # v1 checks a quota against the period in force: the period goes first.
    assert list(quota_settings("v1", 50).items()) == [("cpu.cfs_period_us", "4000"), ("cpu.cfs_quota_us", "2000")]
    assert quota_settings("v2", 100, period_us=20000) == {"cpu.max": "20000 20000"}


def test_a_small_share_gets_a_longer_period_rather_than_a_quota_below_the_kernel_s_minimum():
    assert quota_settings("v2", 25) == {"cpu.max": "1000 4000"}
    assert quota_settings("v2", 10) == {"cpu.max": "1000 10000"}
    assert quota_settings("v1", 1) == {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "1000"}


def test_on_cgroup_v2_the_cpu_controller_is_enabled_and_the_quota_written_to_cpu_max(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("memory pids\n")
    quota = CpuQuota("bench-a", 25, fs=tmp_path)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
    assert (tmp_path / "bench-a" / "cpu.max").read_text() == "1000 4000"
    quota.add([4242])
    assert (tmp_path / "bench-a" / "cgroup.procs").read_text() == "4242"


def test_on_cgroup_v1_the_period_and_the_quota_are_written_in_the_cpu_hierarchy(tmp_path):
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    quota = CpuQuota("bench-b", 50, fs=tmp_path)
    assert quota.path == tmp_path / "cpu,cpuacct" / "bench-b"
    assert (quota.path / "cpu.cfs_period_us").read_text() == "4000"
    assert (quota.path / "cpu.cfs_quota_us").read_text() == "2000"


def test_a_cgroup_of_the_same_name_already_there_is_a_clear_error(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu\n")
    (tmp_path / "cgroup.subtree_control").write_text("cpu\n")
    (tmp_path / "bench-c").mkdir()
    with pytest.raises(QuotaError, match="cannot make the cgroup"):
        CpuQuota("bench-c", 25, fs=tmp_path)


@pytest.mark.parametrize("percent", [0, -5, 101])
def test_a_quota_outside_one_cpu_is_refused(percent):
    with pytest.raises(QuotaError, match="from 1 to 100"):
        quota_settings("v2", percent)


def _real_quota(label: str, percent: int) -> CpuQuota:
    """A real cgroup, or a skip where the machine gives this process none (any other failure fails)."""
    if os.geteuid() != 0:
        pytest.skip("making cgroups needs root")
    try:
        return CpuQuota(quota_name(label), percent)
    except QuotaUnavailable as e:
        pytest.skip(f"no cgroup cpu quota to be had here: {e}")


#: A busy loop that ends by itself after 1 s of wall time, whatever CPU it got.
BUSY = [sys.executable, "-c", "import time\nend = time.monotonic() + 1.0\nwhile time.monotonic() < end: pass\n"]


def _cpu_share(quota: CpuQuota | None) -> float:
    """The share of its wall time a busy loop got, in `quota` or outside any."""
    busy = subprocess.Popen(BUSY)
    if quota is not None:
        quota.add([busy.pid])
    started = time.monotonic()
    _, status, usage = os.wait4(busy.pid, 0)
    busy.returncode = os.waitstatus_to_exitcode(status)
    assert busy.returncode == 0
    return (usage.ru_utime + usage.ru_stime) / (time.monotonic() - started)


def test_a_busy_process_in_the_quota_gets_its_share_and_no_more():
    quota = _real_quota("test-busy", 20)
    try:
        free = _cpu_share(None)
        if free < 0.7:
            pytest.skip(f"the machine is too busy to tell a quota from contention (a free loop got {free:.0%})")
        held = _cpu_share(quota)
    finally:
        quota.close()
    # Held to 20% it gets about a fifth of the CPU a free one got just before.
    assert 0 < held < 0.5 * free, (held, free)
    assert not quota.path.exists()


def test_closing_the_quota_moves_a_process_still_in_it_to_the_parent_and_removes_the_cgroup():
    quota = _real_quota("test-close", 50)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        quota.add([sleeper.pid])
        assert quota.pids() == [sleeper.pid]
        close_all([quota])
        assert not quota.path.exists()
        assert sleeper.poll() is None  # it was moved out, not killed
        assert quota.path.name not in Path(f"/proc/{sleeper.pid}/cgroup").read_text()
    finally:
        sleeper.kill()
        sleeper.wait()
        quota.close()


def test_close_all_closes_every_quota_even_after_one_fails():
    class Fails:
        def close(self):
            raise QuotaError("stuck")

    class Closes:
        closed = False

        def close(self):
            self.closed = True

    last = Closes()
    quotas = [Fails(), last]
    with pytest.raises(QuotaError, match="stuck"):
        close_all(quotas)
    assert last.closed and quotas == []


def test_the_cgroup_names_are_this_run_s_own():
    assert quota_name("hapair") == f"hapair-bench-{os.getpid()}-hapair"


def test_a_benchmark_is_told_before_it_starts_why_its_quota_cannot_be_had(tmp_path, monkeypatch):
    assert quota_problem(None) is None and quota_problem(0) is None  # none asked for
    assert quota_problem(150).startswith("--quota: a CPU quota runs from 1 to 100")
    assert "no cgroup cpu controller" in quota_problem(25, fs=tmp_path)  # a machine without one


def test_the_trial_cgroup_of_a_quota_check_is_removed():
    _real_quota("test-probe", 25).close()  # (skips where no quota can be had)
    assert quota_problem(25) is None
    _, parent = cpu_hierarchy()
    assert not (parent / quota_name("probe")).exists()


@pytest.mark.parametrize("value", ["0", "101", "-5", "half"])
def test_the_quota_option_refuses_a_share_outside_one_cpu(value, capsys):
    parser = argparse.ArgumentParser()
    add_quota_option(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--quota", value])
    assert "--quota" in capsys.readouterr().err
    assert parser.parse_args(["--quota", "25"]).quota == 25 and parser.parse_args([]).quota is None


def test_a_quota_whose_processes_cannot_be_added_is_still_listed_for_clean_up():
    _real_quota("test-hold", 25).close()  # (skips where no quota can be had)
    quotas: list[CpuQuota] = []
    with pytest.raises(OSError):
        hold(quotas, "test-hold", 25, [2**22 + 12345])  # above pid_max: no such process
    assert len(quotas) == 1 and quotas[0].path.exists()
    path = quotas[0].path
    close_all(quotas)
    assert not path.exists() and quotas == []
