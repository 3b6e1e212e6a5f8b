"""Discover a host's PCI devices and compute capacity from sysfs.

Reads ``ROOT/sys/bus/pci/devices/*``, ``ROOT/sys/kernel/iommu_groups/*`` and
``ROOT/sys/devices/system/node/*`` (falling back to ``sys/devices/system/cpu`` and
``proc/meminfo``), so a test tree under any root reads like the real ``/``. A PF's ``vpd``
gives the card serial number its VFs report too (:mod:`pcipass.pci.vpd`).

What a real host throws at it is a value, not a crash: a file that cannot be read becomes a
warning on that device; a device without vendor/device ids, a stale ``bus/pci/devices`` link
or a VF whose PF is not visible is skipped with a logged warning; only a missing
``sys/bus/pci/devices`` fails the run (:class:`~pcipass.errors.DiscoveryError`).

Each device directory is opened once and every attribute read relative to it (``dir_fd``), and
each IOMMU group listed once, so a host with a thousand VFs is read in a fraction of a second.
The device spec is not applied here: every device comes back ``assignable=False``, ``tags={}``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pcipass.errors import DiscoveryError, InvalidAddress
from pcipass.host.pciids import PciIds
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, HostInfo, NetDev, NumaNode, PciDevice
from pcipass.pci.inventory import Inventory
from pcipass.pci.vpd import MAX_VPD_BYTES, VpdFormatError, parse_vpd

log = logging.getLogger(__name__)

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_VIRTFN = re.compile(r"^virtfn(\d+)$")
_VIRTIO = re.compile(r"^virtio\d+$")
_NODE = re.compile(r"^node(\d+)$")
_CPU = re.compile(r"^cpu(\d+)$")
_HEXDIGITS = frozenset("0123456789abcdef")
# O_NONBLOCK: sysfs never holds a FIFO, but a broken tree might; never hang on one.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY
_TEXT_MAX = 4096  # a sysfs attribute is at most a page


def discover(root: Path, *, pci_ids: PciIds | None = None,
             hostname: str | None = None) -> Inventory:
    """Everything the host under ``root`` shows: devices sorted by address, and the host."""
    root = Path(root)
    devices_dir = root / "sys" / "bus" / "pci" / "devices"
    try:
        names = os.listdir(devices_dir)
    except OSError as exc:
        raise DiscoveryError(
            f"cannot list PCI devices in {devices_dir} ({exc.strerror or exc}): is sysfs "
            "mounted there, and is the discovery root right?"
        ) from exc
    host = discover_host(root, hostname=hostname)
    node_ids = {n.id for n in host.numa_nodes}
    groups = _IommuGroups(root / "sys" / "kernel" / "iommu_groups")

    raws: dict[PciAddress, _Raw] = {}
    for name in names:
        try:
            addr = PciAddress.parse(name)
        except InvalidAddress:
            log.warning("skipping %s in %s: not a PCI address", name, devices_dir)
            continue
        raw = _read_device(os.path.join(devices_dir, name), addr)
        if raw is not None:
            raws[addr] = raw

    vf_index: dict[PciAddress, int] = {}
    for raw in raws.values():
        for index, vf in raw.virtfns:
            vf_index[vf] = index

    devices = []
    for addr in sorted(raws):
        raw = raws[addr]
        if raw.physfn is not None:
            parent = raws.get(raw.physfn)
            if parent is None or not parent.is_pf:
                log.warning("skipping VF %s: its PF %s is not a visible SR-IOV PF",
                            addr, raw.physfn)
                continue
            raw.card_serial_number = parent.card_serial_number  # the card's, as Nova reads it
        devices.append(_build(raw, vf_index, groups, node_ids, pci_ids))
    return Inventory(host=host, devices=tuple(devices))


# --- one device ------------------------------------------------------------------------

@dataclass(slots=True)
class _Raw:
    """What one device directory said, before cross-device facts are known."""

    address: PciAddress
    vendor_id: str
    product_id: str
    class_code: str
    subsystem_vendor_id: str | None = None
    subsystem_product_id: str | None = None
    is_pf: bool = False
    total_vfs: int | None = None
    num_vfs: int | None = None
    physfn: PciAddress | None = None
    virtfns: list[tuple[int, PciAddress]] = field(default_factory=list)
    numa_node: int | None = None
    iommu_group: int | None = None
    driver: str | None = None
    netdevs: list[NetDev] = field(default_factory=list)
    card_serial_number: str | None = None
    warnings: list[str] = field(default_factory=list)


class _DeviceDir:
    """Reads of one open device directory; a failed read leaves a warning, never raises."""

    __slots__ = ("entries", "fd", "warnings")

    def __init__(self, fd: int, entries: set[str]) -> None:
        self.fd = fd
        self.entries = entries
        self.warnings: list[str] = []

    def text(self, name: str) -> str | None:
        data = self.data(name, _TEXT_MAX, until_eof=False)
        return None if data is None else _text(data)

    def data(self, name: str, limit: int, *, until_eof: bool = True) -> bytes | None:
        if name not in self.entries:
            return None
        try:
            return _read_bytes(name, self.fd, limit, until_eof=until_eof)
        except OSError as exc:
            self.warnings.append(f"{name}: cannot read ({exc.strerror or exc})")
            return None

    def link(self, name: str) -> str | None:
        """The last component of the link's target (targets are relative, any depth)."""
        if name not in self.entries:
            return None
        try:
            return os.path.basename(os.readlink(name, dir_fd=self.fd).rstrip("/"))
        except OSError as exc:
            self.warnings.append(f"{name}: cannot read link ({exc.strerror or exc})")
            return None

    def hex_id(self, name: str, digits: int) -> str | None:
        text = self.text(name)
        if text is None:
            return None
        value = text.lower().removeprefix("0x")
        if 0 < len(value) <= digits and all(c in _HEXDIGITS for c in value):
            return value.zfill(digits)
        self.warnings.append(f"{name}: unexpected value {text!r}")
        return None

    def integer(self, name: str) -> int | None:
        text = self.text(name)
        if text is None:
            return None
        try:
            return int(text)
        except ValueError:
            self.warnings.append(f"{name}: unexpected value {text!r}")
            return None

    def address_link(self, name: str) -> PciAddress | None:
        target = self.link(name)
        if target is None:
            return None
        try:
            return PciAddress.parse(target)
        except InvalidAddress:
            self.warnings.append(f"{name}: link target {target!r} is not a PCI address")
            return None


