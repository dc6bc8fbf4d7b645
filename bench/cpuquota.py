"""A CPU quota for a proxy under test: a cgroup whose processes together get a fixed share of one CPU.

Why: with the proxy on one core and the load generators on the other, bulk transfers are limited by the
load generators' core (it runs the iperf3 client and server and their TCP work: 95-97% busy against
50-60% for either proxy), so their throughput says more about that core than about the proxy, and a
round's figure swings by 15% either way. Held to the same quota, each proxy is the bottleneck, and the
throughput is what it makes of the CPU it has.

The cgroup is the kernel's CFS bandwidth control: cgroup v2 `cpu.max`, or cgroup v1
`cpu.cfs_quota_us` and `cpu.cfs_period_us`. The time the kernel spends in a process's context (its system
calls, and the softirq work they set off, with this kernel's accounting) counts against its quota, as
it counts in the benchmark's CPU figures.

A quota is not a slower CPU: the proxy runs for its quota, then stops until the period ends, while its
senders' data piles up. The period is kept short (4 ms; longer only where the quota would fall below
the kernel's 1 ms minimum) so that each stop is short. The regimes of bulk transfers on loopback remain
(bench/proxy_vs_haproxy.py explains them): held to 25%, one stream stayed in one regime in every
round for either proxy (its rounds within about 20% of each other), but 8 streams ran at 11-16 ms per
Gbit in some rounds and 41-59 in others, either proxy, not using all of its quota in the cheaper
regime. Compare 8 streams like with like (the benchmark's notes).
"""

from __future__ import annotations

import argparse
import errno
import os
import time
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
#: The CFS period in microseconds, and the smallest quota the kernel accepts.
PERIOD_US = 4_000
MIN_QUOTA_US = 1_000


class QuotaError(RuntimeError):
    pass


class QuotaUnavailable(QuotaError):
    """This machine (or container) gives this process no cgroup cpu controller to put a quota in: none
    there, one it may not enable (EBUSY where the cgroup holds processes), or a cgroup file system it
    may not write (read-only, as containers often mount it)."""


#: errno values that say a cgroup cannot be made here at all, rather than that something went wrong.
_UNAVAILABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.EBUSY}
#: The parents whose cpu controller a CpuQuota enabled, to be disabled again once their last one closes.
_ENABLED: set[Path] = set()


def cpu_hierarchy(fs: Path = CGROUP_FS) -> tuple[str, Path]:
    """Which cgroup version holds the cpu controller here, and the directory new cgroups go in."""
    if (fs / "cgroup.controllers").exists():
        if "cpu" not in (fs / "cgroup.controllers").read_text().split():
            raise QuotaUnavailable(f"the cpu controller is not available in {fs} (cgroup.controllers)")
        return "v2", fs
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (fs / name / "cpu.cfs_quota_us").exists():
            return "v1", fs / name
    raise QuotaUnavailable(f"no cgroup cpu controller with CFS bandwidth control under {fs}")


def quota_problem(percent: int | None, fs: Path = CGROUP_FS) -> str | None:
    """Why a --quota of `percent` cannot be had here (None: it can, or none was asked for), for a benchmark
    to say before it starts anything: a trial cgroup is made and removed, which is the only sure test."""
    if not percent:
        return None
    try:
        CpuQuota(quota_name("probe"), percent, fs).close()
    except QuotaError as e:
        return f"--quota: {e}"
    return None


def quota_settings(version: str, percent: int, period_us: int = PERIOD_US) -> dict[str, str]:
    """The files a cgroup of `version` is given to hold its processes to `percent` of one CPU, in the order
    they are written (v1 checks the quota against the period it has at the time). The period is
    `period_us`, or longer where the quota would be below the kernel's minimum."""
    if not 1 <= percent <= 100:
        raise QuotaError(f"a CPU quota runs from 1 to 100 per cent of one CPU, not {percent}")
    quota = period_us * percent // 100
    if quota < MIN_QUOTA_US:
        quota, period_us = MIN_QUOTA_US, MIN_QUOTA_US * 100 // percent
    if version == "v2":
        return {"cpu.max": f"{quota} {period_us}"}
    return {"cpu.cfs_period_us": str(period_us), "cpu.cfs_quota_us": str(quota)}


