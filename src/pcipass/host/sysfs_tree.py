"""Write a fake sysfs tree the way the kernel lays it out, under any root directory.

Tests, the benchmark and the demo's simulated hosts all discover devices from trees built
here, so the layout follows the kernel (see ``/work/shared/design/sysfs.md``) rather than
what discovery happens to read:

- each function is a real directory under ``sys/devices/pci<dom>:<bus>/``, nested under its
  upstream bridge when it has one (``.../0000:16:02.0/0000:17:00.0``); SR-IOV VFs sit beside
  their PF; devices behind an Intel VMD controller sit under ``<vmd>/pci10000:00/``;
- ``sys/bus/pci/devices/<addr>``, ``driver``, ``iommu_group``, ``physfn``, ``virtfnN``,
  ``subsystem`` and the IOMMU group's ``devices/<addr>`` are *relative* symlinks, so a tree
  can be moved or read under any root;
- attribute files hold what the kernel prints (``0x10de``, ``0x030200``, ``-1``, ``0-3,8-11``).

Anomalies a real host shows are made on purpose with :meth:`SysfsTree.make_unreadable`,
:meth:`SysfsTree.dangle_link` and :meth:`SysfsTree.add_stale_device_link`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pcipass.pci.address import PciAddress

AddressLike = PciAddress | str


def _addr(value: AddressLike) -> PciAddress:
    return value if isinstance(value, PciAddress) else PciAddress.parse(value)


def _hex_id(value: str, digits: int) -> str:
    norm = value.lower().removeprefix("0x")
    if len(norm) != digits or any(c not in "0123456789abcdef" for c in norm):
        raise ValueError(f"{value!r} is not {digits} hex digits")
    return norm


def format_cpulist(cpus: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 8]`` -> ``"0-3,8"``, as the kernel prints a CPU list."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _mac_plus(mac: str, n: int) -> str:
    value = (int(mac.replace(":", ""), 16) + n) & 0xFFFFFFFFFFFF
    raw = f"{value:012x}"
    return ":".join(raw[i:i + 2] for i in range(0, 12, 2))


@dataclass(frozen=True, slots=True)
class FakeNetDev:
    name: str
    mac: str | None = None  # None: the netdev has no address file


@dataclass(frozen=True, slots=True)
class FakeSriov:
    """A PF's SR-IOV capability: what its VFs look like once enabled.

    VF ``i`` gets routing id ``PF + first_vf_offset + i * vf_stride`` (the PCIe rule), so VFs
    may spill onto the next bus numbers as on real cards.
    """

    total_vfs: int
    vf_product_id: str
    vf_driver: str | None = None
    first_vf_offset: int = 1
    vf_stride: int = 1
    vf_netdevs: bool = False  # VFs bound to a net driver show ``<pf netdev>v<i>``
    vf_mac_base: str | None = None  # VF i's MAC is this + i; default derived from the PF
    vf_iommu_groups: bool = True  # each VF its own group (when the PF has one)


@dataclass(frozen=True, slots=True)
class FakeDevice:
    """One PCI function to write. Ids are 4 (class: 6) hex digits, with or without ``0x``."""

    address: AddressLike
    vendor_id: str
    product_id: str
    class_code: str
    subsystem_vendor_id: str | None = None  # default: vendor_id
    subsystem_product_id: str | None = None  # default: "0000"
    numa_node: int | None = None  # None: the file says -1 (the platform does not say)
    numa_file: bool = True  # False: no numa_node file at all
    iommu_group: int | None = None  # None: no IOMMU, no iommu_group link
    driver: str | None = None  # None: unbound
    netdevs: tuple[FakeNetDev, ...] = ()
    bridge: AddressLike | None = None  # upstream bridge; None: on a root bus
    sriov: FakeSriov | None = None  # makes it a PF (sriov_totalvfs), VFs disabled at first
    vpd: bytes | None = None  # the ``vpd`` file's bytes (pcipass.pci.vpd.encode_vpd); None: none


@dataclass(slots=True)
class _Entry:
    dev: FakeDevice
    address: PciAddress
    path: Path
    physfn: PciAddress | None = None
    vfs: list[PciAddress] = field(default_factory=list)


class SysfsTree:
    """A sysfs tree under ``root`` (``root/sys/...``, ``root/proc/meminfo``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.sys = self.root / "sys"
        self.bus_devices = self.sys / "bus" / "pci" / "devices"
        self.drivers = self.sys / "bus" / "pci" / "drivers"
        self.iommu_groups = self.sys / "kernel" / "iommu_groups"
        self.nodes_dir = self.sys / "devices" / "system" / "node"
        self.cpu_dir = self.sys / "devices" / "system" / "cpu"
        self.class_net = self.sys / "class" / "net"
        for d in (self.bus_devices, self.drivers, self.iommu_groups, self.class_net):
            d.mkdir(parents=True, exist_ok=True)
        self._entries: dict[PciAddress, _Entry] = {}
        self._numa: dict[int, tuple[int, ...]] = {}
        self._domain_roots: dict[int, Path] = {}
        self._groups_used: set[int] = set()

    # --- reading back what was built ---------------------------------------------------

    @property
    def addresses(self) -> list[PciAddress]:
        return sorted(self._entries)

    def device(self, addr: AddressLike) -> FakeDevice:
        return self._entry(addr).dev

    def device_path(self, addr: AddressLike) -> Path:
        """The device's real directory (not the ``bus/pci/devices`` link)."""
        return self._entry(addr).path

    def vfs(self, pf_addr: AddressLike) -> list[PciAddress]:
        return list(self._entry(pf_addr).vfs)

    def next_iommu_group(self) -> int:
        """The lowest free group number, as the kernel's id allocator hands them out (so VFs
        disabled and enabled again get their old numbers back)."""
        n = 0
        while n in self._groups_used:
            n += 1
        return n

    def _entry(self, addr: AddressLike) -> _Entry:
        a = _addr(addr)
        try:
            return self._entries[a]
        except KeyError:
            raise KeyError(f"no device {a} in the tree at {self.root}") from None

    # --- host ---------------------------------------------------------------------------

    def add_numa_node(self, node_id: int, cpus: Iterable[int], memory_mb: int) -> Path:
        """``node<N>/cpulist`` and ``meminfo``; also keeps ``cpu/online`` the union of nodes."""
        cpu_tuple = tuple(sorted(set(cpus)))
        self._numa[node_id] = cpu_tuple
        node = self.nodes_dir / f"node{node_id}"
        node.mkdir(parents=True, exist_ok=True)
        _write(node / "cpulist", format_cpulist(cpu_tuple))
        kb = memory_mb * 1024
        used = kb // 8
        _write(node / "meminfo",
               f"Node {node_id} MemTotal:       {kb:>10} kB\n"
               f"Node {node_id} MemFree:        {kb - used:>10} kB\n"
               f"Node {node_id} MemUsed:        {used:>10} kB\n")
        ids = format_cpulist(self._numa)
        for name in ("online", "possible", "has_memory"):
            _write(self.nodes_dir / name, ids)
        _write(self.nodes_dir / "has_cpu", format_cpulist(n for n, c in self._numa.items() if c))
        self.set_online_cpus(c for cs in self._numa.values() for c in cs)
        return node

    def set_online_cpus(self, cpus: Iterable[int]) -> None:
        """``cpu/online`` and ``cpu/cpu<N>/`` directories (what a host without NUMA shows)."""
        cpu_set = sorted(set(cpus))
        self.cpu_dir.mkdir(parents=True, exist_ok=True)
        for name in ("online", "possible", "present"):
            _write(self.cpu_dir / name, format_cpulist(cpu_set))
        for c in cpu_set:
            (self.cpu_dir / f"cpu{c}").mkdir(exist_ok=True)

    def write_proc_meminfo(self, total_mb: int) -> None:
        proc = self.root / "proc"
        proc.mkdir(parents=True, exist_ok=True)
        kb = total_mb * 1024
        _write(proc / "meminfo",
               f"MemTotal:       {kb:>10} kB\nMemFree:        {kb // 2:>10} kB\n"
               f"MemAvailable:   {kb // 2:>10} kB\n")

    # --- devices ------------------------------------------------------------------------

    def add_vmd_domain(self, vmd_addr: AddressLike, domain: int) -> None:
        """Root buses of ``domain`` live under the VMD controller, as the vmd driver makes them."""
        self._domain_roots[domain] = self._entry(vmd_addr).path

    def _root_bus_dir(self, addr: PciAddress) -> Path:
        under = self._domain_roots.get(addr.domain, self.sys / "devices")
        return under / f"pci{addr.domain:04x}:{addr.bus:02x}"

    def add_device(self, dev: FakeDevice) -> Path:
        """Write one function (hot-plug it, if the tree was already discovered)."""
        addr = _addr(dev.address)
        if addr in self._entries:
            raise ValueError(f"{addr} is already in the tree")
        if dev.bridge is not None:
            parent_dir = self._entry(dev.bridge).path
        else:
            parent_dir = self._root_bus_dir(addr)
        return self._write_device(dev, addr, parent_dir, physfn=None)

    def _write_device(self, dev: FakeDevice, addr: PciAddress, parent_dir: Path,
                      physfn: PciAddress | None) -> Path:
        path = parent_dir / str(addr)
        path.mkdir(parents=True)
        vendor = _hex_id(dev.vendor_id, 4)
        _write(path / "vendor", f"0x{vendor}")
        _write(path / "device", f"0x{_hex_id(dev.product_id, 4)}")
        _write(path / "subsystem_vendor", f"0x{_hex_id(dev.subsystem_vendor_id or vendor, 4)}")
        _write(path / "subsystem_device", f"0x{_hex_id(dev.subsystem_product_id or '0000', 4)}")
        _write(path / "class", f"0x{_hex_id(dev.class_code, 6)}")
        _write(path / "driver_override", "(null)")
        if dev.numa_file:
            _write(path / "numa_node", str(dev.numa_node if dev.numa_node is not None else -1))
        near = self._numa.get(dev.numa_node) if dev.numa_node is not None else None
        if near is None and self._numa:
            near = tuple(c for cs in self._numa.values() for c in cs)
        if near is not None:
            _write(path / "local_cpulist", format_cpulist(near))
        _link(path / "subsystem", self.sys / "bus" / "pci")
        _link(self.bus_devices / str(addr), path)
        entry = _Entry(dev=dev, address=addr, path=path, physfn=physfn)
        self._entries[addr] = entry
        if dev.driver is not None:
            self._bind(entry, dev.driver)
        if dev.iommu_group is not None:
            self._join_group(entry, dev.iommu_group)
        for nd in dev.netdevs:
            self._add_netdev(entry, nd)
        if dev.sriov is not None:
            s = dev.sriov
            _write(path / "sriov_totalvfs", str(s.total_vfs))
            _write(path / "sriov_numvfs", "0")
            _write(path / "sriov_offset", str(s.first_vf_offset))
            _write(path / "sriov_stride", str(s.vf_stride))
            _write(path / "sriov_vf_device", _hex_id(s.vf_product_id, 4))
        if dev.vpd is not None:
            (path / "vpd").write_bytes(dev.vpd)
        if physfn is not None:
            _link(path / "physfn", self._entries[physfn].path)
        return path

    def _bind(self, entry: _Entry, driver: str) -> None:
        ddir = self.drivers / driver
        if not ddir.exists():
            ddir.mkdir(parents=True)
            for name in ("bind", "unbind", "new_id", "remove_id"):
                _write(ddir / name, "")
        _link(entry.path / "driver", ddir)
        _link(ddir / str(entry.address), entry.path)

    def _unbind(self, entry: _Entry) -> None:
        link = entry.path / "driver"
        if link.is_symlink():
            ddir = self.drivers / os.path.basename(os.readlink(link))
            link.unlink()
            _unlink(ddir / str(entry.address))

    def _join_group(self, entry: _Entry, group: int) -> None:
        gdir = self.iommu_groups / str(group)
        (gdir / "devices").mkdir(parents=True, exist_ok=True)
        _write(gdir / "type", "DMA")
        _link(gdir / "devices" / str(entry.address), entry.path)
        _link(entry.path / "iommu_group", gdir)
        self._groups_used.add(group)

    def _add_netdev(self, entry: _Entry, nd: FakeNetDev) -> None:
        ndir = entry.path / "net" / nd.name
        ndir.mkdir(parents=True)
        if nd.mac is not None:
            _write(ndir / "address", nd.mac.lower())
        _link(self.class_net / nd.name, ndir)

    def set_driver(self, addr: AddressLike, driver: str | None) -> None:
        """Bind to ``driver`` (``None``: unbind), as ``driver_override`` + ``bind`` would."""
        entry = self._entry(addr)
        self._unbind(entry)
        if driver is not None:
            self._bind(entry, driver)
        entry.dev = replace(entry.dev, driver=driver)

    def remove_device(self, addr: AddressLike) -> None:
        """Hot-unplug: the function, its VFs and everything behind it (if a bridge) go.

        Removing a lone VF leaves its PF's ``virtfnN`` link dangling, as the kernel does.
        """
        entry = self._entry(addr)
        if entry.vfs:
            self.disable_vfs(entry.address)
        for child in [e.address for e in self._entries.values() if entry.path in e.path.parents]:
            if child in self._entries:
                self.remove_device(child)
        self._unbind(entry)
        for nd in entry.dev.netdevs:
            _unlink(self.class_net / nd.name)
        if entry.dev.iommu_group is not None:
            gdir = self.iommu_groups / str(entry.dev.iommu_group)
            _unlink(gdir / "devices" / str(entry.address))
            if gdir.is_dir() and not any((gdir / "devices").iterdir()):
                shutil.rmtree(gdir)  # the kernel frees a group with no members
                self._groups_used.discard(entry.dev.iommu_group)
        _unlink(self.bus_devices / str(entry.address))
        shutil.rmtree(entry.path, ignore_errors=True)
        del self._entries[entry.address]
        if entry.physfn is not None and entry.physfn in self._entries:
            pf = self._entries[entry.physfn]
            if entry.address in pf.vfs:
                pf.vfs.remove(entry.address)

    # --- SR-IOV -------------------------------------------------------------------------

    def vf_address(self, pf_addr: AddressLike, index: int) -> PciAddress:
        entry = self._entry(pf_addr)
        s = entry.dev.sriov
        if s is None:
            raise ValueError(f"{entry.address} is not an SR-IOV PF")
        a = entry.address
        rid = (a.bus << 8 | a.slot << 3 | a.function) + s.first_vf_offset + index * s.vf_stride
        if rid > 0xFFFF:
            raise ValueError(f"VF {index} of {a} would be past bus ff")
        return PciAddress(a.domain, rid >> 8, (rid >> 3) & 0x1F, rid & 0x7)

    def enable_vfs(self, pf_addr: AddressLike, count: int) -> list[PciAddress]:
        """``echo count > sriov_numvfs``: VFs appear beside the PF, each with ``physfn``."""
        pf = self._entry(pf_addr)
        s = pf.dev.sriov
        if s is None:
            raise ValueError(f"{pf.address} is not an SR-IOV PF")
        if not 0 <= count <= s.total_vfs:
            raise ValueError(f"{pf.address} supports 0 to {s.total_vfs} VFs, not {count}")
        if pf.vfs:
            self.disable_vfs(pf.address)  # the kernel refuses n -> m; go through 0
        a = pf.address
        mac_base = s.vf_mac_base or (
            f"02:{a.domain & 0xFF:02x}:{a.bus:02x}:{a.slot << 3 | a.function:02x}:00:00")
        pf_netdev = pf.dev.netdevs[0].name if pf.dev.netdevs else None
        for i in range(count):
            vf_addr = self.vf_address(a, i)
            netdevs: tuple[FakeNetDev, ...] = ()
            if s.vf_netdevs and s.vf_driver is not None and pf_netdev is not None:
                netdevs = (FakeNetDev(f"{pf_netdev}v{i}", _mac_plus(mac_base, i)),)
            group = None
            if s.vf_iommu_groups and pf.dev.iommu_group is not None:
                group = self.next_iommu_group()
            vf = FakeDevice(
                address=vf_addr, vendor_id=pf.dev.vendor_id, product_id=s.vf_product_id,
                class_code=pf.dev.class_code, subsystem_vendor_id=pf.dev.subsystem_vendor_id,
                subsystem_product_id=pf.dev.subsystem_product_id, numa_node=pf.dev.numa_node,
                numa_file=pf.dev.numa_file, iommu_group=group, driver=s.vf_driver,
                netdevs=netdevs,
            )
            self._write_device(vf, vf_addr, pf.path.parent, physfn=a)
            _link(pf.path / f"virtfn{i}", self._entries[vf_addr].path)
            pf.vfs.append(vf_addr)
        _write(pf.path / "sriov_numvfs", str(count))
        return list(pf.vfs)

    def disable_vfs(self, pf_addr: AddressLike) -> None:
        """``echo 0 > sriov_numvfs``."""
        pf = self._entry(pf_addr)
        if pf.dev.sriov is None:
            raise ValueError(f"{pf.address} is not an SR-IOV PF")
        for vf in list(pf.vfs):
            if vf in self._entries:
                self.remove_device(vf)
        for link in pf.path.glob("virtfn*"):
            link.unlink()
        pf.vfs.clear()
        _write(pf.path / "sriov_numvfs", "0")

    # --- anomalies ----------------------------------------------------------------------

    def make_unreadable(self, addr: AddressLike, attr: str) -> None:
        """Make ``attr`` fail to read, even for root.

        Tests run as root, and root reads a ``chmod 000`` file anyway (CAP_DAC_OVERRIDE), so
        the attribute is replaced by an empty directory: ``open()`` then fails with EISDIR
        (or ``read()`` does, after a raw ``os.open``) whoever the caller is.
        It stands for the kernel's own failures: EIO from an attribute whose ``show()``
        errors, EACCES from a write-only kernfs attribute.
        """
        target = self._entry(addr).path / attr
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        target.mkdir()

    def dangle_link(self, addr: AddressLike, name: str) -> None:
        """Point the device's ``name`` link (``driver``, ``iommu_group``, ``physfn``,
        ``virtfnN``) at a path that does not exist, keeping the last component, as a link
        caught mid-teardown looks."""
        link = self._entry(addr).path / name
        old = os.readlink(link)
        head, tail = os.path.split(old)
        link.unlink()
        os.symlink(os.path.join(head + "-gone", tail), link)

    def add_stale_device_link(self, addr: AddressLike) -> None:
        """A ``bus/pci/devices/<addr>`` link whose device directory is gone (a hot-unplug
        race seen mid-way)."""
        a = _addr(addr)
        _link(self.bus_devices / str(a), self._root_bus_dir(a) / str(a))


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text + "\n" if text and not text.endswith("\n") else text)


def _link(link: Path, target: Path) -> None:
    """A relative symlink, as sysfs makes them."""
    os.symlink(os.path.relpath(target, link.parent), link)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
