"""Floating addresses on an interface, through netlink (pyroute2): add, remove, list, link state."""

from __future__ import annotations

import errno
from typing import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hapair.config import IPAddress


class VipManager:
    """Adds VIPs as host addresses (/32, /128) so they never bring a subnet route with them.

    With a lease, each address is added with that valid lifetime (seconds) and must be renewed: the
    kernel itself removes the VIPs of a daemon that died without cleaning up (SIGKILL, a crash), so a
    dead master cannot keep answering ARP for them."""

    def __init__(self, interface: str):
        self.interface = interface
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def _index(self) -> int:
        found = self._ipr.link_lookup(ifname=self.interface)
        if not found:
            raise OSError(errno.ENODEV, f"no interface {self.interface!r}")
        return found[0]

    def add(self, addresses: Iterable[IPAddress], lease: int | None = None) -> list[IPAddress]:
        """Adds (or renews) each address; returns those that were not there before."""
        index, held, added = self._index(), self.held(), []
        extra = {}
        if lease is not None:
            extra["IFA_CACHEINFO"] = {"ifa_preferred": lease, "ifa_valid": lease, "cstamp": 0, "tstamp": 0}
        for ip in addresses:
            self._ipr.addr("replace", index=index, address=str(ip), prefixlen=ip.max_prefixlen, **extra)
            if str(ip) not in held:
                added.append(ip)
        return added

    def remove(self, addresses: Iterable[IPAddress]) -> list[IPAddress]:
        """Removes each address that is there; returns those removed."""
        index, removed = self._index(), []
        for ip in addresses:
            try:
                self._ipr.addr("del", index=index, address=str(ip), prefixlen=ip.max_prefixlen)
                removed.append(ip)
            except NetlinkError as e:
                if e.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                    raise
        return removed

    def held(self) -> set[str]:
        index = self._index()
        return {msg.get_attr("IFA_ADDRESS") for msg in self._ipr.get_addr(index=index)}

    def link_up(self) -> bool:
        """Whether the interface can carry traffic: up, with its carrier."""
        try:
            link = self._ipr.get_links(self._index())[0]
        except OSError:
            return False
        return link.get_attr("IFLA_OPERSTATE") in ("UP", "UNKNOWN") and link.get_attr("IFLA_CARRIER", 1) == 1

    def mac(self) -> str:
        return self._ipr.get_links(self._index())[0].get_attr("IFLA_ADDRESS")