def _read_bytes(name: str, dir_fd: int, limit: int, *, until_eof: bool = False) -> bytes:
    """Up to ``limit`` bytes of ``name``. A sysfs attribute comes whole in one read (a second
    would cost a syscall per attribute on hosts with thousands of VFs); a binary file such as
    ``vpd`` may come in pieces: ``until_eof`` reads on to the end."""
    fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    try:
        chunk = os.read(fd, limit)
        if not until_eof:
            return chunk
        chunks = [chunk]
        size = len(chunk)
        while chunk and size < limit:
            chunk = os.read(fd, limit - size)
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _text(data: bytes) -> str:
    return data.decode("ascii", "replace").strip()


def _read_text(name: str, dir_fd: int) -> str:
    return _text(_read_bytes(name, dir_fd, _TEXT_MAX))


def _read_device(path: str, addr: PciAddress) -> _Raw | None:
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        log.warning("skipping %s: its sysfs directory cannot be opened (%s)",
                    addr, exc.strerror or exc)
        return None
    try:
        d = _DeviceDir(fd, set(os.listdir(fd)))
        return _read_open_device(d, addr)
    except OSError as exc:  # the directory vanished under us (hot-unplug mid-read)
        log.warning("skipping %s: its sysfs directory cannot be listed (%s)",
                    addr, exc.strerror or exc)
        return None
    finally:
        os.close(fd)