def quota_period(percent: int) -> str:
    """The quota and period of `percent`, as the benchmark's header gives them."""
    quota, period = quota_settings("v2", percent)["cpu.max"].split()
    return f"{int(quota) / 1000:g} ms of every {int(period) / 1000:g} ms"


class CpuQuota:
    """One cgroup, `percent` of one CPU for all the processes put in it (and the children they fork)."""

    def __init__(self, name: str, percent: int, fs: Path = CGROUP_FS):
        quota_settings("v2", percent)  # a bad share is refused before anything is looked at
        self.version, self.parent = cpu_hierarchy(fs)
        settings = quota_settings(self.version, percent)
        self.percent = percent
        self.path = self.parent / name
        if self.version == "v2":
            control = self.parent / "cgroup.subtree_control"
            if "cpu" not in control.read_text().split():
                try:
                    control.write_text("+cpu")
                except OSError as e:
                    raise QuotaUnavailable(f"cannot enable the cpu controller in {control}: {e.strerror}") from e
                _ENABLED.add(self.parent)
        try:
            self.path.mkdir()
        except OSError as e:
            kind = QuotaUnavailable if e.errno in _UNAVAILABLE else QuotaError
            raise kind(f"cannot make the cgroup {self.path}: {e.strerror}") from e
        try:
            for file, value in settings.items():
                (self.path / file).write_text(value)
        except BaseException as e:  # Ctrl-C included: the directory made must not stay
            self.close()
            if isinstance(e, OSError):
                raise QuotaError(f"cannot set {self.path / file} to {value}: {e.strerror}") from e
            raise

    def add(self, pids: list[int]) -> None:
        for pid in pids:
            (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]

    def close(self) -> None:
        """Removes the cgroup. A process still in it (one that would not stop, or forked meanwhile) is moved
        to the parent cgroup first; and the parent's cpu controller, if a CpuQuota enabled it, is disabled
        again once no cgroup under it uses it."""
        if self.path.exists():
            for _ in range(50):  # a process that just exited leaves its cgroup a moment later
                for pid in self.pids():
                    try:
                        (self.parent / "cgroup.procs").write_text(str(pid))
                    except ProcessLookupError:
                        pass  # it exited meanwhile
                try:
                    self.path.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                raise QuotaError(f"cannot remove the cgroup {self.path}")
        if self.parent in _ENABLED:
            try:
                (self.parent / "cgroup.subtree_control").write_text("-cpu")
                _ENABLED.discard(self.parent)
            except OSError:
                pass  # another quota under it still uses it: the last one to close disables it


def close_all(quotas: list[CpuQuota]) -> None:
    """Closes every quota, each even if another one failed to; then raises the first failure."""
    failure = None
    for quota in quotas:
        try:
            quota.close()
        except QuotaError as e:
            failure = failure or e
    quotas.clear()
    if failure is not None:
        raise failure


def hold(quotas: list[CpuQuota], label: str, percent: int, pids: list[int]) -> None:
    """Puts `pids` in a quota of their own, listed in `quotas` before they are added, so that a clean-up
    of `quotas` removes it whatever fails next."""
    quotas.append(CpuQuota(quota_name(label), percent))
    quotas[-1].add(pids)


def _percent(text: str) -> int:
    try:
        percent = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of per cent: {text!r}") from None
    if not 1 <= percent <= 100:
        raise argparse.ArgumentTypeError(f"runs from 1 to 100 (per cent of one CPU), not {percent}")
    return percent


def add_quota_option(parser: argparse.ArgumentParser, help: str = "hold each proxy to PERCENT of one CPU") -> None:
    """The --quota PERCENT option the benchmarks share; argparse refuses a share outside 1-100."""
    parser.add_argument("--quota", type=_percent, metavar="PERCENT", help=help)


def quota_name(label: str) -> str:
    """A cgroup name of this benchmark run's own, so that two runs never share one."""
    return f"hapair-bench-{os.getpid()}-{label}"
