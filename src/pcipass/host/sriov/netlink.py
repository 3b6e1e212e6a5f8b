"""Program VFs through rtnetlink with pyroute2, as ``ip link set PF vf N ...`` does.

One ``RTM_SETLINK`` per attribute (so a refusal names the attribute, and what went before can
be rolled back); VF state read with one ``RTM_GETLINK`` for the PF and all its VFs
(``RTEXT_FILTER_VF``, stats skipped). Netlink errors become
:class:`~pcipass.errors.VfProgrammingError` here, worded by
:func:`~pcipass.host.sriov.programmer.vf_error`; nothing of pyroute2 leaks out.

Like iproute2, an 802.1Q VLAN goes in the old ``IFLA_VF_VLAN`` (every driver takes it) and only
802.1ad uses ``IFLA_VF_VLAN_LIST``. pyroute2 (0.9.7 at least) packs that list's entry in 14
bytes, while the kernel's ``struct ifla_vf_vlan_info`` is 16, and kernels with rtnetlink's 2024
fix to that list's validation refuse anything shorter with ``EINVAL``: :func:`_pad_vlan_info`
adds the struct's tail padding once, on import, and only while pyroute2 lacks it.
"""

from __future__ import annotations

import errno as errnos
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from pcipass.errors import InvalidInput, VfProgrammingError
from pcipass.host.sriov.model import LINK_STATES, VfAttribute, VfConfig, VfSlot
from pcipass.host.sriov.programmer import VfProgrammer, no_such_pf, no_such_vf, vf_error

RTEXT_FILTER_VF = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3  # as ``ip link show`` without -s: VF stats bloat the answer
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
# The kernel fills spoofchk/trust with -1 (as u32) when the driver does not report them.
_UNREPORTED = 0xFFFFFFFF
NETNS_RUN_DIR = "/var/run/netns"  # where ``ip netns add`` mounts named namespaces
_VLAN_INFO_SIZE = 16  # sizeof(struct ifla_vf_vlan_info): vf, vlan, qos (u32), proto (be16), pad


def _pad_vlan_info() -> None:
    ivvi = ifinfmsg.vflist.vfinfo.vf_vlist.ivvi
    size = sum(struct.calcsize(fmt) for _, fmt in ivvi.fields)
    if size < _VLAN_INFO_SIZE:
        ivvi.fields = (*ivvi.fields, ("__pad", f"{_VLAN_INFO_SIZE - size}x"))


_pad_vlan_info()


class NetlinkVfProgrammer(VfProgrammer):
    """The real thing: needs CAP_NET_ADMIN, and a PF whose driver implements the VF ndo ops.

    ``netns`` names a network namespace (``ip netns`` name) to work in; it must exist.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def read(self, slot: VfSlot) -> VfConfig:
        with self._socket(slot) as ipr:
            link = self._link(ipr, slot, RTEXT_FILTER_VF | RTEXT_FILTER_SKIP_STATS)
        return parse_vf(slot, link)

    def write(self, slot: VfSlot, attribute: VfAttribute, config: VfConfig) -> None:
        spec = vf_spec(slot.vf_index, attribute, config)
        with self._socket(slot) as ipr:
            index = self._link(ipr, slot)["index"]
            try:
                ipr.link("set", index=index, vf=spec)
            except NetlinkError as exc:
                raise vf_error(slot, attribute, exc.code) from exc

    @contextmanager
    def _socket(self, slot: VfSlot) -> Iterator[Any]:
        try:
            if self.netns is None:
                ipr = IPRoute()
            else:
                if not os.path.exists(_netns_path(self.netns)):
                    # Checked first: pyroute2 leaks its event loop when the open fails.
                    raise FileNotFoundError(errnos.ENOENT, "no such network namespace")
                # pyroute2 forks a helper to enter the namespace; the helper's copy of the
                # socket is garbage, so keep its ResourceWarning out of our warnings.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ResourceWarning)
                    ipr = IPRoute(netns=self.netns, flags=0)  # flags=0: never create it
        except FileNotFoundError as exc:
            raise VfProgrammingError(
                f"cannot reach PF {slot.pf_netdev}: network namespace {self.netns!r} does "
                f"not exist", pf=slot.pf_netdev, vf_index=slot.vf_index,
                errno=errnos.ENOENT) from exc
        except OSError as exc:
            code = exc.errno if exc.errno is not None else errnos.EIO
            raise vf_error(slot, None, code, f"cannot open a netlink socket{self._where()}: "
                           f"{exc.strerror or exc}") from exc
        try:
            yield ipr
        finally:
            ipr.close()

    def _link(self, ipr: Any, slot: VfSlot, ext_mask: int | None = None) -> Any:
        query: dict[str, Any] = {"ifname": slot.pf_netdev}
        if ext_mask is not None:
            query["ext_mask"] = ext_mask
        try:
            answer = ipr.link("get", **query)
        except NetlinkError as exc:
            if exc.code == errnos.ENODEV:
                raise no_such_pf(slot, self._where()) from exc
            raise vf_error(slot, None, exc.code) from exc
        return next(iter(answer))

    def _where(self) -> str:
        return f" in network namespace {self.netns}" if self.netns else ""


def _netns_path(netns: str) -> str:
    """A bare name lives under ``ip netns``'s directory; anything with a slash is a path."""
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