def _read_open_device(d: _DeviceDir, addr: PciAddress) -> _Raw | None:
    vendor = d.hex_id("vendor", 4)
    product = d.hex_id("device", 4)
    if vendor is None or product is None:
        why = "; ".join(d.warnings) or "no vendor/device attribute"
        log.warning("skipping %s: vendor and device ids are unknown (%s)", addr, why)
        return None
    class_code = d.hex_id("class", 6)
    raw = _Raw(address=addr, vendor_id=vendor, product_id=product,
               class_code=class_code if class_code is not None else "ff0000",
               warnings=d.warnings)
    if class_code is None:
        d.warnings.append("class: unknown, reported as ff0000 (unassigned class)")
    raw.subsystem_vendor_id = d.hex_id("subsystem_vendor", 4)
    raw.subsystem_product_id = d.hex_id("subsystem_device", 4)

    if "physfn" in d.entries:
        raw.physfn = d.address_link("physfn")
        if raw.physfn is None:
            log.warning("skipping VF %s: its physfn link cannot be read", addr)
            return None
    elif "sriov_totalvfs" in d.entries:
        raw.is_pf = True
        raw.total_vfs = _count(d, "sriov_totalvfs")
        raw.num_vfs = _count(d, "sriov_numvfs")
        for name in d.entries:
            m = _VIRTFN.match(name)
            if m is not None:
                vf = d.address_link(name)
                if vf is not None:
                    raw.virtfns.append((int(m[1]), vf))
        # Only a PF's VPD is read (its VFs report its serial, as Nova's do): reading VPD goes
        # to the card's EEPROM and is slow, and nothing else needs it.
        raw.card_serial_number = _card_serial_number(d)

    node = d.integer("numa_node")
    raw.numa_node = node if node is not None and node >= 0 else None
    group = d.link("iommu_group")
    if group is not None:
        if group.isdigit():
            raw.iommu_group = int(group)
        else:
            d.warnings.append(f"iommu_group: link target {group!r} is not a group number")
    raw.driver = d.link("driver")
    if "net" in d.entries:
        raw.netdevs = _read_netdevs(d, "net")
    # virtio-net puts its interface one level down, under the virtio bus device.
    for name in sorted(d.entries):
        if _VIRTIO.match(name):
            raw.netdevs += _read_netdevs(d, f"{name}/net", missing_ok=True)
    return raw


def _card_serial_number(d: _DeviceDir) -> str | None:
    data = d.data("vpd", MAX_VPD_BYTES)
    if data is None:
        return None
    try:
        return parse_vpd(data).serial_number
    except VpdFormatError as exc:
        d.warnings.append(f"vpd: not a valid VPD record ({exc}); no card serial number")
        return None


def _count(d: _DeviceDir, name: str) -> int | None:
    value = d.integer(name)
    if value is not None and value < 0:
        d.warnings.append(f"{name}: negative value {value}")
        return None
    return value


def _read_netdevs(d: _DeviceDir, where: str, *, missing_ok: bool = False) -> list[NetDev]:
    try:
        net_fd = os.open(where, _DIR_FLAGS, dir_fd=d.fd)
    except FileNotFoundError:
        if missing_ok:
            return []
        d.warnings.append(f"{where}: cannot read (No such file or directory)")
        return []
    except OSError as exc:
        d.warnings.append(f"{where}: cannot read ({exc.strerror or exc})")
        return []
    try:
        names = sorted(os.listdir(net_fd))
        netdevs = []
        for ifname in names:
            mac: str | None = None
            try:
                text = _read_text(f"{ifname}/address", net_fd).lower()
            except FileNotFoundError:
                text = ""
            except OSError as exc:
                d.warnings.append(f"{where}/{ifname}/address: cannot read ({exc.strerror or exc})")
                text = ""
            # InfiniBand and other non-Ethernet link layers have longer addresses: no MAC.
            if _MAC.match(text):
                mac = text
            netdevs.append(NetDev(name=ifname, mac=mac))
        return netdevs
    finally:
        os.close(net_fd)


