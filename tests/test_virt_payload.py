"""A spawn task's payload → DomainSpec: the parser's errors, units, NUMA cells, the boot disk;
and the XML of such a spec against libvirt's schema and its ``test:///default`` driver."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from pcipass.errors import InvalidInput
from pcipass.net.port import VnicType
from pcipass.pci.address import PciAddress
from pcipass.virt import from_payload as exported_from_payload
from pcipass.virt.domain import (
    DirectInterface,
    DiskFormat,
    HostdevInterface,
    HostdevUnit,
    NetworkInterface,
    VirtType,
)
from pcipass.virt.libvirt_driver import LibvirtDriver
from pcipass.virt.nodedev import FakeNodeDevices
from pcipass.virt.payload import (
    DestroyPayload,
    PayloadDevice,
    PayloadInterface,
    domain_name,
    from_payload,
    hostdev_units,
    overlay_path,
    parse_destroy,
    parse_spawn,
    unmanaged_addresses,
)
from pcipass.virt.xml import build_domain_xml, read_hostdevs
from test_virt_xml import SCHEMA, TEST_URI, need

SERVER_ID = "6f1c1f3e-8a4b-4c36-9d0e-1b2c3d4e5f60"
HOST_CPUS = {0: (0, 1, 2, 3, 8, 9, 10, 11), 1: (4, 5, 6, 7, 12, 13, 14, 15)}


def a(text: str) -> PciAddress:
    return PciAddress.parse(text)


def dev(address: str, unit: int | None, *, managed: bool = True,
        alias: str | None = "a100") -> dict[str, Any]:
    out: dict[str, Any] = {"address": address, "alias": alias, "managed": managed}
    if unit is not None:
        out["unit"] = unit
    return out


def payload(**over: Any) -> dict[str, Any]:
    """A GPU server's spawn payload: a GPU and its audio function as one unit, on NUMA node 1."""
    base: dict[str, Any] = {
        "server": {"id": SERVER_ID, "name": "train-1", "project": "ml-team"},
        "flavor": {"name": "gpu.small", "vcpus": 4, "ram_mb": 4096, "disk_gb": 20,
                   "extra_specs": {"pci_passthrough:alias": "a100:1"}},
        "image": {"name": "cuda", "source": "/srv/images/cuda.qcow2",
                  "properties": {"hw_pci_supported_aliases": "a100"}},
        "devices": [dev("0000:3b:00.0", 0), dev("0000:3b:00.1", 0, alias=None)],
        "numa": {"cells": [{"id": 0, "host_node": 1, "vcpus": 4, "memory_mb": 4096}]},
    }
    base.update(over)
    return base


def spawn(p: dict[str, Any], state_dir: Path = Path("/var/lib/pcipass")) -> Any:
    return from_payload(p, host_cpus=HOST_CPUS, state_dir=state_dir)


# --- the guest a payload asks for ----------------------------------------------------------

def test_a_gpu_server() -> None:
    s = spawn(payload())
    assert s.name == domain_name(SERVER_ID) == f"pcipass-{SERVER_ID}"
    assert s.uuid == uuid.UUID(SERVER_ID)
    assert (s.vcpus, s.memory_mb) == (4, 4096)
    assert s.hostdevs == (HostdevUnit((a("0000:3b:00.0"), a("0000:3b:00.1"))),)
    assert s.numa is not None
    (cell,) = s.numa.cells
    assert (cell.id, cell.vcpus, cell.memory_mb, cell.host_node) == (0, (0, 1, 2, 3), 4096, 1)
    assert cell.host_cpus == HOST_CPUS[1]
    assert s.disk is not None
    assert s.disk.overlay == f"/var/lib/pcipass/disks/{SERVER_ID}.qcow2"
    assert s.disk.backing == "/srv/images/cuda.qcow2"
    assert s.disk.backing_format is DiskFormat.QCOW2
    assert s.virt_type is VirtType.KVM
    assert exported_from_payload is from_payload


def test_the_payload_is_not_changed() -> None:
    p = payload()
    before = copy.deepcopy(p)
    spawn(p)
    assert p == before


