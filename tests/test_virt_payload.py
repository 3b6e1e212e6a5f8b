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
from pcipass.pci.address import PciAddress
from pcipass.virt import from_payload as exported_from_payload
from pcipass.virt.domain import DiskFormat, HostdevUnit, VirtType
from pcipass.virt.libvirt_driver import LibvirtDriver
from pcipass.virt.nodedev import FakeNodeDevices
from pcipass.virt.payload import (
    DestroyPayload,
    PayloadDevice,
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
            live = read_hostdevs(d.get_xml(s.name))
            assert {h.host for h in live} == {x for u in s.hostdevs for x in u.addresses}
            assert {h.host for h in live if not h.managed} == set(s.unmanaged_addresses)
        finally:
            d.destroy(s.name)
            d.undefine(s.name)
        for addr in s.unmanaged_addresses:
            d.nodedev_reattach(addr)
        assert not d.exists(s.name)
    assert nodedevs.detached == set()