class _IommuGroups:
    """Members of each group, listed once and only for groups some device names."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._members: dict[int, tuple[PciAddress, ...] | None] = {}

    def members(self, group: int) -> tuple[PciAddress, ...] | None:
        if group not in self._members:
            self._members[group] = self._list(group)
        return self._members[group]

    def _list(self, group: int) -> tuple[PciAddress, ...] | None:
        try:
            names = os.listdir(os.path.join(self.path, str(group), "devices"))
        except OSError:
            return None
        found = set()
        for name in names:
            try:
                found.add(PciAddress.parse(name))
            except InvalidAddress:
                continue  # a non-PCI member (platform device): not ours to report
        return tuple(sorted(found))


def _build(raw: _Raw, vf_index: dict[PciAddress, int], groups: _IommuGroups,
           node_ids: set[int], pci_ids: PciIds | None) -> PciDevice:
    warnings = raw.warnings
    index = None
    if raw.physfn is not None:
        index = vf_index.get(raw.address)
        if index is None:
            warnings.append(f"no virtfn link of PF {raw.physfn} names this VF: index unknown")
    numa = raw.numa_node
    if numa is not None and node_ids and numa not in node_ids:
        warnings.append(f"numa_node: {numa} is not one of the host's NUMA nodes")
        numa = None
    members: tuple[PciAddress, ...] = ()
    if raw.iommu_group is not None:
        listed = groups.members(raw.iommu_group)
        if listed is None:
            warnings.append(f"iommu_group: group {raw.iommu_group} has no readable devices/ "
                            "directory; members unknown")
            listed = ()
        if raw.address not in listed:
            listed = tuple(sorted((*listed, raw.address)))
        members = listed
    if raw.physfn is not None:
        dev_type = DevType.VF
    elif raw.is_pf:
        dev_type = DevType.PF
    else:
        dev_type = DevType.PCI
    return PciDevice(
        address=raw.address,
        vendor_id=raw.vendor_id,
        product_id=raw.product_id,
        class_code=raw.class_code,
        dev_type=dev_type,
        subsystem_vendor_id=raw.subsystem_vendor_id,
        subsystem_product_id=raw.subsystem_product_id,
        parent_addr=raw.physfn,
        vf_index=index,
        total_vfs=raw.total_vfs,
        num_vfs=raw.num_vfs,
        numa_node=numa,
        iommu_group=raw.iommu_group,
        iommu_group_members=members,
        driver=raw.driver,
        netdevs=tuple(raw.netdevs),
        name=pci_ids.name(raw.vendor_id, raw.product_id) if pci_ids is not None else None,
        card_serial_number=raw.card_serial_number,
        warnings=tuple(warnings),
    )


# --- the host --------------------------------------------------------------------------

def discover_host(root: Path, *, hostname: str | None = None) -> HostInfo:
    """NUMA nodes, CPU count and memory; the hostname only for the real root ``/``."""
    root = Path(root)
    if hostname is None and _is_real_root(root):
        hostname = socket.gethostname()
    nodes = _read_numa_nodes(root / "sys" / "devices" / "system" / "node")
    cpus = len({c for n in nodes for c in n.cpus})
    if cpus == 0:
        cpus = _count_cpus(root / "sys" / "devices" / "system" / "cpu")
    memory_mb = sum(n.memory_mb for n in nodes)
    if memory_mb == 0:
        memory_mb = _meminfo_mb(root / "proc" / "meminfo") or 0
    return HostInfo(hostname=hostname, cpus=cpus, memory_mb=memory_mb, numa_nodes=nodes)


def _is_real_root(root: Path) -> bool:
    try:
        return root.resolve() == Path("/")
    except OSError:
        return False


def parse_cpulist(text: str) -> tuple[int, ...]:
    """``"0-3,8-11"`` -> ``(0, 1, 2, 3, 8, 9, 10, 11)``; raises ValueError on anything else."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        first = int(lo)
        last = int(hi) if sep else first
        if first < 0 or last < first:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def _read_host_file(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s (%s)", path, exc.strerror or exc)
        return None


def _read_numa_nodes(path: Path) -> tuple[NumaNode, ...]:
    try:
        names = os.listdir(path)
    except OSError:
        return ()
    nodes = []
    for name in names:
        m = _NODE.match(name)
        if m is None:
            continue
        node_dir = path / name
        cpus: tuple[int, ...] = ()
        text = _read_host_file(node_dir / "cpulist")
        if text is not None:
            try:
                cpus = parse_cpulist(text)
            except ValueError:
                log.warning("%s/cpulist: unexpected value %r", node_dir, text.strip())
        memory_mb = _meminfo_mb(node_dir / "meminfo") or 0
        nodes.append(NumaNode(id=int(m[1]), cpus=cpus, memory_mb=memory_mb))
    return tuple(sorted(nodes, key=lambda n: n.id))


def _meminfo_mb(path: Path) -> int | None:
    """MemTotal from ``proc/meminfo`` or ``node<N>/meminfo`` (``Node 0 MemTotal: 1 kB``)."""
    text = _read_host_file(path)
    if text is None:
        return None
    for line in text.splitlines():
        words = line.split()  # "MemTotal: 131072 kB" or "Node 0 MemTotal: 131072 kB"
        if "MemTotal:" in words:
            i = words.index("MemTotal:")
            try:
                return int(words[i + 1]) // 1024
            except (IndexError, ValueError):
                break
    log.warning("%s: no MemTotal line", path)
    return None


def _count_cpus(path: Path) -> int:
    text = _read_host_file(path / "online")
    if text is not None:
        try:
            return len(parse_cpulist(text))
        except ValueError:
            log.warning("%s/online: unexpected value %r", path, text.strip())
    try:
        return sum(1 for name in os.listdir(path) if _CPU.match(name))
    except OSError:
        return 0
