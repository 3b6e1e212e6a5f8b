"""Discovery on kernel-shaped trees: every oddity a real host shows, and every bundled profile."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from pcipass.errors import DiscoveryError, InvalidInput
from pcipass.host.discovery import discover, discover_host, parse_cpulist
from pcipass.host.pciids import PciIds
from pcipass.host.profiles import (
    PROFILES,
    build_host,
    get_profile,
    suggested_aliases,
    suggested_device_spec,
)
from pcipass.host.sysfs_tree import FakeDevice, FakeNetDev, FakeSriov, SysfsTree
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, PciDevice
from pcipass.pci.inventory import Inventory, inventory_to_json, parse_inventory
from pcipass.pci.vpd import encode_vpd

A = PciAddress.parse


# --- builders --------------------------------------------------------------------------

def nic(addr: str, **kw: object) -> FakeDevice:
    """An Intel I350 port unless told otherwise."""
    fields: dict[str, object] = {"vendor_id": "8086", "product_id": "1521",
                                 "class_code": "020000", "numa_node": 0}
    fields.update(kw)
    return FakeDevice(addr, **fields)  # type: ignore[arg-type]


def pf(addr: str, *, total: int = 16, group: int | None = None, **kw: object) -> FakeDevice:
    sriov = FakeSriov(total_vfs=total, vf_product_id="1889", vf_driver="iavf",
                      first_vf_offset=8, vf_netdevs=True)
    fields: dict[str, object] = {"vendor_id": "8086", "product_id": "1592",
                                 "class_code": "020000", "numa_node": 0, "driver": "ice",
                                 "iommu_group": group, "sriov": sriov,
                                 "netdevs": (FakeNetDev("ens1f0", "b4:96:91:aa:bb:00"),)}
    fields.update(kw)
    return FakeDevice(addr, **fields)  # type: ignore[arg-type]


@pytest.fixture
def tree(tmp_path: Path) -> SysfsTree:
    t = SysfsTree(tmp_path)
    t.add_numa_node(0, range(0, 4), 4096)
    t.add_numa_node(1, range(4, 8), 8192)
    return t


def run(tree: SysfsTree, **kw: object) -> Inventory:
    inv = discover(tree.root, hostname="host-1", **kw)  # type: ignore[arg-type]
    # Whatever discovery finds must be a report the API accepts, unchanged.
    assert parse_inventory(inventory_to_json(inv)) == inv
    return inv


def one(inv: Inventory, addr: str) -> PciDevice:
    return inv.by_address()[A(addr)]


# --- errors ----------------------------------------------------------------------------

def test_missing_devices_dir_is_a_discovery_error(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError) as err:
        discover(tmp_path)
    assert err.value.code == "discovery_failed"
    assert str(tmp_path / "sys" / "bus" / "pci" / "devices") in err.value.message


def test_empty_host_discovers_nothing(tree: SysfsTree) -> None:
    inv = run(tree)
    assert inv.devices == ()
    assert inv.host.hostname == "host-1"


# --- one device ------------------------------------------------------------------------

def test_plain_device_every_field(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:04:00.0", subsystem_vendor_id="0x15D9", subsystem_product_id="1521",
                        iommu_group=7, driver="igb",
                        netdevs=(FakeNetDev("eno1", "3C:EC:EF:00:00:01"),)))
    dev = one(run(tree), "0000:04:00.0")
    assert (dev.vendor_id, dev.product_id) == ("8086", "1521")
    assert (dev.subsystem_vendor_id, dev.subsystem_product_id) == ("15d9", "1521")
    assert dev.class_code == "020000"
    assert dev.dev_type is DevType.PCI
    assert dev.parent_addr is None and dev.vf_index is None
    assert dev.total_vfs is None and dev.num_vfs is None
    assert dev.numa_node == 0
    assert dev.iommu_group == 7
    assert dev.iommu_group_members == (A("0000:04:00.0"),)
    assert dev.driver == "igb"
    assert [(n.name, n.mac) for n in dev.netdevs] == [("eno1", "3c:ec:ef:00:00:01")]
    assert dev.name is None
    assert dev.assignable is False and dev.tags == {}
    assert dev.warnings == ()


def test_devices_sorted_by_address_whatever_the_listing_order(tree: SysfsTree) -> None:
    for addr in ("10000:01:00.0", "0000:b1:00.0", "0000:04:00.1", "0000:04:00.0"):
        tree.add_device(nic(addr))
    inv = run(tree)
    assert [str(d.address) for d in inv.devices] == [
        "0000:04:00.0", "0000:04:00.1", "0000:b1:00.0", "10000:01:00.0"]


def test_unbound_device_has_no_driver(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:04:00.0", driver="igb"))
    tree.set_driver("0000:04:00.0", None)
    dev = one(run(tree), "0000:04:00.0")
    assert dev.driver is None
    assert dev.warnings == ()


def test_rebinding_is_seen(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:04:00.0", driver="igb"))
    tree.set_driver("0000:04:00.0", "vfio-pci")
    assert one(run(tree), "0000:04:00.0").driver == "vfio-pci"


def test_no_numa_and_no_iommu_information(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:04:00.0", numa_node=None))  # file says -1
    tree.add_device(nic("0000:04:00.1", numa_file=False))  # no file at all
    inv = run(tree)
    for dev in inv.devices:
        assert dev.numa_node is None
        assert dev.iommu_group is None and dev.iommu_group_members == ()
        assert dev.warnings == ()


def test_group_members_are_listed_sorted_for_each_member(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:4b:00.1", vendor_id="10de", product_id="1aef",
                        class_code="040300", iommu_group=13))
    tree.add_device(nic("0000:4b:00.0", vendor_id="10de", product_id="2230",
                        class_code="030000", iommu_group=13))
    inv = run(tree)
    both = (A("0000:4b:00.0"), A("0000:4b:00.1"))
    assert [d.iommu_group_members for d in inv.devices] == [both, both]


def test_vmd_five_digit_domain(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:64:05.5", product_id="28c0", class_code="010400",
                        iommu_group=3, driver="vmd"))
    tree.add_vmd_domain("0000:64:05.5", 0x10000)
    tree.add_device(nic("10000:00:02.0", product_id="347a", class_code="060400",
                        numa_node=None, driver="pcieport"))
    tree.add_device(nic("10000:01:00.0", product_id="0a54", class_code="010802",
                        numa_file=False, driver="nvme", bridge="10000:00:02.0"))
    inv = run(tree)
    nvme = one(inv, "10000:01:00.0")
    assert str(nvme.address) == "10000:01:00.0"
    assert nvme.address.domain == 0x10000
    assert nvme.iommu_group is None and nvme.numa_node is None
    assert nvme.driver == "nvme"
    assert "/0000:64:05.5/pci10000:00/10000:00:02.0/10000:01:00.0" in os.readlink(
        tree.bus_devices / "10000:01:00.0")


# --- SR-IOV ----------------------------------------------------------------------------

def test_pf_with_zero_vfs_is_still_a_pf(tree: SysfsTree) -> None:
    tree.add_device(pf("0000:3b:00.0", total=64))
    inv = run(tree)
    dev = one(inv, "0000:3b:00.0")
    assert dev.dev_type is DevType.PF
    assert (dev.total_vfs, dev.num_vfs) == (64, 0)
    assert len(inv.devices) == 1


def test_enabled_vfs_have_parent_index_and_own_groups(tree: SysfsTree) -> None:
    tree.add_device(pf("0000:3b:00.0", group=20))
    tree.enable_vfs("0000:3b:00.0", 4)
    inv = run(tree)
    parent = one(inv, "0000:3b:00.0")
    assert (parent.dev_type, parent.total_vfs, parent.num_vfs) == (DevType.PF, 16, 4)
    vfs = [d for d in inv.devices if d.dev_type is DevType.VF]
    assert [str(v.address) for v in vfs] == [f"0000:3b:01.{i}" for i in range(4)]
    assert [v.vf_index for v in vfs] == [0, 1, 2, 3]
    assert all(v.parent_addr == parent.address for v in vfs)
    assert all(v.product_id == "1889" and v.driver == "iavf" for v in vfs)
    groups = [v.iommu_group for v in vfs]
    assert None not in groups and len(set(groups)) == 4 and 20 not in groups
    assert all(v.iommu_group_members == (v.address,) for v in vfs)
    assert [v.devnames for v in vfs] == [(f"ens1f0v{i}",) for i in range(4)]
    assert all(v.numa_node == 0 and v.total_vfs is None for v in vfs)


def test_a_pfs_vpd_serial_number_is_reported_on_it_and_its_vfs(tree: SysfsTree) -> None:
    card = encode_vpd("E810-C", {"PN": "E810CQDA2", "SN": "B49691000010"})
    tree.add_device(pf("0000:3b:00.0", vpd=card))
    tree.enable_vfs("0000:3b:00.0", 2)
    # A plain function's VPD is not read: only PFs' serials are used.
    tree.add_device(nic("0000:04:00.0", vpd=encode_vpd("I350", {"SN": "X1"})))
    inv = run(tree)
    assert [(str(d.address), d.card_serial_number) for d in inv.devices] == [
        ("0000:04:00.0", None), ("0000:3b:00.0", "B49691000010"),
        ("0000:3b:01.0", "B49691000010"), ("0000:3b:01.1", "B49691000010")]
    assert all(d.warnings == () for d in inv.devices)
    again = parse_inventory(inventory_to_json(inv))
    assert again.devices == inv.devices


@pytest.mark.parametrize(("vpd", "warning"), [
    (b"\x90\x04\x00SN\x01A\x78", "vpd: not a valid VPD record (the read-only section has "
     "no RV checksum entry at byte 0); no card serial number"),
    (b"\xff" * 128, None),
    (encode_vpd("E810-C", {"PN": "E810CQDA2"}), None),
], ids=["corrupt", "blank", "no-sn"])
def test_a_pf_without_a_usable_serial_reports_none(tree: SysfsTree, vpd: bytes,
                                                   warning: str | None) -> None:
    tree.add_device(pf("0000:3b:00.0", vpd=vpd))
    tree.enable_vfs("0000:3b:00.0", 1)
    inv = run(tree)
    assert [d.card_serial_number for d in inv.devices] == [None, None]
    assert one(inv, "0000:3b:00.0").warnings == ((warning,) if warning else ())


def test_an_unreadable_vpd_is_a_warning(tree: SysfsTree) -> None:
    tree.add_device(pf("0000:3b:00.0"))
    (tree.device_path("0000:3b:00.0") / "vpd").mkdir()  # reading it fails, even for root
    dev = one(run(tree), "0000:3b:00.0")
    assert dev.card_serial_number is None
    assert dev.warnings == ("vpd: cannot read (Is a directory)",)


def test_vf_index_comes_from_the_pf_links_not_the_address(tree: SysfsTree) -> None:
    tree.add_device(pf("0000:3b:00.0"))
    tree.enable_vfs("0000:3b:00.0", 2)
    pf_dir = tree.device_path("0000:3b:00.0")
    first, second = os.readlink(pf_dir / "virtfn0"), os.readlink(pf_dir / "virtfn1")
    for name, target in (("virtfn0", second), ("virtfn1", first)):
        (pf_dir / name).unlink()
        os.symlink(target, pf_dir / name)
    inv = run(tree)
    assert one(inv, "0000:3b:01.0").vf_index == 1
    assert one(inv, "0000:3b:01.1").vf_index == 0


def test_vfs_enabled_then_disabled_on_rediscovery(tree: SysfsTree) -> None:
    tree.add_device(pf("0000:3b:00.0", group=1))
    assert len(run(tree).devices) == 1
    tree.enable_vfs("0000:3b:00.0", 8)
    assert len(run(tree).devices) == 9
    tree.enable_vfs("0000:3b:00.0", 2)  # through 0, as the kernel insists
    inv = run(tree)
    assert len(inv.devices) == 3 and one(inv, "0000:3b:00.0").num_vfs == 2
    tree.disable_vfs("0000:3b:00.0")
    inv = run(tree)
    assert [d.address for d in inv.devices] == [A("0000:3b:00.0")]
    assert one(inv, "0000:3b:00.0").num_vfs == 0
    assert sorted(os.listdir(tree.iommu_groups)) == ["1"]  # the VFs' groups went with them


def test_vf_whose_pf_is_not_visible_is_skipped(tree: SysfsTree,
                                               caplog: pytest.LogCaptureFixture) -> None:
    tree.add_device(pf("0000:3b:00.0"))
    tree.enable_vfs("0000:3b:00.0", 2)
    (tree.bus_devices / "0000:3b:00.0").unlink()
    with caplog.at_level(logging.WARNING, logger="pcipass.host.discovery"):
        inv = run(tree)
    assert inv.devices == ()
    assert "its PF 0000:3b:00.0 is not a visible SR-IOV PF" in caplog.text


def test_vf_missing_from_the_pf_links_has_no_index(tree: SysfsTree) -> None:
    tree.add_device(pf("0000:3b:00.0"))
    tree.enable_vfs("0000:3b:00.0", 2)
    (tree.device_path("0000:3b:00.0") / "virtfn1").unlink()
    vf = one(run(tree), "0000:3b:01.1")
    assert vf.vf_index is None
    assert any("index unknown" in w for w in vf.warnings)


# --- what a broken host shows ----------------------------------------------------------

@pytest.mark.parametrize(("attr", "check"), [
    ("numa_node", lambda d: d.numa_node is None),
    ("subsystem_vendor", lambda d: d.subsystem_vendor_id is None),
    ("class", lambda d: d.class_code == "ff0000"),
    ("sriov_numvfs", lambda d: d.dev_type is DevType.PF and d.num_vfs is None),
    ("driver", lambda d: d.driver is None),
])
def test_unreadable_attribute_is_a_warning_and_the_run_goes_on(
        tree: SysfsTree, attr: str, check: object) -> None:
    tree.add_device(pf("0000:3b:00.0"))
    tree.add_device(nic("0000:04:00.0", driver="igb"))
    tree.make_unreadable("0000:3b:00.0", attr)
    with pytest.raises(OSError):  # really unreadable, even for root
        (tree.device_path("0000:3b:00.0") / attr).read_text()
    inv = run(tree)
    broken = one(inv, "0000:3b:00.0")
    assert callable(check) and check(broken)
    assert any(w.startswith(f"{attr}: cannot read") for w in broken.warnings), broken.warnings
    assert one(inv, "0000:04:00.0").warnings == ()
    assert one(inv, "0000:04:00.0").driver == "igb"


def test_unreadable_vendor_skips_the_device_with_a_log(
        tree: SysfsTree, caplog: pytest.LogCaptureFixture) -> None:
    tree.add_device(nic("0000:04:00.0"))
    tree.add_device(nic("0000:04:00.1"))
    tree.make_unreadable("0000:04:00.0", "vendor")
    with caplog.at_level(logging.WARNING, logger="pcipass.host.discovery"):
        inv = run(tree)
    assert [str(d.address) for d in inv.devices] == ["0000:04:00.1"]
    assert "skipping 0000:04:00.0: vendor and device ids are unknown" in caplog.text


def test_missing_device_id_skips_the_device(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:04:00.0"))
    (tree.device_path("0000:04:00.0") / "device").unlink()
    assert run(tree).devices == ()


def test_garbage_values_are_warnings(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:04:00.0"))
    path = tree.device_path("0000:04:00.0")
    (path / "numa_node").write_text("lots\n")
    (path / "subsystem_device").write_text("0x123456789\n")
    dev = one(run(tree), "0000:04:00.0")
    assert dev.numa_node is None and dev.subsystem_product_id is None
    assert len(dev.warnings) == 2


def test_a_fifo_never_hangs_discovery(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:04:00.0"))
    path = tree.device_path("0000:04:00.0") / "numa_node"
    path.unlink()
    os.mkfifo(path)
    dev = one(run(tree), "0000:04:00.0")
    assert dev.numa_node is None
    assert dev.warnings == ("numa_node: unexpected value ''",)


def test_numa_node_the_host_does_not_have(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:04:00.0", numa_node=3))
    dev = one(run(tree), "0000:04:00.0")
    assert dev.numa_node is None
    assert dev.warnings == ("numa_node: 3 is not one of the host's NUMA nodes",)


def test_dangling_driver_link_still_names_the_driver(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:04:00.0", driver="igb"))
    tree.dangle_link("0000:04:00.0", "driver")
    link = tree.device_path("0000:04:00.0") / "driver"
    assert link.is_symlink() and not link.exists()
    dev = one(run(tree), "0000:04:00.0")
    assert dev.driver == "igb" and dev.warnings == ()


def test_dangling_group_link_keeps_the_group_number(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:04:00.0", iommu_group=5))
    tree.add_device(nic("0000:04:00.1", iommu_group=5))
    tree.dangle_link("0000:04:00.0", "iommu_group")
    dev = one(run(tree), "0000:04:00.0")
    assert dev.iommu_group == 5
    assert dev.iommu_group_members == (A("0000:04:00.0"), A("0000:04:00.1"))


def test_group_without_devices_dir_is_a_warning(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:04:00.0", iommu_group=5))
    for link in (tree.iommu_groups / "5" / "devices").iterdir():
        link.unlink()
    (tree.iommu_groups / "5" / "devices").rmdir()
    dev = one(run(tree), "0000:04:00.0")
    assert dev.iommu_group == 5 and dev.iommu_group_members == (dev.address,)
    assert len(dev.warnings) == 1 and "members unknown" in dev.warnings[0]


def test_stale_bus_link_is_skipped(tree: SysfsTree, caplog: pytest.LogCaptureFixture) -> None:
    tree.add_device(nic("0000:04:00.0"))
    tree.add_stale_device_link("0000:05:00.0")
    with caplog.at_level(logging.WARNING, logger="pcipass.host.discovery"):
        inv = run(tree)
    assert [str(d.address) for d in inv.devices] == ["0000:04:00.0"]
    assert "skipping 0000:05:00.0" in caplog.text


def test_non_address_entries_are_skipped(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:04:00.0"))
    (tree.bus_devices / "not-a-device").mkdir()
    assert len(run(tree).devices) == 1


def test_removing_a_lone_vf_leaves_a_dangling_virtfn_link(tree: SysfsTree) -> None:
    tree.add_device(pf("0000:3b:00.0"))
    tree.enable_vfs("0000:3b:00.0", 3)
    tree.remove_device("0000:3b:01.1")
    assert not (tree.device_path("0000:3b:00.0") / "virtfn1").exists()
    inv = run(tree)
    assert [d.vf_index for d in inv.devices if d.dev_type is DevType.VF] == [0, 2]


def test_netdev_without_ethernet_mac(tree: SysfsTree) -> None:
    ib = "80:00:02:08:fe:80:00:00:00:00:00:00:0c:42:a1:03:00:5d:7e:40"
    tree.add_device(nic("0000:af:00.0", netdevs=(FakeNetDev("ib0", ib), FakeNetDev("ib1"))))
    dev = one(run(tree), "0000:af:00.0")
    assert [(n.name, n.mac) for n in dev.netdevs] == [("ib0", None), ("ib1", None)]


def test_virtio_net_interface_one_level_down(tree: SysfsTree) -> None:
    """virtio-net hangs its netdev under virtioN/net, not net/ (regression: seen on a VM)."""
    path = tree.add_device(nic("0000:00:03.0", vendor_id="1af4", product_id="1041"))
    (path / "virtio0" / "net" / "eth0").mkdir(parents=True)
    (path / "virtio0" / "net" / "eth0" / "address").write_text("02:fc:00:00:00:01\n")
    (path / "virtio1").mkdir()  # a virtio device with no interface is not a warning
    dev = one(run(tree), "0000:00:03.0")
    assert [(n.name, n.mac) for n in dev.netdevs] == [("eth0", "02:fc:00:00:00:01")]
    assert dev.warnings == ()


def test_hotplug_and_unplug_seen_on_rediscovery(tree: SysfsTree) -> None:
    tree.add_device(nic("0000:16:02.0", product_id="347a", class_code="060400"))
    tree.add_device(nic("0000:04:00.0"))
    assert len(run(tree).devices) == 2
    tree.add_device(nic("0000:17:00.0", vendor_id="10de", product_id="20f1",
                        class_code="030200", iommu_group=9, bridge="0000:16:02.0"))
    inv = run(tree)
    assert one(inv, "0000:17:00.0").iommu_group == 9
    tree.remove_device("0000:17:00.0")
    inv = run(tree)
    assert A("0000:17:00.0") not in inv.by_address()
    assert not (tree.iommu_groups / "9").exists()
    tree.add_device(nic("0000:17:00.0", vendor_id="10de", product_id="20f1",
                        class_code="030200", bridge="0000:16:02.0"))
    tree.remove_device("0000:16:02.0")  # unplugging a bridge takes what is behind it
    assert [str(d.address) for d in run(tree).devices] == ["0000:04:00.0"]


def test_names_from_pci_ids(tree: SysfsTree, tmp_path: Path) -> None:
    ids_file = tmp_path / "pci.ids"
    ids_file.write_text(SMALL_PCI_IDS)
    tree.add_device(nic("0000:17:00.0", vendor_id="10de", product_id="20f1"))
    tree.add_device(nic("0000:04:00.0"))
    tree.add_device(nic("0000:05:00.0", vendor_id="1d0f", product_id="efa1"))
    inv = run(tree, pci_ids=PciIds.load(ids_file))
    assert one(inv, "0000:17:00.0").name == "NVIDIA Corporation GA100 [A100 PCIe 40GB]"
    assert one(inv, "0000:04:00.0").name == "Intel Corporation I350 Gigabit Network Connection"
    assert one(inv, "0000:05:00.0").name is None


# --- pci.ids ---------------------------------------------------------------------------

SMALL_PCI_IDS = """\
#
#\tList of PCI ID's
#
# Syntax:
# vendor  vendor_name
#\tdevice  device_name\t\t\t\t<-- single tab