def vf_spec(vf_index: int, attribute: VfAttribute, config: VfConfig) -> dict[str, Any]:
    """pyroute2's ``vf=`` argument setting one attribute (a fresh dict: pyroute2 consumes it)."""
    spec: dict[str, Any] = {"vf": vf_index}
    if attribute is VfAttribute.MAC:
        spec["mac"] = config.mac
    elif attribute is VfAttribute.VLAN:
        if config.vlan_proto == "802.1ad":
            spec["vlan"] = [{"vlan": config.vlan or 0, "qos": config.qos,
                             "proto": ETH_P_8021AD}]
        else:
            spec["vlan"] = {"vlan": config.vlan or 0, "qos": config.qos}
    elif attribute is VfAttribute.SPOOFCHK:
        spec["spoofchk"] = int(bool(config.spoofchk))
    elif attribute is VfAttribute.TRUST:
        spec["trust"] = int(bool(config.trust))
    elif attribute is VfAttribute.LINK_STATE:
        spec["link_state"] = LINK_STATES.index(config.link_state or "auto")
    else:
        spec["rate"] = {"min_tx_rate": config.min_tx_rate_mbps or 0,
                        "max_tx_rate": config.max_tx_rate_mbps or 0}
    return spec


def parse_vf(slot: VfSlot, link: Any) -> VfConfig:
    """The VF's config from a decoded ``RTM_NEWLINK`` asked for with ``RTEXT_FILTER_VF``."""
    vflist = link.get_attr("IFLA_VFINFO_LIST")
    num_vfs = link.get_attr("IFLA_NUM_VF")
    entries = vflist.get_attrs("IFLA_VF_INFO") if vflist is not None else []
    for entry in entries:
        mac = entry.get_attr("IFLA_VF_MAC")
        if mac is not None and mac["vf"] == slot.vf_index:
            return _config(slot, entry, mac["mac"])
    raise no_such_vf(slot, num_vfs if num_vfs is not None else len(entries))


def _config(slot: VfSlot, entry: Any, mac: str) -> VfConfig:
    vlan, qos, proto = 0, 0, ETH_P_8021Q
    vlist = entry.get_attr("IFLA_VF_VLAN_LIST")
    infos = vlist.get_attrs("IFLA_VF_VLAN_INFO") if vlist is not None else []
    if infos:
        vlan, qos, proto = infos[0]["vlan"], infos[0]["qos"], infos[0]["proto"]
    elif (old := entry.get_attr("IFLA_VF_VLAN")) is not None:
        vlan, qos = old["vlan"], old["qos"]
    rate = entry.get_attr("IFLA_VF_RATE")
    if rate is not None:
        low, high = rate["min_tx_rate"], rate["max_tx_rate"]
    else:
        tx = entry.get_attr("IFLA_VF_TX_RATE")
        low, high = 0, tx["tx_rate"] if tx is not None else 0
    state = _value(entry, "IFLA_VF_LINK_STATE", "link_state")
    try:
        return VfConfig(
            mac=mac,
            vlan=vlan,
            qos=qos if vlan else 0,
            vlan_proto="802.1ad" if vlan and proto == ETH_P_8021AD else "802.1Q",
            spoofchk=_flag(entry, "IFLA_VF_SPOOFCHK", "spoofchk"),
            trust=_flag(entry, "IFLA_VF_TRUST", "trust"),
            link_state=LINK_STATES[state] if state is not None and state < 3 else None,
            min_tx_rate_mbps=low,
            max_tx_rate_mbps=high,
        )
    except InvalidInput as exc:
        raise vf_error(slot, None, None, f"the kernel reported a value pcipass does not "
                       f"understand: {exc.message}") from exc


def _value(entry: Any, nla: str, key: str) -> int | None:
    attr = entry.get_attr(nla)
    if attr is None or attr[key] == _UNREPORTED:
        return None
    return int(attr[key])


def _flag(entry: Any, nla: str, key: str) -> bool | None:
    value = _value(entry, nla, key)
    return None if value is None else bool(value)
