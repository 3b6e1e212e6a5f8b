"""Bare-metal hosts: the whole-machine fit (pure), the boot's narrowing and claim on SQLite and
PostgreSQL, the host kind in reports, the flavor spec, the refusals, the fake driver."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet import ADMIN, HOST, T0, a, catalog, cloud_of, confirm_destroys, gpu, inventory, member
from fleet import pf as pf_dev
from fleet import vf as vf_dev
from pcipass.errors import (
    Conflict,
    InvalidConfig,
    InvalidInput,
    InvalidInventory,
    InvalidPciRequest,
    VirtError,
)
from pcipass.pci.alias import Alias, parse_aliases
from pcipass.pci.device import HostKind, PciDevice
from pcipass.pci.inventory import Inventory, inventory_to_json, parse_inventory
from pcipass.pci.request import PciRequest, baremetal_requested
from pcipass.records import DeviceState, ServerStatus
from pcipass.sched.fit import Fit, NoFit, NoFitCode, fit_machine
from pcipass.sched.snapshot import BootRequest, DeviceView, HostView
from pcipass.sched.weigh import WeighPolicy, weigh
from pcipass.services import Cloud
from pcipass.services.baremetal import refuse_baremetal
from pcipass.store import Store
from pcipass.store.claims import NewServer
from pcipass.store.schema import hosts, tasks
from pcipass.virt.baremetal import FakeBareMetalDriver
from pcipass.virt.driver import DriverKind, open_driver

BM = replace(HOST, kind=HostKind.BAREMETAL)


ALIASES = parse_aliases([
    {"name": "gpu", "vendor_id": "10de", "product_id": "20f1", "device_type": "type-PCI"},
    {"name": "vf", "vendor_id": "8086", "device_type": "type-VF"}])
GPU, VF = ALIASES["gpu"], ALIASES["vf"]


def req(alias: Alias, count: int) -> PciRequest:
    return PciRequest(alias=alias.name, count=count, alternatives=alias.entries)


def view(name: str, *devs: PciDevice, states: dict[str, DeviceState] | None = None
         ) -> HostView:
    states = states or {}
    return HostView(name, 64, 262144, (), tuple(
        DeviceView(d, states.get(str(d.address), DeviceState.AVAILABLE)) for d in devs))


NIC = (pf_dev("0000:3b:00.0", group=20, assignable=True, vfs=2),
       vf_dev("0000:3b:02.0", "0000:3b:00.0", group=21),
       vf_dev("0000:3b:02.1", "0000:3b:00.0", group=22))
GPUS = (gpu("0000:5e:00.0", group=10), gpu("0000:86:00.0", group=11))


# --- the whole-machine fit (pure) ---------------------------------------------------------

def test_the_machine_comes_whole_the_requests_under_their_alias() -> None:
    host = view("bm", *GPUS, *NIC)
    got = fit_machine(host, BootRequest(2, 2048, None, (req(GPU, 1),)))
    assert isinstance(got, Fit)
    (assigned,) = got.assignments
    assert assigned.devices == (a("0000:5e:00.0"),)
    # The rest comes along: the other GPU and the PF, never the PF's VFs beside it.
    assert got.machine == (a("0000:3b:00.0"), a("0000:86:00.0"))
    assert got.addresses == (a("0000:3b:00.0"), a("0000:5e:00.0"), a("0000:86:00.0"))
    assert (got.free_vcpus, got.free_ram_mb, got.cells) == (0, 0, ())


def test_a_vf_request_leaves_its_pf_behind_and_takes_the_other_vfs() -> None:
    got = fit_machine(view("bm", *GPUS, *NIC), BootRequest(2, 2048, None, (req(VF, 1),)))
    assert isinstance(got, Fit)
    (assigned,) = got.assignments
    assert assigned.devices == (a("0000:3b:02.0"),)
    assert a("0000:3b:00.0") not in got.addresses
    assert got.machine == (a("0000:3b:02.1"), a("0000:5e:00.0"), a("0000:86:00.0"))


def test_a_machine_without_requests_still_takes_every_device() -> None:
    got = fit_machine(view("bm", *GPUS), BootRequest(2, 2048))
    assert isinstance(got, Fit)
    assert got.assignments == () and got.machine == (a("0000:5e:00.0"), a("0000:86:00.0"))
    assert got.free_matching == 2


def test_a_machine_with_a_held_device_is_occupied() -> None:
    host = view("bm", *GPUS, states={"0000:86:00.0": DeviceState.ALLOCATED})
    got = fit_machine(host, BootRequest(2, 2048, None, (req(GPU, 1),)))
    assert isinstance(got, NoFit) and got.code is NoFitCode.HOST_OCCUPIED


def test_requests_the_machine_cannot_satisfy_say_why() -> None:
    got = fit_machine(view("bm", *GPUS), BootRequest(2, 2048, None, (req(GPU, 3),)))
    assert isinstance(got, NoFit) and got.code is NoFitCode.PCI_COUNT
    got = fit_machine(view("bm", *GPUS), BootRequest(128, 2048))
    assert isinstance(got, NoFit) and got.code is NoFitCode.VCPUS


def test_pack_picks_the_smallest_machine_that_satisfies_spread_the_largest() -> None:
    big = view("big", *GPUS, gpu("0000:af:00.0", group=12), *NIC)
    small = view("small", *GPUS)
    request = BootRequest(2, 2048, None, (req(GPU, 1),))
    fits = [f for h in (big, small) if isinstance(f := fit_machine(h, request), Fit)]
    assert len(fits) == 2
    assert [f.host for f in weigh(fits, WeighPolicy.PACK)] == ["small", "big"]
    assert [f.host for f in weigh(fits, WeighPolicy.SPREAD)] == ["big", "small"]


# --- reports, flavors, drivers -------------------------------------------------------------

def test_the_host_kind_travels_in_the_report_and_defaults_to_hypervisor() -> None:
    inv = inventory(*GPUS, host=BM)
    body = inventory_to_json(inv)
    assert body["host"]["kind"] == "baremetal"
    assert parse_inventory(body).host.kind is HostKind.BAREMETAL
    assert "kind" not in inventory_to_json(inventory(*GPUS))["host"]
    assert parse_inventory(inventory_to_json(inventory(*GPUS))).host.kind is HostKind.HYPERVISOR
    with pytest.raises(InvalidInventory) as exc:
        parse_inventory({"host": {"kind": "mainframe"}, "devices": []})
    assert exc.value.field == "host.kind"


def test_the_flavor_spec_is_true_or_false() -> None:
    assert baremetal_requested({"pcipass:baremetal": "True"}) is True
    assert baremetal_requested({"pcipass:baremetal": "false"}) is False
    assert baremetal_requested({}) is False
    with pytest.raises(InvalidPciRequest) as exc:
        baremetal_requested({"pcipass:baremetal": "yes please"})
    assert exc.value.field == "extra_specs.pcipass:baremetal"


def test_the_fake_driver_records_power_and_refuses_a_second_server(tmp_path: Path) -> None:
    driver = open_driver(DriverKind.BAREMETAL_FAKE, state_dir=tmp_path)
    assert isinstance(driver, FakeBareMetalDriver)
    driver.power_on("s1", (a("0000:5e:00.0"),))
    driver.power_on("s1", (a("0000:5e:00.0"),))          # idempotent
    assert driver.exists("s1") and driver.is_active("s1") and driver.list() == ["s1"]
    with pytest.raises(VirtError, match="server s1"):
        driver.power_on("s2", ())
    with pytest.raises(VirtError, match="no hypervisor"):
        driver.define("<domain/>")
    driver.destroy("s1")
    assert not driver.exists("s1") and not driver.powered()
    assert [(c["op"], c["server"], c["error"] is None) for c in driver.calls()] == [
        ("power_on", "s1", True), ("power_on", "s1", True), ("power_on", "s2", False),
        ("power_off", "s1", True)]


def test_the_agent_kind_must_match_its_driver() -> None:
    from pcipass.cli.agent import host_kind

    assert host_kind(None, "baremetal", DriverKind.BAREMETAL_FAKE) is HostKind.BAREMETAL
    assert host_kind(HostKind.HYPERVISOR, "baremetal", DriverKind.FAKE) is HostKind.HYPERVISOR
    with pytest.raises(InvalidConfig):
        host_kind(None, "baremetal", DriverKind.FAKE)
    with pytest.raises(InvalidConfig):
        host_kind(None, "hypervisor", DriverKind.BAREMETAL_FAKE)


# --- booting on the store (SQLite and PostgreSQL) ------------------------------------------

BM_FLAVORS = {
    "metal-gpu": {"pci_passthrough:alias": "gpu:1", "pcipass:baremetal": "true"},
    "metal": {"pcipass:baremetal": "true"},
    "gpu1": {"pci_passthrough:alias": "gpu:1"},
}


@pytest.fixture
def fleet(store: Store) -> Cloud:
    cloud = cloud_of(store)
    store.report_inventory("hv", None, inventory(gpu("0000:3b:00.0", group=1)),
                           now=_now())
    store.report_inventory("bm-big", None, inventory(
        *GPUS, gpu("0000:af:00.0", group=12), *NIC, host=BM), now=_now())
    store.report_inventory("bm-small", None, inventory(*GPUS, host=BM), now=_now())
    catalog(cloud, BM_FLAVORS)
    return cloud


def _now() -> datetime:
    return T0


def _devices(store: Store, host: str) -> dict[str, tuple[DeviceState, str | None]]:
    from pcipass.records import DeviceFilter

    return {str(d.device.address): (d.state, d.owner)
            for d in store.list_devices(DeviceFilter(host=host), limit=1000).items}


def test_the_host_records_its_kind(fleet: Cloud) -> None:
    assert fleet.store.get_host("bm-small").info.kind is HostKind.BAREMETAL
    assert fleet.store.get_host("hv").info.kind is HostKind.HYPERVISOR
    by_name = {h.name: h.info.kind for h in fleet.store.list_hosts().items}
    assert by_name == {"hv": HostKind.HYPERVISOR, "bm-big": HostKind.BAREMETAL,
                       "bm-small": HostKind.BAREMETAL}


def test_a_bare_metal_boot_takes_the_smallest_free_machine_whole(fleet: Cloud) -> None:
    store = fleet.store
    s = fleet.create_server(member("p1"), name="m1", flavor="metal-gpu", image="img")
    assert (s.status, s.host) == (ServerStatus.BUILDING, "bm-small")
    assert {str(d.address): d.alias for d in s.devices} == {
        "0000:5e:00.0": "gpu", "0000:86:00.0": None}
    assert _devices(store, "bm-small") == {
        "0000:5e:00.0": (DeviceState.CLAIMED, s.id), "0000:86:00.0": (DeviceState.CLAIMED, s.id)}
    with store._tx.read() as conn:
        h = conn.execute(select(hosts).where(hosts.c.name == "bm-small")).one()
        (task,) = conn.execute(select(tasks).where(tasks.c.server_id == s.id)).all()
    assert (h.used_vcpus, h.used_ram_mb, h.pci_free) == (HOST.cpus, HOST.memory_mb, 0)
    assert task.payload["baremetal"] is True
    assert sorted(d["address"] for d in task.payload["devices"]) == [
        "0000:5e:00.0", "0000:86:00.0"]

    # The next goes to the other machine; it takes the PF, not its VFs (they end up unusable).
    s2 = fleet.create_server(member("p1"), name="m2", flavor="metal", image="img")
    assert s2.host == "bm-big"
    big = _devices(store, "bm-big")
    assert {k for k, (state, owner) in big.items() if owner == s2.id} == {
        "0000:3b:00.0", "0000:5e:00.0", "0000:86:00.0", "0000:af:00.0"}
    assert {big["0000:3b:02.0"][0], big["0000:3b:02.1"][0]} == {DeviceState.UNAVAILABLE}
    assert store.get_host("bm-big").device_counts["available"] == 0

    # No machine is left: the boot fails, saying why per host.
    s3 = fleet.create_server(member("p1"), name="m3", flavor="metal", image="img")
    assert (s3.status, s3.host) == (ServerStatus.ERROR, None)
    assert s3.fault is not None
    assert "No bare-metal machine" in s3.fault
    assert "2 hosts run a server already" in s3.fault
    assert "1 host is not a bare-metal host" in s3.fault


def test_a_normal_boot_never_lands_on_a_bare_metal_host(fleet: Cloud) -> None:
    first = fleet.create_server(member("p1"), name="v1", flavor="gpu1", image="img")
    assert first.host == "hv"
    second = fleet.create_server(member("p1"), name="v2", flavor="gpu1", image="img")
    assert second.status is ServerStatus.ERROR
    assert second.fault is not None and "2 hosts are bare-metal hosts" in second.fault
    assert all(owner is None for _s, owner in _devices(fleet.store, "bm-small").values())


def test_the_claim_rechecks_the_machine_under_the_host_lock(fleet: Cloud) -> None:
    store = fleet.store
    s = fleet.create_server(member("p1"), name="m1", flavor="metal", image="img")
    assert s.host == "bm-small"
    with store._tx.read() as conn:
        ids = dict(conn.execute(select(hosts.c.name, hosts.c.id)).all())
    late = NewServer(id="late-1", name="late", project="p1", flavor_id=None, flavor_name="metal",
                     image_id=None, image_name="img", vcpus=2, ram_mb=2048, baremetal=True)

    def machine(v: HostView) -> Fit | NoFit:
        return fit_machine(v, BootRequest(2, 2048))

    got = store.claim(late, ids["bm-small"], machine)
    assert isinstance(got, NoFit) and got.code is NoFitCode.HOST_OCCUPIED
    got = store.claim(replace(late, baremetal=False), ids["bm-big"], machine)
    assert isinstance(got, NoFit) and got.code is NoFitCode.HOST_KIND
    got = store.claim(late, ids["hv"], machine)
    assert isinstance(got, NoFit) and got.code is NoFitCode.HOST_KIND


def test_delete_frees_the_whole_machine(fleet: Cloud) -> None:
    store = fleet.store
    s = fleet.create_server(member("p1"), name="m1", flavor="metal-gpu", image="img")
    fleet.complete_spawn(s.id)
    assert {st for st, _o in _devices(store, "bm-small").values()} == {DeviceState.ALLOCATED}
    fleet.delete_server(member("p1"), "m1")
    confirm_destroys(fleet)
    assert fleet.get_server(member("p1"), s.id).status is ServerStatus.DELETED
    assert set(_devices(store, "bm-small").values()) == {(DeviceState.AVAILABLE, None)}
    with store._tx.read() as conn:
        h = conn.execute(select(hosts).where(hosts.c.name == "bm-small")).one()
    assert (h.used_vcpus, h.used_ram_mb, h.pci_free) == (0, 0, 2)
    again = fleet.create_server(member("p1"), name="m2", flavor="metal-gpu", image="img")
    assert again.host == "bm-small"


def test_hot_plug_on_a_bare_metal_server_is_a_409(fleet: Cloud) -> None:
    s = fleet.create_server(member("p1"), name="m1", flavor="metal", image="img")
    fleet.complete_spawn(s.id)
    with pytest.raises(Conflict) as exc:
        fleet.attach_device(member("p1"), "m1", alias="gpu")
    assert (exc.value.code, exc.value.status) == ("baremetal_server", 409)
    assert "bare-metal host bm-small" in exc.value.message
    with pytest.raises(Conflict) as exc:
        fleet.detach_device(member("p1"), "m1", address="0000:5e:00.0")
    assert exc.value.code == "baremetal_server"
    with pytest.raises(Conflict) as exc:
        refuse_baremetal(fleet.store, fleet.get_server(ADMIN, "m1"), "resize")
    assert exc.value.message.startswith("resize refused for server m1")
    vm = fleet.create_server(member("p1"), name="v1", flavor="gpu1", image="img")
    refuse_baremetal(fleet.store, vm, "resize")    # a hypervisor's server: nothing raised


def test_a_bare_metal_flavor_is_validated_and_takes_no_nics(fleet: Cloud) -> None:
    with pytest.raises(InvalidPciRequest) as exc:
        fleet.create_flavor(ADMIN, name="odd", vcpus=1, ram_mb=1, disk_gb=0,
                            extra_specs={"pcipass:baremetal": "sometimes"})
    assert exc.value.field == "extra_specs.pcipass:baremetal"
    with pytest.raises(InvalidInput) as bad:
        fleet.create_server(member("p1"), name="m1", flavor="metal", image="img",
                            nics=[{"net_id": "n", "vnic_type": "direct"}])
    assert bad.value.field == "nics"


def test_explain_judges_a_bare_metal_flavor_as_its_boot_would(fleet: Cloud) -> None:
    got = fleet.explain(ADMIN, flavor="metal-gpu")
    assert got.fits and [h.host for h in got.hosts if h.fits] == ["bm-small", "bm-big"]
    assert set(got.hosts[0].devices) == {"0000:5e:00.0", "0000:86:00.0"}   # the whole machine
    assert "2 hosts can satisfy" in got.message
    assert "1 host is not a bare-metal host" in got.message
    fleet.create_server(member("p1"), name="m1", flavor="metal", image="img")
    fleet.create_server(member("p1"), name="m2", flavor="metal", image="img")
    full = fleet.explain(ADMIN, flavor="metal")
    assert not full.fits and full.hosts == ()
    assert full.message.startswith("No bare-metal machine can satisfy")
    assert "2 hosts run a server already" in full.message
    with pytest.raises(InvalidInput) as bad:
        fleet.explain(ADMIN, flavor="metal", nics=[{"net_id": "n"}])
    assert bad.value.field == "nics"


def test_explain_of_a_vm_flavor_names_the_bare_metal_hosts_it_skips(fleet: Cloud) -> None:
    got = fleet.explain(ADMIN, flavor="gpu1")
    verdicts = {h.host: (h.fits, h.reason) for h in got.hosts}
    assert verdicts["hv"] == (True, None)
    assert verdicts["bm-big"] == verdicts["bm-small"] == (
        False, "is a bare-metal host (the flavor does not ask for bare metal)")
    assert "2 hosts are bare-metal hosts" in got.message


def test_an_inventory_of_another_kind_is_stored(store: Store) -> None:
    store.report_inventory("x", None, inventory(*GPUS), now=_now())
    assert store.get_host("x").info.kind is HostKind.HYPERVISOR
    result = store.report_inventory("x", 1, Inventory(BM, tuple(GPUS)), now=_now())
    assert result.changed and result.generation == 2
    assert store.get_host("x").info.kind is HostKind.BAREMETAL