def test_overlay_path_is_absolute_under_the_state_dir(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = spawn(payload(), Path("state"))
    assert s.disk.overlay == str(tmp_path / "state" / "disks" / f"{SERVER_ID}.qcow2")
    assert overlay_path(Path("/x"), SERVER_ID) == Path(f"/x/disks/{SERVER_ID}.qcow2")


@pytest.mark.parametrize(("fmt", "expected"), [("raw", DiskFormat.RAW),
                                               ("qcow2", DiskFormat.QCOW2)])
def test_disk_format_comes_from_the_image(fmt: str, expected: DiskFormat) -> None:
    p = payload(image={"name": "i", "source": "/srv/i.img", "properties": {"disk_format": fmt}})
    assert spawn(p).disk.backing_format is expected


def test_no_numa_no_placement() -> None:
    s = spawn(payload(numa=None))
    assert s.numa is None


def test_two_cells_with_vcpu_counts_and_with_ids() -> None:
    counted = payload(flavor={"vcpus": 6, "ram_mb": 3072}, numa={"cells": [
        {"id": 0, "host_node": 0, "vcpus": 2, "memory_mb": 1024},
        {"id": 1, "host_node": 1, "vcpus": 4, "memory_mb": 2048}]})
    s = spawn(counted)
    assert [c.vcpus for c in s.numa.cells] == [(0, 1), (2, 3, 4, 5)]
    assert [c.host_cpus for c in s.numa.cells] == [HOST_CPUS[0], HOST_CPUS[1]]
    listed = copy.deepcopy(counted)
    listed["numa"]["cells"][0]["vcpus"] = [0, 1]
    listed["numa"]["cells"][1]["vcpus"] = [2, 3, 4, 5]
    assert spawn(listed) == s


def test_units_group_functions_and_lone_devices_stay_alone() -> None:
    p = payload(numa=None, devices=[
        dev("0000:af:00.1", 7), dev("0000:3b:00.0", 3), dev("0000:af:00.0", 7),
        dev("0000:d8:00.0", None), dev("10000:01:00.0", None)])
    s = spawn(p)
    assert [u.addresses for u in s.hostdevs] == [
        (a("0000:3b:00.0"),), (a("0000:af:00.0"), a("0000:af:00.1")), (a("0000:d8:00.0"),),
        (a("10000:01:00.0"),)]
    assert all(u.managed for u in s.hostdevs)


def test_a_unit_with_an_unmanaged_function_is_unmanaged_whole() -> None:
    devices = [PayloadDevice(a("0000:af:00.0"), True, None, 1),
               PayloadDevice(a("0000:af:00.1"), False, None, 1),
               PayloadDevice(a("0000:3b:00.0"), True, None, 2),
               PayloadDevice(a("0000:d8:00.0"), False, None, None)]
    units = hostdev_units(devices)
    assert [(u.addresses, u.managed) for u in units] == [
        ((a("0000:3b:00.0"),), True),
        ((a("0000:af:00.0"), a("0000:af:00.1")), False),
        ((a("0000:d8:00.0"),), False)]
    assert unmanaged_addresses(devices) == (a("0000:af:00.0"), a("0000:af:00.1"),
                                            a("0000:d8:00.0"))


def test_optional_fields_have_defaults() -> None:
    p = payload(numa=None, devices=[{"address": "0000:3b:00.0"}])
    p["flavor"] = {"vcpus": 1, "ram_mb": 512}
    p["image"] = {"source": "/srv/i.qcow2"}
    p["server"] = {"id": SERVER_ID}
    parsed = parse_spawn(p)
    assert parsed.disk_gb == 0 and parsed.image_name == ""
    assert parsed.server.name == SERVER_ID and parsed.server.project == ""
    assert parsed.devices == (PayloadDevice(a("0000:3b:00.0")),)
    assert spawn(p).hostdevs == (HostdevUnit((a("0000:3b:00.0"),)),)


def test_no_devices_is_a_plain_guest() -> None:
    assert spawn(payload(devices=[])).hostdevs == ()
    assert spawn(payload(devices=None)).hostdevs == ()


def test_destroy_payload() -> None:
    got = parse_destroy({"server": {"id": SERVER_ID, "name": "x", "project": "p"},
                         "devices": [{"address": "0000:3b:00.0", "managed": False},
                                     {"address": "0000:3b:00.1", "managed": True}]})
    assert isinstance(got, DestroyPayload)
    assert got.server.id == uuid.UUID(SERVER_ID)
    assert [(d.address, d.managed) for d in got.devices] == [
        (a("0000:3b:00.0"), False), (a("0000:3b:00.1"), True)]
    assert unmanaged_addresses(got.devices) == (a("0000:3b:00.0"),)


# --- ports ---------------------------------------------------------------------------------

def nic(vnic_type: str, port: str, **over: Any) -> dict[str, Any]:
    """A port as the claim bound it: a VF (direct, macvtap), the PF (direct-physical), or
    nothing (normal)."""
    base: dict[str, Any] = {
        "port": port, "vnic_type": vnic_type, "mac": "fa:16:3e:00:00:01", "vlan": 100,
        "address": None, "pf": None, "vf_index": None, "vf_netdev": None, "managed": True,
        "trusted": False, "spoofchk": True, "max_tx_rate_mbps": None, "min_tx_rate_mbps": None,
        "network": "net1", "physical_network": "physnet1",
    }
    if vnic_type in ("direct", "macvtap"):
        base.update(address="0000:5e:10.2", pf="ens1f0", vf_index=3, vf_netdev="ens1f0v3")
    elif vnic_type == "direct-physical":
        base.update(address="0000:86:00.0", pf="ens3f0")
    base.update(over)
    return base


PORTS = [
    nic("direct", "p-direct", mac="fa:16:3e:00:00:01"),
    nic("macvtap", "p-macvtap", mac="fa:16:3e:00:00:02", address="0000:5e:10.3", vf_index=4,
        vf_netdev="ens1f0v4", vlan=None),
    nic("direct-physical", "p-phys", mac="fa:16:3e:00:00:03"),
    nic("normal", "p-normal", mac="FA:16:3E:00:00:04", vlan=None),
]


def port_payload(**over: Any) -> dict[str, Any]:
    """A server with one port of each vnic type; the direct-physical PF is among the devices."""
    return payload(devices=[dev("0000:86:00.0", None, alias="port:p-phys")],
                   interfaces=copy.deepcopy(PORTS), **over)


def test_each_vnic_type_becomes_its_interface() -> None:
    s = spawn(port_payload())
    assert s.interfaces == (
        HostdevInterface("fa:16:3e:00:00:01", a("0000:5e:10.2"), vlan=100, managed=True),
        DirectInterface("fa:16:3e:00:00:02", "ens1f0v4", vlan=None),
        NetworkInterface("fa:16:3e:00:00:04", "default"),
    )
    # direct-physical adds no interface: its PF is the payload's device, a plain hostdev
    assert s.hostdevs == (HostdevUnit((a("0000:86:00.0"),)),)


def test_normal_ports_go_on_the_agents_network() -> None:
    s = from_payload(port_payload(), host_cpus=HOST_CPUS, state_dir=Path("/s"),
                     normal_network="tenant-nat")
    assert [i.network for i in s.interfaces if isinstance(i, NetworkInterface)] == [
        "tenant-nat"]


def test_interfaces_parse_to_typed_values() -> None:
    p = parse_spawn(port_payload())
    direct, macvtap, phys, normal = p.interfaces
    assert direct == PayloadInterface(
        port="p-direct", vnic_type=VnicType.DIRECT, mac="fa:16:3e:00:00:01", vlan=100,
        address=a("0000:5e:10.2"), pf="ens1f0", vf_index=3, vf_netdev="ens1f0v3",
        managed=True, trusted=False, spoofchk=True, max_tx_rate_mbps=None,
        min_tx_rate_mbps=None, network="net1", physical_network="physnet1")
    assert (direct.is_vf, macvtap.is_vf, phys.is_vf, normal.is_vf) == (True, True, False, False)
    assert (direct.on_switch, phys.on_switch, normal.on_switch) == (True, True, False)
    assert normal.mac == "fa:16:3e:00:00:04"       # lower-cased once, here
    assert (phys.address, phys.pf, phys.vf_index) == (a("0000:86:00.0"), "ens3f0", None)


def test_interfaces_optional_fields_have_defaults() -> None:
    raw = {"port": "p", "vnic_type": "direct", "mac": "fa:16:3e:00:00:09",
           "address": "0000:5e:10.2", "pf": "ens1f0", "vf_index": 0,
           "max_tx_rate_mbps": 1000, "min_tx_rate_mbps": 100, "trusted": True}
    (got,) = parse_spawn(payload(interfaces=[raw])).interfaces
    assert (got.vlan, got.managed, got.spoofchk, got.trusted) == (None, True, True, True)
    assert (got.max_tx_rate_mbps, got.min_tx_rate_mbps) == (1000, 100)
    assert parse_spawn(payload(interfaces=None)).interfaces == ()
    assert parse_spawn(payload()).interfaces == ()


def test_destroy_payload_carries_the_interfaces() -> None:
    got = parse_destroy({"server": {"id": SERVER_ID}, "devices": [],
                         "interfaces": copy.deepcopy(PORTS)})
    assert [i.port for i in got.interfaces] == ["p-direct", "p-macvtap", "p-phys", "p-normal"]
    assert got.interfaces[1].vf_index == 4
    # a destroy does not need what only a spawn does: a macvtap VF without a netdev is fine
    without = parse_destroy({"server": {"id": SERVER_ID},
                             "interfaces": [nic("macvtap", "m", vf_netdev=None)]})
    assert without.interfaces[0].vf_netdev is None


def test_a_macvtap_port_without_a_vf_netdev_is_refused_naming_the_port() -> None:
    p = payload(interfaces=[nic("normal", "n1", vlan=None),
                            nic("macvtap", "web-port", vf_netdev=None)])
    with pytest.raises(InvalidInput) as info:
        spawn(p)
    assert info.value.field == "interfaces[1].vf_netdev"
    assert "macvtap port web-port" in info.value.message
    assert "0000:5e:10.2" in info.value.message


# --- errors name the field -----------------------------------------------------------------

Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    def edit(p: dict[str, Any]) -> None:
        obj: Any = p
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return edit


def _drop(path: str) -> Edit:
    def edit(p: dict[str, Any]) -> None:
        obj: Any = p
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        for k in keys[:-1]:
            obj = obj[k]
        del obj[keys[-1]]
    return edit


BAD: dict[str, tuple[Edit, str, str]] = {
    "no server": (_drop("server"), "server", "server is missing"),
    "server not an object": (_set("server", "x"), "server", "must be an object"),
    "server id not a uuid": (_set("server.id", "srv-1"), "server.id", "not a UUID"),
    "server id missing": (_drop("server.id"), "server.id", "missing"),
    "no flavor": (_drop("flavor"), "flavor", "missing"),
    "vcpus zero": (_set("flavor.vcpus", 0), "flavor.vcpus", "at least 1"),
    "vcpus a string": (_set("flavor.vcpus", "4"), "flavor.vcpus", "integer"),
    "vcpus a bool": (_set("flavor.vcpus", True), "flavor.vcpus", "integer"),
    "ram missing": (_drop("flavor.ram_mb"), "flavor.ram_mb", "missing"),
    "disk negative": (_set("flavor.disk_gb", -1), "flavor.disk_gb", "at least 0"),
    "no image": (_drop("image"), "image", "missing"),
    "image without source": (_set("image.source", None), "image.source", "no source"),
    "relative source": (_set("image.source", "cuda.qcow2"), "image.source", "absolute"),
    "unknown disk format": (_set("image.properties", {"disk_format": "vmdk"}),
                            "image.properties.disk_format", "vmdk"),
    "property not a string": (_set("image.properties", {"disk_format": 2}),
                              "image.properties.disk_format", "string"),
    "devices not a list": (_set("devices", {"a": 1}), "devices", "list"),
    "device not an object": (_set("devices.1", "0000:3b:00.1"), "devices[1]", "object"),
    "device without address": (_drop("devices.0.address"), "devices[0].address", "missing"),
    "bad address": (_set("devices.0.address", "3b:00.0:9"), "devices[0].address", "3b:00.0:9"),
    "managed not a bool": (_set("devices.0.managed", "no"), "devices[0].managed", "true or"),
    "unit not an int": (_set("devices.1.unit", "0"), "devices[1].unit", "integer"),
    "alias empty": (_set("devices.0.alias", ""), "devices[0].alias", "non-empty"),
    "device twice": (_set("devices.1.address", "0000:3b:00.0"), "devices[1].address", "twice"),
    "numa not an object": (_set("numa", [1]), "numa", "object"),
    "numa without cells": (_set("numa", {}), "numa.cells", "missing"),
    "numa cells empty": (_set("numa", {"cells": []}), "numa.cells", "empty"),
    "cell without host node": (_drop("numa.cells.0.host_node"), "numa.cells[0].host_node",
                               "missing"),
    "cell on a node the host lacks": (_set("numa.cells.0.host_node", 5),
                                      "numa.cells[0].host_node", "nodes: 0, 1"),
    "cell without vcpus": (_set("numa.cells.0.vcpus", []), "numa.cells[0].vcpus", "empty"),
    "cell vcpus do not add up": (_set("numa.cells.0.vcpus", 3), "numa.cells", "3 vCPUs"),
    "cell memory does not add up": (_set("numa.cells.0.memory_mb", 1024),
                                    "numa.cells.memory_mb", "1024 MiB"),
    "cell memory zero": (_set("numa.cells.0.memory_mb", 0), "numa.cells[0].memory_mb",
                         "at least 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_payloads_name_the_field(case: str) -> None:
    edit, field, words = BAD[case]
    p = payload()
    edit(p)
    with pytest.raises(InvalidInput) as info:
        spawn(p)
    assert info.value.field == field, info.value.message
    assert words in info.value.message
    assert info.value.code in ("invalid_input", "invalid_address")


def test_not_an_object() -> None:
    with pytest.raises(InvalidInput) as info:
        spawn([])  # type: ignore[arg-type]
    assert info.value.field == "payload"
    with pytest.raises(InvalidInput):
        parse_destroy("x")


def _both(*edits: Edit) -> Edit:
    def edit(p: dict[str, Any]) -> None:
        for e in edits:
            e(p)
    return edit


BAD_PORTS: dict[str, tuple[Edit, str, str]] = {
    "interfaces not a list": (_set("interfaces", {"port": "x"}), "interfaces", "list"),
    "interface not an object": (_set("interfaces.0", "p"), "interfaces[0]", "object"),
    "no port": (_drop("interfaces.0.port"), "interfaces[0].port", "missing"),
    "no vnic type": (_drop("interfaces.1.vnic_type"), "interfaces[1].vnic_type", "missing"),
    "unknown vnic type": (_set("interfaces.1.vnic_type", "vdpa"), "interfaces[1].vnic_type",
                          "vdpa"),
    "no mac": (_drop("interfaces.0.mac"), "interfaces[0].mac", "missing"),
    "bad mac": (_set("interfaces.3.mac", "fa:16:3e:00:00"), "interfaces[3].mac",
                "port p-normal"),
    "multicast mac": (_set("interfaces.0.mac", "01:00:5e:00:00:01"), "interfaces[0].mac",
                      "multicast"),
    "vlan zero": (_set("interfaces.0.vlan", 0), "interfaces[0].vlan", "at least 1"),
    "vlan too big": (_set("interfaces.0.vlan", 4095), "interfaces[0].vlan", "4095"),
    "vlan a string": (_set("interfaces.0.vlan", "100"), "interfaces[0].vlan", "integer"),
    "bad address": (_set("interfaces.0.address", "5e:10"), "interfaces[0].address", "5e:10"),
    "direct without address": (_set("interfaces.0.address", None), "interfaces[0].address",
                               "direct port p-direct is not bound"),
    "direct without pf": (_set("interfaces.0.pf", None), "interfaces[0].pf", "missing"),
    "macvtap without vf index": (_set("interfaces.1.vf_index", None),
                                 "interfaces[1].vf_index", "macvtap port p-macvtap"),
    "direct-physical without address": (_set("interfaces.2.address", None),
                                        "interfaces[2].address", "missing"),
    "vf index negative": (_set("interfaces.0.vf_index", -1), "interfaces[0].vf_index",
                          "at least 0"),
    "pf empty": (_set("interfaces.0.pf", ""), "interfaces[0].pf", "non-empty"),
    "trusted not a bool": (_set("interfaces.0.trusted", "yes"), "interfaces[0].trusted",
                           "true or false"),
    "spoofchk not a bool": (_set("interfaces.0.spoofchk", 1), "interfaces[0].spoofchk",
                            "true or false"),
    "managed not a bool": (_set("interfaces.0.managed", "no"), "interfaces[0].managed",
                           "true or false"),
    "rate negative": (_set("interfaces.0.max_tx_rate_mbps", -5),
                      "interfaces[0].max_tx_rate_mbps", "-5"),
    "min above max": (_both(_set("interfaces.0.max_tx_rate_mbps", 10),
                            _set("interfaces.0.min_tx_rate_mbps", 20)),
                      "interfaces[0].min_tx_rate_mbps", "above"),
    "port twice": (_set("interfaces.3.port", "p-direct"), "interfaces[3].port", "twice"),
    "vf bound twice": (_set("interfaces.1.address", "0000:5e:10.2"), "interfaces[1].address",
                       "two ports"),
    "vf also a device": (_set("devices", [dev("0000:5e:10.2", None)]), "hostdevs", "twice"),
}


@pytest.mark.parametrize("case", sorted(BAD_PORTS))
def test_bad_interfaces_name_the_field(case: str) -> None:
    edit, field, words = BAD_PORTS[case]
    p = port_payload()
    edit(p)
    with pytest.raises(InvalidInput) as info:
        spawn(p)
    assert info.value.field == field, info.value.message
    assert words in info.value.message, info.value.message


# --- libvirt takes what comes out ----------------------------------------------------------

CASES: dict[str, dict[str, Any]] = {
    "gpu-numa": payload(),
    "two-cells-unmanaged-vmd": payload(
        flavor={"vcpus": 4, "ram_mb": 2048, "disk_gb": 1},
        image={"name": "raw", "source": "/srv/raw.img", "properties": {"disk_format": "raw"}},
        devices=[dev("0000:3b:00.0", 0), dev("0000:3b:00.1", 0),
                 dev("0000:af:00.0", 1, managed=False), dev("10000:01:00.0", 2)],
        numa={"cells": [{"id": 0, "host_node": 0, "vcpus": 2, "memory_mb": 1024},
                        {"id": 1, "host_node": 1, "vcpus": 2, "memory_mb": 1024}]}),
    "plain": payload(devices=[], numa=None),
    "every-vnic-type": port_payload(),
}


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    if not SCHEMA.exists():
        need(f"libvirt's schema {SCHEMA} is missing (install libvirt-daemon)")
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_payload_xml_validates_against_libvirts_schema(schema: etree.RelaxNG,
                                                       case: str) -> None:
    xml = build_domain_xml(spawn(CASES[case]))
    doc = etree.fromstring(xml.encode())
    assert schema.validate(doc), f"{schema.error_log}\n{xml}"


def type_of(i: object) -> str:
    return {HostdevInterface: "hostdev", DirectInterface: "direct",
            NetworkInterface: "network"}[type(i)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_payload_defines_and_starts_in_the_test_driver(case: str) -> None:
    p = copy.deepcopy(CASES[case])
    p["server"] = {**p["server"], "id": str(uuid.uuid4())}   # test:///default is shared
    s = spawn(p)
    nodedevs = FakeNodeDevices()
    with LibvirtDriver(TEST_URI, nodedevs=nodedevs) as d:
        for addr in s.unmanaged_addresses:
            d.nodedev_detach(addr)
        assert d.define(build_domain_xml(s)) == s.name
        try:
            d.start(s.name)
            assert d.is_active(s.name)
            xml = d.get_xml(s.name)
            live = read_hostdevs(xml)
            assert {h.host for h in live} == {x for u in s.hostdevs for x in u.addresses}
            assert {h.host for h in read_hostdevs(xml, interfaces=True)} - {
                h.host for h in live} == {i.address for i in s.interfaces
                                          if isinstance(i, HostdevInterface)}
            assert [el.get("type") for el in etree.fromstring(xml.encode()).iterfind(
                "devices/interface")] == [type_of(i) for i in s.interfaces]
            assert {h.host for h in live if not h.managed} == set(s.unmanaged_addresses)
        finally:
            d.destroy(s.name)
            d.undefine(s.name)
        for addr in s.unmanaged_addresses:
            d.nodedev_reattach(addr)
        assert not d.exists(s.name)
    assert nodedevs.detached == set()
