"""Domain XML: the spec's rules, the XML's shape, libvirt's schema and its test driver.

Every spec in ``SPECS`` (each kind of XML the builder writes) must validate against libvirt's
own RelaxNG schema and define and start in ``test:///default``, with its devices coming back
unchanged through ``XMLDesc``. The schema is libvirt's (``libvirt-daemon`` installs it): where
it is missing the schema tests skip, except in CI (``CI=true``) or with
``PCIPASS_REQUIRE_LIBVIRTD=1``, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from pcipass.errors import InvalidInput
from pcipass.pci.address import PciAddress
from pcipass.pci.device import NumaNode
from pcipass.virt.domain import (
    BootDisk,
    DirectInterface,
    DiskFormat,
    DomainSpec,
    GuestCell,
    HostdevInterface,
    HostdevUnit,
    NetworkInterface,
    NumaPlacement,
    VirtType,
    format_cpuset,
)
from pcipass.virt.libvirt_driver import LibvirtDriver
from pcipass.virt.xml import build_domain, build_domain_xml, parse_xml, read_hostdevs
from strategies import addresses

SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")
REQUIRE = os.environ.get("CI") == "true" or os.environ.get("PCIPASS_REQUIRE_LIBVIRTD") == "1"
TEST_URI = "test:///default"


def need(reason: str) -> None:
    """Skip loudly, or fail where the environment promises libvirt (CI)."""
    if REQUIRE:
        pytest.fail(f"{reason} (required: CI=true or PCIPASS_REQUIRE_LIBVIRTD=1)")
    pytest.skip(f"NOT TESTED: {reason}")


# -- builders ---------------------------------------------------------------------------------

def a(text: str) -> PciAddress:
    return PciAddress.parse(text)


def unit(*addrs: str, managed: bool = True) -> HostdevUnit:
    return HostdevUnit(tuple(a(x) for x in addrs), managed=managed)


def spec(name: str = "guest", **kw: object) -> DomainSpec:
    base: dict[str, object] = {
        "name": name, "uuid": uuid.uuid5(uuid.NAMESPACE_DNS, name), "vcpus": 2,
        "memory_mb": 1024,
        "disk": BootDisk("/var/lib/pcipass/instances/guest/disk.qcow2",
                         "/var/lib/pcipass/images/cirros.qcow2"),
    }
    base.update(kw)
    return DomainSpec(**base)  # type: ignore[arg-type]


GPU = unit("0000:3b:00.0", "0000:3b:00.1")
TWO_CELLS = NumaPlacement.even(4, 2048, [NumaNode(0, (0, 1, 2, 3)), NumaNode(1, (8, 9, 10, 11))])

SPECS: dict[str, DomainSpec] = {
    "plain": spec(disk=None),
    "disk-qcow2": spec(),
    "disk-raw-backing": spec(disk=BootDisk("/srv/o.qcow2", "/srv/img.raw", DiskFormat.RAW)),
    "one-hostdev": spec(hostdevs=(unit("0000:5e:00.0"),)),
    "multifunction": spec(hostdevs=(GPU,)),
    "unmanaged": spec(hostdevs=(unit("0000:af:00.0", "0000:af:00.1", managed=False),)),
    "vmd-domain": spec(hostdevs=(unit("10000:01:00.0"), unit("1abcd:02:00.0", "1abcd:02:00.3"))),
    "renumbered-unit": spec(hostdevs=(unit("0000:3b:00.1", "0000:3b:00.2"),)),
    "unit-across-slots": spec(hostdevs=(unit("0000:3b:00.0", "0000:3c:00.0"),)),
    "numa-1-cell": spec(hostdevs=(GPU,), numa=NumaPlacement.even(
        2, 1024, [NumaNode(1, (4, 5, 6, 7))])),
    "numa-2-cells": spec(vcpus=4, memory_mb=2048, numa=TWO_CELLS,
                         hostdevs=(GPU, unit("0000:d8:00.0", managed=False))),
    "numa-uneven": spec(vcpus=3, memory_mb=1536, numa=NumaPlacement((
        GuestCell(0, (0,), 512, 1, (16, 17)), GuestCell(1, (1, 2), 1024, 0, (0, 1, 2, 3))))),
    "hostdev-interface": spec(interfaces=(
        HostdevInterface("fa:16:3e:00:00:01", a("0000:5e:10.2"), vlan=42),
        HostdevInterface("fa:16:3e:00:00:02", a("0000:5e:10.3")),
    )),
    "hostdev-interface-unmanaged": spec(interfaces=(
        HostdevInterface("fa:16:3e:00:00:03", a("0000:5e:10.4"), vlan=4094, managed=False),)),
    "direct-interface": spec(interfaces=(
        DirectInterface("fa:16:3e:00:00:04", "ens1f0v3", vlan=100),
        DirectInterface("fa:16:3e:00:00:05", "ens1f0v4"),
    )),
    "network-interface": spec(interfaces=(
        NetworkInterface("fa:16:3e:00:00:08", "default"),)),
    # one port of each vnic type: direct, macvtap, normal; direct-physical is the PF hostdev
    "every-vnic-type": spec(hostdevs=(unit("0000:86:00.0"),), interfaces=(
        HostdevInterface("fa:16:3e:00:01:01", a("0000:5e:10.2"), vlan=100),
        DirectInterface("fa:16:3e:00:01:02", "ens1f0v3", vlan=100),
        NetworkInterface("fa:16:3e:00:01:03", "default"),
    )),
    "everything": spec(vcpus=4, memory_mb=2048, numa=TWO_CELLS,
                       hostdevs=(GPU, unit("10000:01:00.0", managed=False)),
                       interfaces=(HostdevInterface("fa:16:3e:00:00:06", a("0000:5e:10.5"), 7),
                                   DirectInterface("fa:16:3e:00:00:07", "ens2f0v1", 8),
                                   NetworkInterface("fa:16:3e:00:00:09", "default"))),
    "qemu-type": spec(virt_type=VirtType.QEMU, hostdevs=(GPU,)),
}


# -- libvirt's schema -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    if not SCHEMA.exists():
        need(f"libvirt's schema {SCHEMA} is missing (install libvirt-daemon)")
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def assert_valid(schema: etree.RelaxNG, xml: str) -> None:
    doc = etree.fromstring(xml.encode())
    assert schema.validate(doc), f"{schema.error_log}\n{xml}"


@pytest.fixture(scope="module")
def libvirt_test() -> Iterator[LibvirtDriver]:
    with LibvirtDriver(TEST_URI) as driver:
        yield driver


@pytest.mark.parametrize("case", sorted(SPECS))
def test_schema_accepts(schema: etree.RelaxNG, case: str) -> None:
    assert_valid(schema, build_domain_xml(SPECS[case]))


def test_schema_rejects_what_libvirt_would(schema: etree.RelaxNG) -> None:
    """The schema check has teeth: a broken hostdev is caught."""
    root = build_domain(SPECS["multifunction"])
    root.find("devices/hostdev/source/address").set("bus", "bus-three")  # type: ignore[union-attr]
    assert not schema.validate(root)


def test_schema_rejects_a_broken_interface_of_each_vnic_type(schema: etree.RelaxNG) -> None:
    """The new interface kinds are checked too: each one, damaged, is refused."""
    for n in range(3):
        root = build_domain(SPECS["every-vnic-type"])
        nic = root.findall("devices/interface")[n]
        nic.find("mac").set("address", "not-a-mac")  # type: ignore[union-attr]
        assert not schema.validate(root), n
    root = build_domain(SPECS["network-interface"])
    root.find("devices/interface/source").attrib.pop("network")  # type: ignore[union-attr]
    root.find("devices/interface/source").set("bridge", "")  # type: ignore[union-attr]
    assert not schema.validate(root)


def facts(xml: str) -> dict[str, object]:
    """What we wrote and expect libvirt to keep (it adds defaults, orders devices its way)."""
    root = parse_xml(xml)

    def attrs(path: str) -> list[dict[str, str]]:
        return [dict(el.attrib) for el in root.iterfind(path)]

    nics = []
    for nic in root.iterfind("devices/interface"):
        src = nic.find("source")
        addr = src.find("address") if src is not None else None
        nics.append((nic.get("type"), nic.get("managed", "no"), nic.find("mac").get("address"),  # type: ignore[union-attr]
                     dict(addr.attrib) if addr is not None else dict(src.attrib),  # type: ignore[union-attr]
                     [t.get("id") for t in nic.iterfind("vlan/tag")]))
    return {
        "hostdevs": read_hostdevs(root),
        "interfaces": nics,
        "memory": root.findtext("memory"),
        "vcpu": (root.findtext("vcpu"), root.find("vcpu").get("cpuset")),  # type: ignore[union-attr]
        "vcpupin": attrs("cputune/vcpupin"),
        "numatune": attrs("numatune/memory") + attrs("numatune/memnode"),
        "cells": attrs("cpu/numa/cell"),
        "disk": attrs("devices/disk/source") + attrs("devices/disk/backingStore/source")
        + attrs("devices/disk/backingStore/format"),
        "machine": root.find("os/type").get("machine"),  # type: ignore[union-attr]
    }


@pytest.mark.parametrize("case", sorted(SPECS))
def test_defines_starts_and_round_trips_in_test_driver(libvirt_test: LibvirtDriver,
                                                       case: str) -> None:
    s = SPECS[case]
    name = f"rt-{case}-{uuid.uuid4().hex[:8]}"
    built = spec(name, **{f: getattr(s, f) for f in (
        "vcpus", "memory_mb", "disk", "hostdevs", "numa", "interfaces", "virt_type")})
    xml = build_domain_xml(built)
    assert libvirt_test.define(xml) == name
    try:
        libvirt_test.start(name)
        assert libvirt_test.is_active(name)
        live = libvirt_test.get_xml(name)
        assert facts(live) == facts(xml)
        assert len(read_hostdevs(live)) == sum(len(u.addresses) for u in s.hostdevs)
    finally:
        libvirt_test.destroy(name)
        libvirt_test.undefine(name)
    assert not libvirt_test.exists(name)


# -- the XML's shape --------------------------------------------------------------------------

def test_hostdev_shape() -> None:
    root = build_domain(SPECS["one-hostdev"])
    (hd,) = root.iterfind("devices/hostdev")
    assert dict(hd.attrib) == {"mode": "subsystem", "type": "pci", "managed": "yes"}
    assert hd.find("driver").attrib == {"name": "vfio"}  # type: ignore[union-attr]
    assert dict(hd.find("source/address").attrib) == {  # type: ignore[union-attr]
        "domain": "0x0000", "bus": "0x5e", "slot": "0x00", "function": "0x0"}
    assert dict(hd.find("address").attrib) == {  # type: ignore[union-attr]
        "type": "pci", "domain": "0x0000", "bus": "0x01", "slot": "0x00", "function": "0x0"}
    (ctl,) = root.iterfind("devices/controller")
    assert dict(ctl.attrib) == {"type": "pci", "index": "1", "model": "pcie-root-port"}


def test_multifunction_unit_shares_one_guest_slot() -> None:
    got = read_hostdevs(build_domain_xml(SPECS["multifunction"]))
    assert [(h.host, h.guest, h.multifunction) for h in got] == [
        (a("0000:3b:00.0"), a("0000:01:00.0"), True),
        (a("0000:3b:00.1"), a("0000:01:00.1"), False),
    ]


def test_each_unit_gets_its_own_root_port() -> None:
    s = spec(hostdevs=(GPU, unit("0000:5e:00.0"), unit("0000:af:00.0", "0000:af:00.1")))
    root = build_domain(s)
    assert [c.get("index") for c in root.iterfind("devices/controller")] == ["1", "2", "3"]
    got = read_hostdevs(root)
    assert [h.guest for h in got] == [a("0000:01:00.0"), a("0000:01:00.1"), a("0000:02:00.0"),
                                      a("0000:03:00.0"), a("0000:03:00.1")]
    assert [h.multifunction for h in got] == [True, False, False, True, False]


def test_unmanaged_unit() -> None:
    got = read_hostdevs(build_domain_xml(SPECS["unmanaged"]))
    assert [h.managed for h in got] == [False, False]
    assert 'managed="no"' in build_domain_xml(SPECS["unmanaged"])


def test_vmd_domain_written_as_it_is() -> None:
    root = build_domain(SPECS["vmd-domain"])
    doms = [el.get("domain") for el in root.iterfind("devices/hostdev/source/address")]
    assert doms == ["0x10000", "0x1abcd", "0x1abcd"]
    assert [h.host for h in read_hostdevs(root)] == [
        a("10000:01:00.0"), a("1abcd:02:00.0"), a("1abcd:02:00.3")]


def test_units_without_function_zero_are_renumbered_from_zero() -> None:
    got = read_hostdevs(build_domain_xml(SPECS["renumbered-unit"]))
    assert [(h.host.function, h.guest.function if h.guest else None) for h in got] == [
        (1, 0), (2, 1)]
    across = read_hostdevs(build_domain_xml(SPECS["unit-across-slots"]))
    assert [h.guest for h in across] == [a("0000:01:00.0"), a("0000:01:00.1")]


def test_numa_two_cells() -> None:
    root = build_domain(SPECS["numa-2-cells"])
    assert root.find("vcpu").attrib == {"placement": "static", "cpuset": "0-3,8-11"}  # type: ignore[union-attr]
    assert [dict(p.attrib) for p in root.iterfind("cputune/vcpupin")] == [
        {"vcpu": "0", "cpuset": "0-3"}, {"vcpu": "1", "cpuset": "0-3"},
        {"vcpu": "2", "cpuset": "8-11"}, {"vcpu": "3", "cpuset": "8-11"}]
    assert root.find("numatune/memory").attrib == {"mode": "strict", "nodeset": "0-1"}  # type: ignore[union-attr]
    assert [dict(m.attrib) for m in root.iterfind("numatune/memnode")] == [
        {"cellid": "0", "mode": "strict", "nodeset": "0"},
        {"cellid": "1", "mode": "strict", "nodeset": "1"}]
    assert [dict(c.attrib) for c in root.iterfind("cpu/numa/cell")] == [
        {"id": "0", "cpus": "0-1", "memory": "1048576", "unit": "KiB"},
        {"id": "1", "cpus": "2-3", "memory": "1048576", "unit": "KiB"}]
    assert root.findtext("memory") == str(2048 * 1024)


def test_no_numa_means_no_pinning() -> None:
    root = build_domain(SPECS["multifunction"])
    for path in ("cputune", "numatune", "cpu"):
        assert root.find(path) is None
    assert root.find("vcpu").get("cpuset") is None  # type: ignore[union-attr]


def test_boot_disk_is_an_overlay_on_the_image() -> None:
    root = build_domain(SPECS["disk-raw-backing"])
    (disk,) = root.iterfind("devices/disk")
    assert dict(disk.attrib) == {"type": "file", "device": "disk"}
    assert disk.find("driver").attrib == {"name": "qemu", "type": "qcow2"}  # type: ignore[union-attr]
    assert disk.find("source").get("file") == "/srv/o.qcow2"  # type: ignore[union-attr]
    assert disk.find("backingStore").get("type") == "file"  # type: ignore[union-attr]
    assert disk.find("backingStore/format").get("type") == "raw"  # type: ignore[union-attr]
    assert disk.find("backingStore/source").get("file") == "/srv/img.raw"  # type: ignore[union-attr]
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}  # type: ignore[union-attr]


def test_machine_and_type() -> None:
    root = build_domain(SPECS["plain"])
    assert root.get("type") == "kvm"
    assert root.find("os/type").attrib == {"arch": "x86_64", "machine": "q35"}  # type: ignore[union-attr]
    assert build_domain(SPECS["qemu-type"]).get("type") == "qemu"
    assert root.findtext("vcpu") == "2"
    assert root.findtext("uuid") == str(SPECS["plain"].uuid)


def test_interfaces_shape() -> None:
    root = build_domain(SPECS["everything"])
    hostdev_nic, direct_nic, network_nic = root.iterfind("devices/interface")
    assert dict(hostdev_nic.attrib) == {"type": "hostdev", "managed": "yes"}
    assert hostdev_nic.find("mac").get("address") == "fa:16:3e:00:00:06"  # type: ignore[union-attr]
    assert dict(hostdev_nic.find("source/address").attrib) == {  # type: ignore[union-attr]
        "type": "pci", "domain": "0x0000", "bus": "0x5e", "slot": "0x10", "function": "0x5"}
    assert hostdev_nic.find("vlan/tag").get("id") == "7"  # type: ignore[union-attr]
    assert dict(direct_nic.attrib) == {"type": "direct"}
    assert dict(direct_nic.find("source").attrib) == {  # type: ignore[union-attr]
        "dev": "ens2f0v1", "mode": "passthrough"}
    assert direct_nic.find("model").get("type") == "virtio"  # type: ignore[union-attr]
    assert direct_nic.find("vlan/tag").get("id") == "8"  # type: ignore[union-attr]
    assert dict(network_nic.attrib) == {"type": "network"}
    assert [(c.tag, dict(c.attrib)) for c in network_nic] == [
        ("mac", {"address": "fa:16:3e:00:00:09"}), ("source", {"network": "default"}),
        ("model", {"type": "virtio"})]
    no_vlan = build_domain(SPECS["direct-interface"]).findall("devices/interface")[1]
    assert no_vlan.find("vlan") is None
    nics = read_hostdevs(root, interfaces=True)
    assert [h.host for h in nics][-1] == a("0000:5e:10.5")
    assert len(read_hostdevs(root)) == 3


def test_values_are_never_formatted_into_markup() -> None:
    evil = "x'><hostdev>&amp;<\"y"
    s = spec(name=evil, disk=BootDisk(f"/tmp/{evil}.qcow2", "/img/a b&c.qcow2"))
    root = parse_xml(build_domain_xml(s))
    assert root.findtext("name") == evil
    assert root.find("devices/disk/source").get("file") == f"/tmp/{evil}.qcow2"  # type: ignore[union-attr]
    assert root.find("devices/hostdev") is None


def test_read_hostdevs_refuses_broken_xml() -> None:
    with pytest.raises(InvalidInput):
        read_hostdevs("<domain><devices>")
    with pytest.raises(InvalidInput):
        read_hostdevs("<domain><devices><hostdev type='pci'><source><address domain='zz'/>"
                      "</source></hostdev></devices></domain>")


def test_parse_xml_does_not_expand_entities() -> None:
    xml = ('<!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
           "<domain><name>&e;</name></domain>")
    assert "root:" not in (parse_xml(xml).findtext("name") or "")


# -- the spec's rules -------------------------------------------------------------------------

@pytest.mark.parametrize(("cpus", "text"), [
    ((), ""), ((3,), "3"), ((0, 1, 2, 5), "0-2,5"), ((7, 1, 0, 6, 1), "0-1,6-7"),
    ((0, 2, 4), "0,2,4"),
])
def test_format_cpuset(cpus: tuple[int, ...], text: str) -> None:
    assert format_cpuset(cpus) == text


@pytest.mark.parametrize(("build", "field"), [
    (lambda: HostdevUnit(()), "addresses"),
    (lambda: unit("0000:3b:00.0", "0000:3b:00.0"), "addresses"),
    (lambda: HostdevUnit(tuple(PciAddress(0, 1, s, f) for s in (0, 1) for f in range(5))),
     "addresses"),
    (lambda: spec(name=""), "name"),
    (lambda: spec(name="a/b"), "name"),
    (lambda: spec(name=" padded"), "name"),
    (lambda: spec(vcpus=0), "vcpus"),
    (lambda: spec(memory_mb=0), "memory_mb"),
    (lambda: spec(hostdevs=(GPU, unit("0000:3b:00.1"))), "hostdevs"),
    (lambda: spec(hostdevs=(unit("0000:5e:10.2"),), interfaces=(
        HostdevInterface("fa:16:3e:00:00:01", a("0000:5e:10.2")),)), "hostdevs"),
    (lambda: spec(vcpus=3, numa=NumaPlacement.even(2, 1024, [NumaNode(0, (0,))])),
     "numa.cells.vcpus"),
    (lambda: spec(memory_mb=2048, numa=NumaPlacement.even(2, 1024, [NumaNode(0, (0,))])),
     "numa.cells.memory_mb"),
    (lambda: NumaPlacement.even(3, 1024, [NumaNode(0), NumaNode(1)]), "numa"),
    (lambda: NumaPlacement.even(2, 1024, []), "numa"),
    (lambda: NumaPlacement(()), "numa.cells"),
    (lambda: NumaPlacement((GuestCell(1, (0,), 512, 0, (0,)),)), "numa.cells"),
    (lambda: NumaPlacement((GuestCell(0, (0,), 512, 0, (0,)),
                            GuestCell(1, (1,), 512, 0, (1,)))), "numa.cells"),
    (lambda: NumaPlacement((GuestCell(0, (0, 1), 512, 0, (0,)),
                            GuestCell(1, (1,), 512, 1, (1,)))), "numa.cells.vcpus"),
    (lambda: GuestCell(0, (), 512, 0, (0,)), "numa.cells.vcpus"),
    (lambda: GuestCell(0, (0,), 512, 0, ()), "numa.cells.host_cpus"),
    (lambda: GuestCell(0, (0,), 0, 0, (0,)), "numa.cells.memory_mb"),
    (lambda: BootDisk("relative.qcow2", "/img"), "disk.overlay"),
    (lambda: BootDisk("/o", "img"), "disk.backing"),
    (lambda: BootDisk("/o", "/img", "vmdk"), "disk.backing_format"),  # type: ignore[arg-type]
    (lambda: spec(virt_type="xen"), "virt_type"),
    (lambda: HostdevInterface("fa:16:3e:00:00", a("0000:5e:10.2")), "mac"),
    (lambda: HostdevInterface("01:00:5e:00:00:01", a("0000:5e:10.2")), "mac"),
    (lambda: HostdevInterface("fa:16:3e:00:00:01", a("0000:5e:10.2"), vlan=4095), "vlan"),
    (lambda: DirectInterface("fa:16:3e:00:00:01", "eth0", vlan=0), "vlan"),
    (lambda: DirectInterface("fa:16:3e:00:00:01", "a-very-long-netdev-name"), "dev"),
    (lambda: DirectInterface("fa:16:3e:00:00:01", "eth/0"), "dev"),
    (lambda: NetworkInterface("fa:16:3e:00:00:01", ""), "network"),
    (lambda: NetworkInterface("fa:16:3e:00:00:01", "a/b"), "network"),
    (lambda: NetworkInterface("fa:16:3e:00:00:01", " default"), "network"),
    (lambda: NetworkInterface("ff:ff:ff:ff:ff:ff", "default"), "mac"),
])
def test_spec_refuses(build: object, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        build()  # type: ignore[operator]
    assert info.value.field == field


def test_spec_normalises() -> None:
    u = unit("0000:3b:00.1", "0000:3b:00.0")
    assert u.addresses == (a("0000:3b:00.0"), a("0000:3b:00.1"))
    assert HostdevInterface("FA:16:3E:AA:BB:CC", a("0000:5e:10.2")).mac == "fa:16:3e:aa:bb:cc"
    s = spec(hostdevs=[GPU, unit("0000:af:00.0", managed=False)],  # a list becomes a tuple
             interfaces=[HostdevInterface("fa:16:3e:00:00:01", a("0000:5e:10.2"),
                                          managed=False)])
    assert isinstance(s.hostdevs, tuple)
    assert s.unmanaged_addresses == (a("0000:5e:10.2"), a("0000:af:00.0"))
    assert BootDisk("/o", "/i", "raw").backing_format is DiskFormat.RAW  # type: ignore[arg-type]


def test_even_placement_is_novas_split() -> None:
    p = NumaPlacement.even(4, 4096, [NumaNode(3, (6, 7)), NumaNode(1, (2, 3))])
    assert [(c.id, c.vcpus, c.memory_mb, c.host_node, c.host_cpus) for c in p.cells] == [
        (0, (0, 1), 2048, 3, (6, 7)), (1, (2, 3), 2048, 1, (2, 3))]
    assert p.host_nodes == (1, 3)
    assert p.host_cpus == (2, 3, 6, 7)


# -- property: whatever spec, the schema takes it ---------------------------------------------

@st.composite
def units(draw: st.DrawFn) -> list[HostdevUnit]:
    pool = draw(st.lists(addresses(), min_size=0, max_size=12, unique=True))
    out, i = [], 0
    while i < len(pool):
        n = draw(st.integers(1, min(8, len(pool) - i)))
        out.append(HostdevUnit(tuple(pool[i:i + n]), managed=draw(st.booleans())))
        i += n
    return out


@st.composite
def specs(draw: st.DrawFn) -> DomainSpec:
    ncells = draw(st.integers(0, 3))
    per_cpu = draw(st.integers(1, 4))
    per_mem = draw(st.integers(1, 64)) * 128
    vcpus = max(1, ncells) * per_cpu
    memory = max(1, ncells) * per_mem
    numa = None
    if ncells:
        nodes = draw(st.lists(st.integers(0, 7), min_size=ncells, max_size=ncells, unique=True))
        numa = NumaPlacement.even(vcpus, memory, [
            NumaNode(n, tuple(draw(st.lists(st.integers(0, 255), min_size=1, max_size=8))))
            for n in nodes])
    hostdevs = draw(units())
    taken = {x for u in hostdevs for x in u.addresses}
    nics: list[HostdevInterface | DirectInterface | NetworkInterface] = []
    macs = st.integers(0, 0xFFFFFF).map(lambda v: f"fa:16:3e:{v >> 16:02x}:{v >> 8 & 255:02x}:"
                                                  f"{v & 255:02x}")
    vlans = st.none() | st.integers(1, 4094)
    for vf in draw(st.lists(addresses(), max_size=3, unique=True)):
        if vf not in taken:
            nics.append(HostdevInterface(draw(macs), vf, draw(vlans), draw(st.booleans())))
    for dev in draw(st.lists(st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True),
                             max_size=2)):
        nics.append(DirectInterface(draw(macs), dev, draw(vlans)))
    for _ in range(draw(st.integers(0, 2))):
        nics.append(NetworkInterface(draw(macs), "default"))
    disk = draw(st.none() | st.builds(
        BootDisk, st.from_regex(r"/[A-Za-z0-9 _.&<>'-]{1,30}", fullmatch=True),
        st.from_regex(r"/[A-Za-z0-9 _.-]{1,30}", fullmatch=True), st.sampled_from(DiskFormat)))
    name = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,40}", fullmatch=True))
    return DomainSpec(name, uuid.UUID(int=draw(st.integers(0, 2**128 - 1))), vcpus, memory,
                      disk=disk, hostdevs=tuple(hostdevs), numa=numa, interfaces=tuple(nics),
                      virt_type=draw(st.sampled_from(VirtType)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_any_spec_validates(schema: etree.RelaxNG, s: DomainSpec) -> None:
    xml = build_domain_xml(s)
    assert_valid(schema, xml)
    got = read_hostdevs(xml)
    assert sorted(h.host for h in got) == sorted(x for u in s.hostdevs for x in u.addresses)
    for u in s.hostdevs:   # every unit whole in one guest slot, function 0 present
        guests = [h.guest for h in got if h.host in u.addresses]
        assert len({g.slot_address for g in guests if g}) == 1
        assert 0 in {g.function for g in guests if g}


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(specs())
def test_any_spec_defines_in_test_driver(libvirt_test: LibvirtDriver, s: DomainSpec) -> None:
    name = f"prop-{uuid.uuid4().hex}"
    xml = build_domain_xml(spec(name, **{f: getattr(s, f) for f in (
        "vcpus", "memory_mb", "disk", "hostdevs", "numa", "interfaces", "virt_type")}))
    libvirt_test.define(xml)
    try:
        assert read_hostdevs(libvirt_test.get_xml(name)) == read_hostdevs(xml)
    finally:
        libvirt_test.undefine(name)
