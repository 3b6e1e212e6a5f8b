"""The fake sysfs builder keeps to the kernel's layout, so discovery tests mean something."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from pcipass.host.discovery import discover
from pcipass.host.profiles import build_host, build_sriov_scale
from pcipass.host.sysfs_tree import FakeDevice, FakeSriov, SysfsTree, format_cpulist
from pcipass.pci.address import PciAddress

A = PciAddress.parse


def _pf(addr: str = "0000:3b:00.0", total: int = 8) -> FakeDevice:
    return FakeDevice(addr, "8086", "1592", "020000", numa_node=0, iommu_group=1, driver="ice",
                      sriov=FakeSriov(total_vfs=total, vf_product_id="1889", vf_driver="iavf",
                                      first_vf_offset=8))


def test_every_link_is_relative_and_resolves_inside_the_tree(tmp_path: Path) -> None:
    build_host(tmp_path, "sriov-nic-server")
    build_host(tmp_path / "vmd", "vmd-host")
    links = 0
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                links += 1
                target = os.readlink(path)
                assert not os.path.isabs(target), path
                assert path.exists(), f"{path} -> {target} dangles"
                assert tmp_path in path.resolve().parents
    assert links > 100


def test_attribute_files_hold_what_the_kernel_prints(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add_numa_node(0, [0, 1, 2, 3, 8, 9, 10, 11], 1024)
    path = tree.add_device(FakeDevice("0000:17:00.0", "10DE", "0x20f1", "030200", numa_node=0))
    assert (path / "vendor").read_text() == "0x10de\n"
    assert (path / "device").read_text() == "0x20f1\n"
    assert (path / "class").read_text() == "0x030200\n"
    assert (path / "numa_node").read_text() == "0\n"
    assert (path / "local_cpulist").read_text() == "0-3,8-11\n"
    assert path == tmp_path / "sys" / "devices" / "pci0000:17" / "0000:17:00.0"
    assert os.readlink(tree.bus_devices / "0000:17:00.0") == \
        "../../../devices/pci0000:17/0000:17:00.0"
    node = tmp_path / "sys" / "devices" / "system" / "node" / "node0"
    assert (node / "meminfo").read_text().startswith("Node 0 MemTotal:")
    with pytest.raises(ValueError):
        tree.add_device(FakeDevice("0000:18:00.0", "10de", "20f1x", "030200"))
    with pytest.raises(ValueError):
        tree.add_device(FakeDevice("0000:17:00.0", "10de", "20f1", "030200"))


def test_a_tree_reads_the_same_after_moving_it(tmp_path: Path) -> None:
    build_host(tmp_path / "here", "gpu-server")
    before = discover(tmp_path / "here")
    shutil.move(tmp_path / "here", tmp_path / "there")
    assert discover(tmp_path / "there") == before


def test_vf_addresses_follow_offset_and_stride(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add_device(_pf(total=256))
    assert tree.vf_address("0000:3b:00.0", 0) == A("0000:3b:01.0")
    assert tree.vf_address("0000:3b:00.0", 255) == A("0000:3c:00.7")
    tree.add_device(FakeDevice("0000:ff:1f.7", "8086", "1592", "020000",
                               sriov=FakeSriov(total_vfs=4, vf_product_id="1889")))
    with pytest.raises(ValueError, match="past bus ff"):
        tree.vf_address("0000:ff:1f.7", 0)


def test_enable_vfs_checks_the_pf(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add_device(_pf(total=8))
    tree.add_device(FakeDevice("0000:04:00.0", "8086", "1521", "020000"))
    with pytest.raises(ValueError, match="0 to 8"):
        tree.enable_vfs("0000:3b:00.0", 9)
    with pytest.raises(ValueError, match="not an SR-IOV PF"):
        tree.enable_vfs("0000:04:00.0", 1)
    assert tree.enable_vfs("0000:3b:00.0", 2) == [A("0000:3b:01.0"), A("0000:3b:01.1")]
    pf_dir = tree.device_path("0000:3b:00.0")
    assert (pf_dir / "sriov_numvfs").read_text() == "2\n"
    assert os.readlink(pf_dir / "virtfn1") == "../0000:3b:01.1"
    assert os.readlink(tree.device_path("0000:3b:01.1") / "physfn") == "../0000:3b:00.0"


def test_removing_a_pf_takes_its_vfs_groups_and_driver_links(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add_device(_pf())
    tree.enable_vfs("0000:3b:00.0", 3)
    assert (tree.drivers / "iavf" / "0000:3b:01.0").is_symlink()
    tree.remove_device("0000:3b:00.0")
    assert tree.addresses == []
    assert os.listdir(tree.bus_devices) == []
    assert os.listdir(tree.iommu_groups) == []
    assert sorted(os.listdir(tree.drivers / "iavf")) == ["bind", "new_id", "remove_id", "unbind"]


def test_make_unreadable_defeats_root(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add_device(_pf())
    tree.make_unreadable("0000:3b:00.0", "vendor")
    with pytest.raises(OSError):
        (tree.device_path("0000:3b:00.0") / "vendor").read_text()
    fd = os.open(tree.device_path("0000:3b:00.0") / "vendor", os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            os.read(fd, 10)
    finally:
        os.close(fd)


def test_set_driver_moves_the_binding(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add_device(FakeDevice("0000:04:00.0", "8086", "1521", "020000", driver="igb"))
    tree.set_driver("0000:04:00.0", "vfio-pci")
    assert os.path.basename(os.readlink(tree.device_path("0000:04:00.0") / "driver")) == \
        "vfio-pci"
    assert not (tree.drivers / "igb" / "0000:04:00.0").exists()
    assert (tree.drivers / "vfio-pci" / "0000:04:00.0").is_symlink()
    assert tree.device("0000:04:00.0").driver == "vfio-pci"


def test_format_cpulist() -> None:
    assert format_cpulist([3, 0, 1, 2, 8, 10, 11]) == "0-3,8,10-11"
    assert format_cpulist([]) == ""


def test_scale_host_counts(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    build_sriov_scale(tree, pfs=2, vfs_per_pf=16)
    pfs = [a for a in tree.addresses if tree.device(a).sriov is not None]
    assert len(pfs) == 2 and all(len(tree.vfs(p)) == 16 for p in pfs)
    with pytest.raises(ValueError):
        build_sriov_scale(SysfsTree(tmp_path / "x"), pfs=7)


def test_reenabling_vfs_gives_back_the_same_group_numbers(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add_device(_pf(total=8))
    tree.add_device(FakeDevice("0000:04:00.0", "8086", "1521", "020000", iommu_group=2))
    tree.enable_vfs("0000:3b:00.0", 3)
    before = discover(tmp_path).by_address()
    tree.enable_vfs("0000:3b:00.0", 4)
    after = discover(tmp_path).by_address()
    assert set(after) - set(before) == {A("0000:3b:01.3")}
    assert all(after[a] == before[a] for a in before if a != A("0000:3b:00.0"))
    assert [after[A(f"0000:3b:01.{i}")].iommu_group for i in range(4)] == [0, 3, 4, 5]


def test_the_inventory_benchmark_runs_small(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_inventory", Path(__file__).parent.parent / "bench" / "inventory.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up
    try:
        spec.loader.exec_module(bench)
        report = bench.run(pfs=1, vfs_per_pf=4, runs=1)
        assert report["host"]["devices"] == 15  # 9 platform functions, 1 root port, PF, 4 VFs
        assert [r["name"] for r in report["results"]][:2] == ["build sysfs tree", "discover"]
        host = bench.build_bench_host(tmp_path, pfs=1, vfs_per_pf=4, runs=1)
        assert bench.add_one_vf(host) == A("0000:17:01.4")
        json.dumps(report)
    finally:
        del sys.modules[spec.name]