0001  SafeNet (wrong ID)
10de  NVIDIA Corporation
\t20f1  GA100 [A100 PCIe 40GB]
\t\t10de 145f  GA100 [A100 PCIe 40GB]
\t2230  GA102GL [RTX A6000]
# a comment between devices
\t1aef  GA102 High Definition Audio Controller
8086  Intel Corporation
\t1521  I350 Gigabit Network Connection
\t\t8086 00a3  Ethernet Network Adapter I350-T4 for OCP NIC 3.0
ffff  Illegal Vendor ID


# List of known device classes, subclasses and programming interfaces
C 02  Network controller
\t00  Ethernet controller
C 03  Display controller
\t02  3D controller
"""


def test_pci_ids_names_like_lspci() -> None:
    ids = PciIds.from_text(SMALL_PCI_IDS)
    assert ids.name("10de", "2230") == "NVIDIA Corporation GA102GL [RTX A6000]"
    assert ids.name("0x10DE", "0x1AEF") == \
        "NVIDIA Corporation GA102 High Definition Audio Controller"
    assert ids.name("10de", "2331") == "NVIDIA Corporation Device 2331"
    assert ids.name("abcd", "0001") is None
    assert ids.vendor_name("8086") == "Intel Corporation"
    assert ids.device_name("8086", "00a3") is None  # a subsystem line is not a device
    # The class section does not leak into the last vendor.
    assert ids.device_name("ffff", "00") is None and ids.device_name("ffff", "02") is None
    assert ids.vendor_name("C 02") is None


def test_pci_ids_absent_file_answers_none(tmp_path: Path) -> None:
    ids = PciIds.load(tmp_path / "nowhere.ids")
    assert ids.name("10de", "20f1") is None
    assert ids.available is False


def test_pci_ids_load_is_cached(tmp_path: Path) -> None:
    ids_file = tmp_path / "pci.ids"
    ids_file.write_text(SMALL_PCI_IDS)
    assert PciIds.load(ids_file) is PciIds.load(str(ids_file))


@pytest.mark.skipif(not Path("/usr/share/misc/pci.ids").exists(),
                    reason="LOUD: the system pci.ids (Debian package pci.ids) is not installed")
def test_system_pci_ids_parse_fast() -> None:
    ids = PciIds(Path("/usr/share/misc/pci.ids"))
    start = time.perf_counter()
    assert ids.name("10de", "20f1") == "NVIDIA Corporation GA100 [A100 PCIe 40GB]"
    assert time.perf_counter() - start < 1.0
    assert ids.name("15b3", "101c") == \
        "Mellanox Technologies MT28908 Family [ConnectX-6 Virtual Function]"


# --- the host --------------------------------------------------------------------------

def test_host_numa_nodes_cpus_memory(tree: SysfsTree) -> None:
    host = run(tree).host
    assert [(n.id, n.cpus, n.memory_mb) for n in host.numa_nodes] == [
        (0, (0, 1, 2, 3), 4096), (1, (4, 5, 6, 7), 8192)]
    assert (host.cpus, host.memory_mb) == (8, 12288)


def test_host_meminfo_as_the_kernel_prints_it(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    node = tmp_path / "sys" / "devices" / "system" / "node" / "node0"
    node.mkdir(parents=True)
    (node / "cpulist").write_text("0-3,8-11\n")
    (node / "meminfo").write_text("Node 0 MemTotal:  131072 kB\nNode 0 MemFree:  1 kB\n")
    host = discover_host(tree.root)
    assert host.numa_nodes[0].cpus == (0, 1, 2, 3, 8, 9, 10, 11)
    assert (host.cpus, host.memory_mb) == (8, 128)


def test_host_without_numa_uses_cpu_online_and_proc_meminfo(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.set_online_cpus(range(6))
    tree.write_proc_meminfo(2048)
    host = run(tree).host
    assert host.numa_nodes == ()
    assert (host.cpus, host.memory_mb) == (6, 2048)


def test_host_without_cpu_online_counts_cpu_dirs(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.set_online_cpus(range(3))
    (tree.cpu_dir / "online").unlink()
    (tree.cpu_dir / "cpufreq").mkdir()
    assert discover_host(tree.root).cpus == 3


def test_host_with_nothing_known(tmp_path: Path) -> None:
    host = discover_host(SysfsTree(tmp_path).root)
    assert (host.hostname, host.cpus, host.memory_mb, host.numa_nodes) == (None, 0, 0, ())


def test_parse_cpulist() -> None:
    assert parse_cpulist("0-3,8-11\n") == (0, 1, 2, 3, 8, 9, 10, 11)
    assert parse_cpulist("5") == (5,)
    assert parse_cpulist("\n") == ()
    for bad in ("a-b", "3-1", "1,,x"):
        with pytest.raises(ValueError):
            parse_cpulist(bad)


# --- profiles --------------------------------------------------------------------------

def _spec_refers_to_something(entry: Mapping[str, str], inv: Inventory) -> bool:
    devices = inv.devices
    if "address" in entry:
        devices = tuple(d for d in devices
                        if str(d.address) == entry["address"] or
                        str(d.parent_addr) == entry["address"])
    if "devname" in entry:
        pfs = {d.address for d in inv.devices if entry["devname"] in d.devnames}
        devices = tuple(d for d in devices if d.address in pfs or d.parent_addr in pfs)
    if "vendor_id" in entry:
        devices = tuple(d for d in devices if d.vendor_id == entry["vendor_id"])
    if "product_id" in entry:
        devices = tuple(d for d in devices if d.product_id == entry["product_id"])
    return bool(devices)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_builds_and_discovers_consistently(name: str, tmp_path: Path) -> None:
    build_host(tmp_path / "a", name, index=0)
    build_host(tmp_path / "b", name, index=1)
    inv = run(SysfsTree(tmp_path / "a"), pci_ids=PciIds.from_text(SMALL_PCI_IDS))
    other = discover(tmp_path / "b")
    assert len(inv.devices) >= 10
    assert all(d.warnings == () for d in inv.devices)
    node_ids = {n.id for n in inv.host.numa_nodes}
    assert node_ids == {0, 1} and inv.host.cpus > 0 and inv.host.memory_mb > 0
    by_addr = inv.by_address()
    for dev in inv.devices:
        if dev.dev_type is DevType.VF:
            assert dev.parent_addr is not None
            assert by_addr[dev.parent_addr].dev_type is DevType.PF
        if dev.iommu_group is not None:  # every member of a group sees the same members
            for member in dev.iommu_group_members:
                assert by_addr[member].iommu_group_members == dev.iommu_group_members
    macs = [n.mac for d in inv.devices for n in d.netdevs]
    other_macs = [n.mac for d in other.devices for n in d.netdevs]
    assert None not in macs and len(set(macs)) == len(macs)
    assert not set(macs) & set(other_macs)  # index varies the MACs between hosts
    assert [d.address for d in other.devices] == [d.address for d in inv.devices]
    spec = suggested_device_spec(name)
    assert spec and all(isinstance(v, str) for e in spec for v in e.values())
    for entry in spec:
        assert _spec_refers_to_something(entry, inv), entry
    for alias in suggested_aliases(name):
        assert _spec_refers_to_something(
            {k: alias[k] for k in ("vendor_id", "product_id")}, inv)


def test_gpu_server(tmp_path: Path) -> None:
    build_host(tmp_path, "gpu-server")
    inv = discover(tmp_path)
    a100 = [d for d in inv.devices if (d.vendor_id, d.product_id) == ("10de", "20f1")]
    assert len(a100) == 4 and all(d.class_code == "030200" for d in a100)
    assert [d.numa_node for d in a100] == [0, 0, 1, 1]
    for gpu in (d for d in inv.devices if d.product_id == "2230"):
        audio = inv.by_address()[PciAddress(*gpu.address.slot_address, 1)]
        assert (gpu.class_code, audio.class_code) == ("030000", "040300")
        assert gpu.iommu_group == audio.iommu_group
        assert gpu.iommu_group_members == (gpu.address, audio.address)
    assert {d.driver for d in inv.devices if d.vendor_id == "10de"} == {
        "vfio-pci", "nvidia", "snd_hda_intel"}


def test_sriov_nic_server(tmp_path: Path) -> None:
    build_host(tmp_path, "sriov-nic-server")
    inv = discover(tmp_path)
    pfs = {d.devnames[0]: d for d in inv.devices if d.dev_type is DevType.PF}
    assert sorted(pfs) == ["ens1f0", "ens1f1", "ens2f0", "ens2f1", "ens3f0", "ens3f1"]
    vfs = [d for d in inv.devices if d.dev_type is DevType.VF]
    for name, count in (("ens1f0", 8), ("ens2f1", 8), ("ens3f0", 0)):
        mine = [v for v in vfs if v.parent_addr == pfs[name].address]
        assert len(mine) == count == pfs[name].num_vfs
        assert [v.vf_index for v in mine] == list(range(count))
    assert {(v.vendor_id, v.product_id, v.driver) for v in vfs} == {
        ("8086", "1889", "iavf"), ("15b3", "101c", "mlx5_core")}
    assert len({v.iommu_group for v in vfs}) == len(vfs) == 32
    # Both ports of a card share its VPD; every VF reports its card's serial number.
    serials = {name: d.card_serial_number for name, d in pfs.items()}
    assert serials["ens1f0"] == serials["ens1f1"] != serials["ens2f0"] == serials["ens2f1"]
    assert serials["ens2f0"] == "MT2245X00000" and len(set(serials.values())) == 3
    assert all(v.card_serial_number == next(p.card_serial_number for p in pfs.values()
                                             if p.address == v.parent_addr) for v in vfs)
    spec = suggested_device_spec("sriov-nic-server")
    assert {e["physical_network"] for e in spec} == {"physnet1", "physnet2"}
    pf_addrs = {str(d.address) for d in pfs.values()}
    assert all(e.get("address", "0000:3b:00.0") in pf_addrs for e in spec)
    assert all(e.get("devname", "ens1f0") in pfs for e in spec)
    # physnet1 reaches both sockets, so NUMA-affine SR-IOV ports can land anywhere.
    physnet1 = [e for e in spec if e["physical_network"] == "physnet1"]
    assert {next(d for d in pfs.values() if str(d.address) == e["address"]).numa_node
            for e in physnet1} == {0, 1}


def test_storage_server(tmp_path: Path) -> None:
    build_host(tmp_path, "storage-server")
    inv = discover(tmp_path)
    drives = [d for d in inv.devices if d.class_code == "010802"
              and d.product_id in ("a80a", "0a54")]
    assert len(drives) == 8
    assert len({d.iommu_group for d in drives}) == 8
    assert sorted(d.numa_node or 0 for d in drives) == [0] * 4 + [1] * 4
    assert [d.driver for d in drives].count(None) == 1


def test_vmd_host(tmp_path: Path) -> None:
    build_host(tmp_path, "vmd-host")
    inv = discover(tmp_path)
    behind = [d for d in inv.devices if d.address.domain == 0x10000]
    assert [str(d.address) for d in behind] == [
        "10000:00:02.0", "10000:00:03.0", "10000:01:00.0", "10000:02:00.0"]
    assert all(d.iommu_group is None and d.numa_node is None for d in behind)
    vmd = one(inv, "0000:64:05.5")
    assert (vmd.product_id, vmd.class_code, vmd.driver) == ("28c0", "010400", "vmd")
    assert vmd.iommu_group is not None


def test_unknown_profile_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        build_host(tmp_path, "mainframe")
    assert err.value.field == "profile" and "gpu-server" in err.value.message
    assert get_profile("vmd-host").name == "vmd-host"


def test_suggested_spec_is_a_copy() -> None:
    spec = suggested_device_spec("gpu-server")
    spec[0]["vendor_id"] = "ffff"
    assert suggested_device_spec("gpu-server")[0]["vendor_id"] == "10de"


# --- scale and the real host -----------------------------------------------------------

def test_hundreds_of_vfs_are_discovered_across_buses(tmp_path: Path) -> None:
    # How fast is bench/inventory.py's discovery section, not a wall-clock limit here.
    tree = SysfsTree(tmp_path)
    for k, count in enumerate((256, 64)):
        addr = f"0000:{0x17 + 0x20 * k:02x}:00.0"
        tree.add_device(pf(addr, total=256, group=tree.next_iommu_group(),
                           netdevs=(FakeNetDev(f"ens{k}f0", f"b4:96:91:00:00:0{k}"),)))
        tree.enable_vfs(addr, count)
    inv = discover(tmp_path)
    assert len(inv.devices) == 322
    last = one(inv, "0000:18:00.7")  # VFs spill onto the next bus, as on real cards
    assert (last.vf_index, last.parent_addr) == (255, A("0000:17:00.0"))


@pytest.mark.skipif(not Path("/sys/bus/pci/devices").is_dir(),
                    reason="LOUD: this machine has no /sys/bus/pci/devices to discover")
def test_discovering_the_real_host_does_not_crash() -> None:
    inv = discover(Path("/"), pci_ids=PciIds.load())
    assert parse_inventory(inventory_to_json(inv)) == inv
    assert inv.host.hostname == socket.gethostname()
    assert inv.host.cpus >= 1
    assert [d.address for d in inv.devices] == sorted(d.address for d in inv.devices)
