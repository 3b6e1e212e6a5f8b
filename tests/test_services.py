"""pcipass.services.Cloud over a real store, SQLite and PostgreSQL: every rule of a boot."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from fleet import (
    ADMIN,
    HOST,
    T0,
    Clock,
    a,
    audio,
    catalog,
    check_invariants,
    cloud_of,
    confirm_destroys,
    everything,
    gpu,
    inventory,
    member,
    pf,
    profile_inventory,
    report,
    settings,
    two_gpus,
    vf,
)
from pcipass.config import SchedulerSettings, load_settings
from pcipass.errors import (
    AliasNotSupportedByImage,
    Conflict,
    Forbidden,
    InvalidAlias,
    InvalidConfig,
    InvalidInput,
    InvalidPciRequest,
    NotFound,
    QuotaExceeded,
    UnknownAlias,
)
from pcipass.pci.device import NumaNode
from pcipass.pci.request import pci_requests
from pcipass.records import DeviceFilter, DeviceState, ServerStatus
from pcipass.sched import BootRequest, explain, fit
from pcipass.services import Cloud
from pcipass.store import Store


@pytest.fixture
def cloud(store: Store) -> Cloud:
    return cloud_of(store)


def device(store: Store, host: str, address: str) -> tuple[DeviceState, str | None, str | None]:
    rec = store.get_device(host, a(address))
    return rec.state, rec.owner, rec.reason


# --- booting ------------------------------------------------------------------------------

def test_a_boot_claims_devices_and_queues_a_spawn_task(store: Store, cloud: Cloud) -> None:
    report(store, "node1", two_gpus())
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    server = cloud.create_server(member("p1"), name="vm", flavor="g1", image="img")
    assert (server.status, server.host, server.project) == (ServerStatus.BUILDING, "node1", "p1")
    (held,) = server.devices
    assert (held.alias, held.state, held.vendor_id) == ("gpu", DeviceState.CLAIMED, "10de")
    assert device(store, "node1", str(held.address)) == (DeviceState.CLAIMED, server.id, None)
    assert cloud.get_server(member("p1"), "vm") == server
    assert cloud.get_server(member("p1"), server.id) == server
    with store._tx.read() as conn:
        from sqlalchemy import select

        from pcipass.store.schema import tasks
        (task,) = conn.execute(select(tasks)).all()
    assert (task.kind, task.state, task.server_id) == ("spawn", "queued", server.id)
    assert task.payload["devices"] == [{"address": str(held.address), "alias": "gpu",
                                        "managed": True, "unit": 0}]
    assert task.payload["image"]["source"] == "/images/img.qcow2"
    check_invariants(store)


def test_no_host_fits_is_an_error_server_that_counts_hosts_per_reason(
        store: Store, cloud: Cloud) -> None:
    report(store, "two", two_gpus())
    report(store, "one", inventory(gpu("0000:3b:00.0", group=10)))
    report(store, "none", inventory())
    catalog(cloud, {"g2": {"pci_passthrough:alias": "gpu:2"},
                    "big": {}}, vcpus=2, ram_mb=2048)
    cloud.create_flavor(ADMIN, name="huge", vcpus=1, ram_mb=10**7, disk_gb=1, extra_specs={})
    ok = cloud.create_server(ADMIN, name="first", flavor="g2", image="img")
    assert ok.host == "two"
    refused = cloud.create_server(ADMIN, name="second", flavor="g2", image="img")
    assert refused.status is ServerStatus.ERROR
    assert (refused.host, refused.devices) == (None, ())
    assert refused.fault == "No host can satisfy 2 x gpu: 3 hosts lack 2 free 'gpu' devices"
    huge = cloud.create_server(ADMIN, name="huge", flavor="huge", image="img")
    assert huge.fault == "No host can satisfy 1 vCPUs and 10000000 MB RAM: 3 hosts lack RAM"
    check_invariants(store)


def test_explanations_agree_with_the_pure_scheduler_over_every_host(store: Store,
                                                                     cloud: Cloud) -> None:
    """The SQL counts and fit's verdicts, together, say what sched.explain says over a full
    snapshot (modulo the order of equal counts)."""
    small_node1 = replace(HOST, numa_nodes=(HOST.numa_nodes[0],
                                            NumaNode(1, tuple(range(32, 40)), 131072)))
    report(store, "remote", replace(two_gpus(numa=(1, 1)), host=small_node1))
    report(store, "split", replace(two_gpus(numa=(0, 1)), host=small_node1))
    report(store, "empty", inventory())
    catalog(cloud, {})
    cloud.create_aliases(ADMIN, {"name": "gpu-req", "vendor_id": "10de",
                                 "numa_policy": "required"})
    cloud.create_flavor(ADMIN, name="numa2", vcpus=16, ram_mb=4096, disk_gb=1,
                        extra_specs={"pci_passthrough:alias": "gpu-req:2",
                                     "hw:numa_nodes": "1"})
    refused = cloud.create_server(ADMIN, name="vm", flavor="numa2", image="img")
    fl = cloud.get_flavor(ADMIN, "numa2")
    req = BootRequest(fl.vcpus, fl.ram_mb, 1,
                      pci_requests(fl.extra_specs, {}, cloud.aliases.all()))
    pure = explain([fit(h, req) for h in everything(store)], req)
    assert refused.fault is not None
    assert sorted(refused.fault.split(": ", 1)[1].split("; ")) == sorted(
        pure.split(": ", 1)[1].split("; "))
    assert "2 hosts have them only outside the guest's NUMA node (policy required)" in \
        refused.fault
    assert "1 host lacks 2 free 'gpu-req' devices" in refused.fault


def test_explain_answers_without_claiming(store: Store, cloud: Cloud) -> None:
    report(store, "two", two_gpus())
    report(store, "none", inventory())
    catalog(cloud, {"g2": {"pci_passthrough:alias": "gpu:2"}})
    got = cloud.explain(ADMIN, flavor="g2")
    assert got.fits
    assert got.message == "1 host can satisfy 2 x gpu; 1 host lacks 2 free 'gpu' devices"
    verdicts = {v.host: v for v in got.hosts}
    assert verdicts["two"].fits and verdicts["two"].devices == ("0000:3b:00.0",
                                                                 "0000:5e:00.0")
    assert (verdicts["none"].fits, verdicts["none"].reason) == (
        False, "lacks 2 free 'gpu' devices")
    assert all(d.state is DeviceState.AVAILABLE
               for d in store.list_devices(DeviceFilter(host="two")).items)
    with pytest.raises(Forbidden):
        cloud.explain(member("p1"), flavor="g2")


def test_pack_fills_the_fullest_host_and_spread_the_emptiest(store: Store) -> None:
    report(store, "big", inventory(*(gpu(f"0000:{0x10 + i:02x}:00.0", group=i)
                                     for i in range(4))))
    report(store, "small", two_gpus())
    pack = cloud_of(store)
    catalog(pack, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    assert pack.create_server(ADMIN, name="a", flavor="g1", image="img").host == "small"
    spread = cloud_of(store, weigher="spread")
    assert spread.create_server(ADMIN, name="b", flavor="g1", image="img").host == "big"
    check_invariants(store)


def test_boots_without_devices_stay_off_hosts_with_devices(store: Store,
                                                           cloud: Cloud) -> None:
    report(store, "gpus", two_gpus())
    report(store, "plain", inventory())
    catalog(cloud, {"small": {}})
    for i in range(3):
        assert cloud.create_server(ADMIN, name=f"s{i}", flavor="small",
                                   image="img").host == "plain"


def test_vcpus_and_ram_are_used_up(store: Store, cloud: Cloud) -> None:
    report(store, "node1", inventory())  # 64 CPUs, 256 GiB
    catalog(cloud, {})
    cloud.create_flavor(ADMIN, name="half", vcpus=32, ram_mb=1024, disk_gb=1, extra_specs={})
    first = cloud.create_server(ADMIN, name="a", flavor="half", image="img")
    second = cloud.create_server(ADMIN, name="b", flavor="half", image="img")
    third = cloud.create_server(ADMIN, name="c", flavor="half", image="img")
    assert statuses_of(first, second, third) == ["BUILDING", "BUILDING", "ERROR"]
    assert third.fault is not None and "1 host lacks vCPUs" in third.fault
    cloud.delete_server(ADMIN, "a")
    confirm_destroys(cloud)
    assert cloud.create_server(ADMIN, name="d", flavor="half", image="img").host == "node1"
    check_invariants(store)


def statuses_of(*servers: object) -> list[str]:
    return [s.status.value for s in servers]  # type: ignore[attr-defined]


# --- soft requests, NUMA ---------------------------------------------------------------------

def test_soft_requests_are_granted_when_a_host_can_and_recorded_when_not(
        store: Store, cloud: Cloud) -> None:
    report(store, "node1", inventory(gpu("0000:3b:00.0", group=10),
                                     pf("0000:af:00.0", group=20, vfs=1),
                                     vf("0000:af:02.0", "0000:af:00.0", group=21)))
    catalog(cloud, {"gpu-and-vf": {"pci_passthrough:alias": "gpu:1",
                                   "pci_passthrough:alias_preferred": "vf:1"}})
    first = cloud.create_server(ADMIN, name="a", flavor="gpu-and-vf", image="img")
    assert sorted(d.alias or "" for d in first.devices) == ["gpu", "vf"]
    assert first.not_granted == ()
    report(store, "node2", inventory(gpu("0000:3b:00.0", group=10)))
    second = cloud.create_server(ADMIN, name="b", flavor="gpu-and-vf", image="img")
    assert second.status is ServerStatus.BUILDING and second.host == "node2"
    assert [d.alias for d in second.devices] == ["gpu"]
    assert second.not_granted == ("1 x vf",)
    check_invariants(store)


def test_a_soft_request_wins_over_the_packing_order(store: Store, cloud: Cloud) -> None:
    """A host that grants every soft request is found even if it packs worse."""
    report(store, "gpu-only", inventory(gpu("0000:3b:00.0", group=10)))
    report(store, "gpu-and-vf", inventory(
        gpu("0000:3b:00.0", group=10), gpu("0000:5e:00.0", group=11),
        pf("0000:af:00.0", group=20, vfs=1), vf("0000:af:02.0", "0000:af:00.0", group=21)))
    catalog(cloud, {"f": {"pci_passthrough:alias": "gpu:1",
                          "pci_passthrough:alias_preferred": "vf:1"}})
    got = cloud.create_server(ADMIN, name="a", flavor="f", image="img")
    assert got.host == "gpu-and-vf" and got.not_granted == ()


def test_numa_guest_gets_devices_on_its_nodes(store: Store, cloud: Cloud) -> None:
    report(store, "node1", two_gpus(numa=(0, 1)))
    catalog(cloud, {})
    cloud.create_aliases(ADMIN, {"name": "gpu-req", "vendor_id": "10de",
                                 "numa_policy": "required"})
    cloud.create_flavor(ADMIN, name="one-node", vcpus=8, ram_mb=1024, disk_gb=1,
                        extra_specs={"pci_passthrough:alias": "gpu-req:1",
                                     "hw:numa_nodes": "1"})
    cloud.create_flavor(ADMIN, name="two-nodes", vcpus=8, ram_mb=1024, disk_gb=1,
                        extra_specs={"pci_passthrough:alias": "gpu-req:2",
                                     "hw:numa_nodes": "2"})
    one = cloud.create_server(ADMIN, name="a", flavor="one-node", image="img")
    (held,) = one.devices
    assert one.numa_cells == (held.numa_node,)
    two = cloud.create_server(ADMIN, name="b", flavor="two-nodes", image="img")
    assert two.status is ServerStatus.ERROR  # one GPU left
    cloud.delete_server(ADMIN, "a")
    confirm_destroys(cloud)
    two = cloud.create_server(ADMIN, name="c", flavor="two-nodes", image="img")
    assert two.numa_cells == (0, 1) and len(two.devices) == 2
    check_invariants(store)


def test_numa_guests_use_up_their_nodes(store: Store, cloud: Cloud) -> None:
    report(store, "node1", inventory())  # 2 nodes of 32 CPUs
    catalog(cloud, {})
    cloud.create_flavor(ADMIN, name="node", vcpus=20, ram_mb=1024, disk_gb=1,
                        extra_specs={"hw:numa_nodes": "1"})
    got = [cloud.create_server(ADMIN, name=f"s{i}", flavor="node", image="img")
           for i in range(3)]
    assert sorted(s.numa_cells for s in got[:2]) == [(0,), (1,)]
    assert got[2].status is ServerStatus.ERROR
    assert got[2].fault is not None and "NUMA node with 20 vCPUs" in got[2].fault
    check_invariants(store)


# --- PF/VF exclusion, IOMMU units, reasons ------------------------------------------------

def test_pf_and_vfs_exclude_each_other(store: Store, cloud: Cloud) -> None:
    report(store, "node1", inventory(
        pf("0000:af:00.0", group=20, assignable=True, vfs=2),
        vf("0000:af:02.0", "0000:af:00.0", group=21),
        vf("0000:af:02.1", "0000:af:00.0", group=22)))
    catalog(cloud, {"vf1": {"pci_passthrough:alias": "vf:1"},
                    "pf1": {"pci_passthrough:alias": "pf:1"}})
    one = cloud.create_server(ADMIN, name="a", flavor="vf1", image="img")
    assert [d.alias for d in one.devices] == ["vf"]
    state, owner, reason = device(store, "node1", "0000:af:00.0")
    assert (state, owner) == (DeviceState.UNAVAILABLE, None)
    assert reason is not None and "is a PF and its VF" in reason
    refused = cloud.create_server(ADMIN, name="b", flavor="pf1", image="img")
    assert refused.fault == "No host can satisfy 1 x pf: 1 host lacks 1 free 'pf' device"
    cloud.delete_server(ADMIN, "a")
    confirm_destroys(cloud)
    assert device(store, "node1", "0000:af:00.0") == (DeviceState.AVAILABLE, None, None)
    whole = cloud.create_server(ADMIN, name="c", flavor="pf1", image="img")
    assert [str(d.address) for d in whole.devices] == ["0000:af:00.0"]
    for address in ("0000:af:02.0", "0000:af:02.1"):
        state, _owner, reason = device(store, "node1", address)
        assert state is DeviceState.UNAVAILABLE
        assert reason == "is a VF and its PF 0000:af:00.0 is in use"
    assert cloud.create_server(ADMIN, name="d", flavor="vf1", image="img").status is \
        ServerStatus.ERROR
    check_invariants(store)


def test_iommu_group_mates_ride_along_and_blocked_groups_are_never_chosen(
        store: Store, cloud: Cloud) -> None:
    members = ("0000:4b:00.0", "0000:4b:00.1")
    report(store, "node1", inventory(
        gpu("0000:4b:00.0", group=30, product="2230", members=members),
        audio("0000:4b:00.1", group=30, members=members),
        # a GPU sharing its group with a NIC the host keeps: never handed out
        gpu("0000:5e:00.0", group=31, product="2230", members=("0000:5e:00.0",
                                                               "0000:5e:00.1")),
        # and one without an IOMMU group at all
        gpu("0000:86:00.0", group=None, product="2230")))  # type: ignore[arg-type]
    catalog(cloud, {"a1": {"pci_passthrough:alias": "a6000:1"}})
    server = cloud.create_server(ADMIN, name="a", flavor="a1", image="img")
    assert [(str(d.address), d.alias) for d in server.devices] == [
        ("0000:4b:00.0", "a6000"), ("0000:4b:00.1", None)]
    assert device(store, "node1", "0000:4b:00.1")[:2] == (DeviceState.CLAIMED, server.id)
    reason = device(store, "node1", "0000:5e:00.0")[2]
    assert reason is not None and "shares IOMMU group 31 with 0000:5e:00.1" in reason
    reason = device(store, "node1", "0000:86:00.0")[2]
    assert reason is not None and "has no IOMMU group" in reason
    refused = cloud.create_server(ADMIN, name="b", flavor="a1", image="img")
    assert refused.status is ServerStatus.ERROR
    check_invariants(store)


def test_demo_profiles_give_their_reasons_on_device_show(store: Store) -> None:
    report(store, "vmd", profile_inventory("vmd-host"))
    report(store, "gpu", profile_inventory("gpu-server"))
    behind_vmd = store.get_device("vmd", a("10000:01:00.0"))
    assert behind_vmd.reason is not None and "Intel VMD" in behind_vmd.reason
    assert store.get_device("vmd", a("0000:b1:00.0")).reason is None
    assert store.get_device("gpu", a("0000:4b:00.1")).reason is None   # audio: a rider
    # Three P4510s are free, but only the one VFIO can isolate can be handed out.
    assert sum(p.free for p in store.list_pools(host="vmd").items) == 3
    cloud = cloud_of(store)
    cloud.create_aliases(ADMIN, {"name": "p4510", "vendor_id": "8086", "product_id": "0a54"})
    cloud.create_image(ADMIN, name="img", source="/i", properties={})
    cloud.create_flavor(ADMIN, name="disk2", vcpus=1, ram_mb=1, disk_gb=1,
                        extra_specs={"pci_passthrough:alias": "p4510:2"})
    assert cloud.explain(ADMIN, flavor="disk2").message == (
        "No host can satisfy 2 x p4510: 2 hosts lack 2 free 'p4510' devices")


def test_reserved_devices_are_not_chosen(store: Store, cloud: Cloud) -> None:
    report(store, "node1", two_gpus())
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    store.set_reserved("node1", a("0000:3b:00.0"), True)
    got = cloud.create_server(ADMIN, name="a", flavor="g1", image="img")
    assert [str(d.address) for d in got.devices] == ["0000:5e:00.0"]
    assert cloud.create_server(ADMIN, name="b", flavor="g1", image="img").status is \
        ServerStatus.ERROR
    check_invariants(store)


def test_a_report_keeps_claimed_devices_and_vanished_ones_are_not_chosen(
        store: Store, cloud: Cloud) -> None:
    report(store, "node1", two_gpus())
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    got = cloud.create_server(ADMIN, name="a", flavor="g1", image="img")
    (held,) = got.devices
    other = next(d for d in two_gpus().devices if d.address != held.address)
    again = store.report_inventory("node1", 1, two_gpus(), now=T0 + timedelta(1))
    assert not again.changed
    assert device(store, "node1", str(held.address))[:2] == (DeviceState.CLAIMED, got.id)
    # The claimed GPU vanishes: kept for its owner, never handed to anyone else.
    store.report_inventory("node1", 1, inventory(other), now=T0)
    assert device(store, "node1", str(held.address))[:2] == (DeviceState.REMOVED, got.id)
    second = cloud.create_server(ADMIN, name="b", flavor="g1", image="img")
    assert [d.address for d in second.devices] == [other.address]
    assert cloud.create_server(ADMIN, name="c", flavor="g1", image="img").status is \
        ServerStatus.ERROR
    check_invariants(store)
    # Deleting the owner lets go of the vanished device for good.
    cloud.delete_server(ADMIN, got.id)
    confirm_destroys(cloud)
    with pytest.raises(NotFound):
        store.get_device("node1", held.address)
    check_invariants(store)


# --- delete ---------------------------------------------------------------------------------

def test_delete_frees_the_claims_and_is_idempotent(store: Store, cloud: Cloud) -> None:
    report(store, "node1", two_gpus())
    catalog(cloud, {"g2": {"pci_passthrough:alias": "gpu:2"}})
    server = cloud.create_server(member("p1"), name="vm", flavor="g2", image="img")
    with pytest.raises(NotFound):
        cloud.delete_server(member("p2"), server.id)
    asked = cloud.delete_server(member("p1"), "vm")
    assert asked.status is ServerStatus.DELETING and len(asked.devices) == 2
    assert cloud.delete_server(member("p1"), server.id) == asked
    confirm_destroys(cloud)
    gone = cloud.get_server(member("p1"), server.id)
    assert (gone.status, gone.devices) == (ServerStatus.DELETED, ())
    assert cloud.delete_server(member("p1"), server.id) == gone
    assert all(d.state is DeviceState.AVAILABLE and d.owner is None
               for d in store.list_devices(DeviceFilter(host="node1")).items)
    assert cloud.create_server(member("p1"), name="vm", flavor="g2",
                               image="img").status is ServerStatus.BUILDING
    assert cloud.list_servers(member("p1")).items[0].status is ServerStatus.BUILDING
    assert [s.id for s in cloud.list_servers(member("p1"), status=ServerStatus.DELETED)
            .items] == [server.id]
    check_invariants(store)


def test_spawn_completion_and_failure(store: Store, cloud: Cloud) -> None:
    report(store, "node1", two_gpus())
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    first = cloud.create_server(ADMIN, name="a", flavor="g1", image="img")
    active = cloud.complete_spawn(first.id)
    assert active.status is ServerStatus.ACTIVE
    assert [d.state for d in active.devices] == [DeviceState.ALLOCATED]
    with pytest.raises(Conflict):
        cloud.complete_spawn(first.id)
    second = cloud.create_server(ADMIN, name="b", flavor="g1", image="img")
    failed = cloud.fail_spawn(second.id, "libvirt: no such image")
    assert (failed.status, failed.fault, failed.devices) == (
        ServerStatus.ERROR, "libvirt: no such image", ())
    check_invariants(store)
    assert cloud.create_server(ADMIN, name="c", flavor="g1", image="img").status is \
        ServerStatus.BUILDING


# --- catalog rules ---------------------------------------------------------------------------

def test_flavor_access(store: Store, cloud: Cloud) -> None:
    report(store, "node1", two_gpus())
    catalog(cloud, {})
    cloud.create_flavor(ADMIN, name="private", vcpus=1, ram_mb=512, disk_gb=1,
                        extra_specs={"pci_passthrough:alias": "gpu:1"}, is_public=False,
                        projects=["p1"])
    assert [f.name for f in cloud.list_flavors(member("p2"))] == []
    with pytest.raises(NotFound):
        cloud.get_flavor(member("p2"), "private")
    with pytest.raises(NotFound):
        cloud.create_server(member("p2"), name="vm", flavor="private", image="img")
    assert cloud.create_server(member("p1"), name="vm", flavor="private",
                               image="img").status is ServerStatus.BUILDING
    shared = cloud.set_flavor_access(ADMIN, "private", add=["p2"], remove=["p1"])
    assert shared.projects == ("p2",)
    assert [f.name for f in cloud.list_flavors(member("p2"))] == ["private"]
    with pytest.raises(NotFound):
        cloud.get_flavor(member("p1"), "private")
    cloud.create_flavor(ADMIN, name="public", vcpus=1, ram_mb=512, disk_gb=1, extra_specs={})
    with pytest.raises(Conflict):
        cloud.set_flavor_access(ADMIN, "public", add=["p1"])
    with pytest.raises(Forbidden):
        cloud.create_flavor(member("p1"), name="mine", vcpus=1, ram_mb=1, disk_gb=1,
                            extra_specs={})
    with pytest.raises(Conflict):
        cloud.create_flavor(ADMIN, name="public", vcpus=1, ram_mb=1, disk_gb=1,
                            extra_specs={})


@pytest.mark.parametrize(("specs", "error", "field"), [
    ({"pci_passthrough:alias": "nope:1"}, UnknownAlias, "extra_specs.pci_passthrough:alias"),
    ({"pci_passthrough:alias": "gpu"}, InvalidPciRequest, "extra_specs.pci_passthrough:alias"),
    ({"hw:numa_nodes": "3"}, InvalidPciRequest, "extra_specs.hw:numa_nodes"),
    ({"hw:pci_numa_affinity_policy": "near"}, InvalidPciRequest,
     "extra_specs.hw:pci_numa_affinity_policy"),
])
def test_bad_flavors_are_refused(store: Store, cloud: Cloud, specs: dict[str, str],
                                 error: type[Exception], field: str) -> None:
    catalog(cloud, {})
    with pytest.raises(error) as exc:
        cloud.create_flavor(ADMIN, name="bad", vcpus=2, ram_mb=1024, disk_gb=1,
                            extra_specs=specs)
    assert exc.value.field == field  # type: ignore[attr-defined]
    assert cloud.list_flavors(ADMIN) == ()


def test_image_support_is_checked_before_anything_is_created(store: Store,
                                                             cloud: Cloud) -> None:
    report(store, "node1", two_gpus())
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    cloud.create_image(ADMIN, name="nic-only", source="/i.qcow2",
                       properties={"hw_pci_supported_aliases": "vf"})
    with pytest.raises(AliasNotSupportedByImage) as exc:
        cloud.create_server(ADMIN, name="vm", flavor="g1", image="nic-only")
    assert "'gpu'" in exc.value.message and "'nic-only'" in exc.value.message
    assert exc.value.status == 400
    assert cloud.list_servers(ADMIN).items == ()
    with pytest.raises(InvalidPciRequest):
        cloud.create_image(ADMIN, name="bad", source="/i", properties={
            "hw_pci_numa_affinity_policy": "near"})


def test_member_images_are_private_to_their_project(store: Store, cloud: Cloud) -> None:
    catalog(cloud, {})
    mine = cloud.create_image(member("p1"), name="mine", source="/m", properties={})
    assert mine.project == "p1"
    assert [i.name for i in cloud.list_images(member("p2"))] == ["img"]
    with pytest.raises(NotFound):
        cloud.get_image(member("p2"), "mine")
    with pytest.raises(Forbidden):
        cloud.delete_image(member("p1"), "img")
    with pytest.raises(Conflict):
        cloud.create_image(member("p1"), name="img", source="/x", properties={})
    cloud.delete_image(member("p1"), "mine")
    assert [i.name for i in cloud.list_images(member("p1"))] == ["img"]


def test_aliases(store: Store) -> None:
    cloud = Cloud(store, replace_alias_config('{"name": "fixed", "vendor_id": "15b3"}'))
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    assert [x.name for x in cloud.list_aliases(member("p1"))] == ["a6000", "fixed", "gpu",
                                                                   "pf", "vf"]
    joined = cloud.create_aliases(ADMIN, {"name": "gpu", "vendor_id": "10de",
                                          "product_id": "2230", "device_type": "type-PCI"})
    assert [len(x.entries) for x in joined] == [2]
    with pytest.raises(InvalidAlias) as exc:
        cloud.create_aliases(ADMIN, {"name": "gpu", "vendor_id": "10de",
                                     "device_type": "type-VF"})
    assert "gpu" in exc.value.message and exc.value.field == "device_type"
    with pytest.raises(Conflict):
        cloud.delete_alias(ADMIN, "gpu")      # flavor g1 uses it
    with pytest.raises(Conflict):
        cloud.delete_alias(ADMIN, "fixed")    # from the configuration
    with pytest.raises(Forbidden):
        cloud.create_aliases(member("p1"), {"name": "x", "vendor_id": "10de"})
    cloud.delete_alias(ADMIN, "a6000")
    with pytest.raises(NotFound):
        cloud.get_alias(ADMIN, "a6000")
    with pytest.raises(NotFound):
        cloud.delete_alias(ADMIN, "a6000")


def replace_alias_config(*entries: str) -> object:
    base = settings()
    return replace(base, pci=replace(base.pci, alias=entries))


# --- quotas and usage ----------------------------------------------------------------------

def test_quota_refuses_with_the_numbers_and_frees_on_delete(store: Store,
                                                            cloud: Cloud) -> None:
    report(store, "node1", inventory(*(gpu(f"0000:{0x10 + i:02x}:00.0", group=i)
                                       for i in range(4))))
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"},
                    "g3": {"pci_passthrough:alias": "gpu:3"}})
    quota = cloud.set_quota(ADMIN, project="p1", alias="gpu", limit=2)
    assert (quota.limit, quota.used) == (2, 0)
    with pytest.raises(QuotaExceeded) as exc:
        cloud.create_server(member("p1"), name="big", flavor="g3", image="img")
    assert exc.value.message == "project p1 may hold 2 'gpu' devices, holds 0, asked for 3"
    assert exc.value.status == 403
    first = cloud.create_server(member("p1"), name="a", flavor="g1", image="img")
    cloud.create_server(member("p1"), name="b", flavor="g1", image="img")
    with pytest.raises(QuotaExceeded) as exc:
        cloud.create_server(member("p1"), name="c", flavor="g1", image="img")
    assert "holds 2, asked for 1" in exc.value.message
    assert [(q.alias, q.used) for q in cloud.list_quotas(member("p1"))] == [("gpu", 2)]
    with pytest.raises(Forbidden):
        cloud.list_quotas(member("p1"), project="p2")
    assert cloud.create_server(member("p2"), name="d", flavor="g1",
                               image="img").status is ServerStatus.BUILDING
    cloud.delete_server(member("p1"), first.id)
    confirm_destroys(cloud)
    assert cloud.create_server(member("p1"), name="e", flavor="g1",
                               image="img").status is ServerStatus.BUILDING
    with pytest.raises(NotFound):
        cloud.set_quota(ADMIN, project="p1", alias="nope", limit=1)
    with pytest.raises(InvalidInput):
        cloud.set_quota(ADMIN, project="p1", alias="gpu", limit=-1)
    cloud.delete_quota(ADMIN, project="p1", alias="gpu")
    assert cloud.list_quotas(ADMIN) == ()
    check_invariants(store)


def test_a_soft_request_over_quota_is_not_granted(store: Store, cloud: Cloud) -> None:
    report(store, "node1", two_gpus())
    catalog(cloud, {"maybe": {"pci_passthrough:alias_preferred": "gpu:1"}})
    cloud.set_quota(ADMIN, project="p1", alias="gpu", limit=0)
    got = cloud.create_server(member("p1"), name="a", flavor="maybe", image="img")
    assert (got.status, got.devices, got.not_granted) == (ServerStatus.BUILDING, (),
                                                          ("1 x gpu",))
    check_invariants(store)


def test_usage_meters_device_seconds_from_allocation_to_free(
        clocked: tuple[Store, Clock]) -> None:
    store, clock = clocked
    cloud = cloud_of(store)
    report(store, "node1", two_gpus())
    catalog(cloud, {"g2": {"pci_passthrough:alias": "gpu:2"}})
    server = cloud.create_server(member("p1"), name="a", flavor="g2", image="img")
    clock.now = T0 + timedelta(minutes=10)    # not metered while building
    cloud.complete_spawn(server.id)
    clock.now = T0 + timedelta(hours=1, minutes=10)
    cloud.delete_server(member("p1"), server.id)
    confirm_destroys(cloud)
    clock.now = T0 + timedelta(hours=5)
    (use,) = cloud.usage(member("p1"), project=None, start=T0, end=clock.now)
    assert (use.project, use.alias, use.device_seconds) == ("p1", "gpu", 2 * 3600.0)
    (half,) = cloud.usage(ADMIN, project="p1", start=T0 + timedelta(minutes=40),
                          end=T0 + timedelta(hours=3))
    assert half.device_seconds == 2 * 1800.0
    assert cloud.usage(ADMIN, project="p2", start=T0, end=clock.now) == ()
    with pytest.raises(Forbidden):
        cloud.usage(member("p1"), project="p2", start=T0, end=clock.now)
    with pytest.raises(InvalidInput):
        cloud.usage(ADMIN, project=None, start=clock.now, end=T0)


# --- permissions -------------------------------------------------------------------------

def test_members_see_only_their_project_and_agents_nothing(store: Store,
                                                           cloud: Cloud) -> None:
    report(store, "node1", two_gpus())
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    mine = cloud.create_server(member("p1"), name="vm", flavor="g1", image="img")
    with pytest.raises(NotFound):
        cloud.get_server(member("p2"), "vm")
    assert cloud.list_servers(member("p2")).items == ()
    with pytest.raises(Forbidden):
        cloud.list_servers(member("p2"), project="p1")
    with pytest.raises(Forbidden):
        cloud.create_server(member("p2"), name="vm", flavor="g1", image="img",
                            project="p1")
    assert [s.id for s in cloud.list_servers(ADMIN, project="p1").items] == [mine.id]
    agent = ADMIN.__class__("agent", ADMIN.role.__class__("agent"), host="node1")
    for call in (lambda: cloud.list_flavors(agent), lambda: cloud.list_servers(agent),
                 lambda: cloud.list_images(agent)):
        with pytest.raises(Forbidden):
            call()


def test_servers_page_newest_first(store: Store, cloud: Cloud) -> None:
    report(store, "node1", inventory())
    catalog(cloud, {"tiny": {}}, vcpus=1, ram_mb=1)
    made = [cloud.create_server(ADMIN, name=f"s{i}", flavor="tiny", image="img").id
            for i in range(5)]
    seen: list[str] = []
    marker = None
    while True:
        page = cloud.list_servers(ADMIN, limit=2, marker=marker)
        seen += [s.id for s in page.items]
        if page.next is None:
            break
        marker = page.next
    assert sorted(seen) == sorted(made) and len(seen) == 5
    with pytest.raises(InvalidInput):
        cloud.list_servers(ADMIN, marker="garbage")


def test_scheduler_settings_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    conf = tmp_path / "pcipass.toml"
    conf.write_text('[scheduler]\nweigher = "spread"\nmax_attempts = 7\ncandidates = 4\n')
    got = load_settings(conf, {}).scheduler
    assert (got.weigher, got.max_attempts, got.candidates) == ("spread", 7, 4)
    assert load_settings(conf, {"PCIPASS_SCHEDULER_WEIGHER": "pack"}).scheduler.weigher == \
        "pack"
    assert load_settings(None, {}).scheduler == SchedulerSettings()
    with pytest.raises(InvalidConfig) as exc:
        load_settings(None, {"PCIPASS_SCHEDULER_WEIGHER": "random"})
    assert exc.value.field == "scheduler.weigher"
    with pytest.raises(InvalidConfig):
        load_settings(None, {"PCIPASS_SCHEDULER_MAX_ATTEMPTS": "0"})
