"""Hot attach and detach through the services and the store (pcipass.services.attach,
pcipass.store.attach) on SQLite and PostgreSQL: the claim on the server's own host, quota,
the attach/detach tasks and what their results do, tenant isolation, the payloads the agent
parses."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from fleet import (
    ADMIN,
    catalog,
    gpu,
    inventory,
    member,
    profile_inventory,
    report,
    settings,
)
from pcipass.errors import AliasNotSupportedByImage, Conflict, NotFound, QuotaExceeded
from pcipass.records import DeviceFilter, DeviceState, Principal, Role, ServerRecord, ServerStatus
from pcipass.services import Cloud
from pcipass.store import Store
from pcipass.store.events import list_events
from pcipass.store.schema import servers, usage_records
from pcipass.virt.payload import change_fragments, parse_change

P1 = member("p1")


def agent(host: str) -> Principal:
    return Principal(f"agent-{host}", Role.AGENT, host=host)


@pytest.fixture
def cloud(store: Store) -> Cloud:
    c = Cloud(store, settings())
    # node1: three GPUs (two on NUMA node 0, one on node 1); node2: two free GPUs.
    report(store, "node1", inventory(gpu("0000:3b:00.0", group=10, numa=0),
                                     gpu("0000:3c:00.0", group=11, numa=0),
                                     gpu("0000:5e:00.0", group=12, numa=1)))
    report(store, "node2", inventory(gpu("0000:3b:00.0", group=10, numa=0),
                                     gpu("0000:5e:00.0", group=11, numa=1)))
    catalog(c, {"g1": {"pci_passthrough:alias": "gpu:1"},
                "g1.numa": {"pci_passthrough:alias": "gpu:1", "hw:numa_nodes": "1"},
                "plain": {}})
    return c


def run_tasks(cloud: Cloud, host: str, *, ok: bool = True, message: str | None = None,
              kinds: tuple[str, ...] = ("spawn", "attach", "detach", "destroy")) -> list[Any]:
    """Play the host's agent: every open task of ``kinds`` reports ``ok``."""
    done = []
    for t in cloud.tasks.poll(agent(host), host):
        if t.kind in kinds:
            cloud.tasks.start(agent(host), t.id)
            assert cloud.tasks.result(agent(host), t.id, ok=ok, message=message,
                                      domain_xml=None)
            done.append(t)
    return done


def active(cloud: Cloud, flavor: str = "g1", name: str = "vm",
           p: Principal = P1) -> ServerRecord:
    s = cloud.create_server(p, name=name, flavor=flavor, image="img")
    assert s.status is ServerStatus.BUILDING, s.fault
    assert s.host is not None
    run_tasks(cloud, s.host)
    s = cloud.get_server(ADMIN, s.id)
    assert s.status is ServerStatus.ACTIVE
    return s


def states(cloud: Cloud, host: str) -> dict[str, tuple[DeviceState, str | None]]:
    return {str(d.device.address): (d.state, d.owner)
            for d in cloud.store.list_devices(DeviceFilter(host=host), limit=1000).items}


def requests_of(store: Store, server_id: str) -> list[list[Any]]:
    with store._tx.read() as conn:
        return list(conn.execute(select(servers.c.requests)
                                 .where(servers.c.id == server_id)).scalar_one())


CHANGES = ("attach_device", "detach_device", "attach_interface", "detach_interface")


def events(store: Store, server_id: str) -> list[tuple[str, str]]:
    """The server's hot-plug events, oldest first."""
    with store._tx.read() as conn:
        return [(e.action, e.outcome) for e in list_events(conn, server_id)
                if e.action in CHANGES]


def open_usage(store: Store, server_id: str) -> set[str]:
    with store._tx.read() as conn:
        return {r.address for r in conn.execute(select(usage_records.c.address).where(
            usage_records.c.server_id == server_id, usage_records.c.ended_at.is_(None)))}


# --- attach -----------------------------------------------------------------------------------

def test_attach_claims_on_the_servers_own_host_and_allocates_on_confirmation(
        store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    host = s.host
    assert host is not None
    (first,) = [str(d.address) for d in s.devices]
    got = cloud.attach_device(P1, "vm", alias="gpu")
    assert got.status is ServerStatus.ACTIVE and got.host == host
    added = {str(d.address): d.state for d in got.devices}
    assert added.pop(first) is DeviceState.ALLOCATED
    (new,) = added
    assert added[new] is DeviceState.CLAIMED
    assert states(cloud, host)[new] == (DeviceState.CLAIMED, s.id)
    assert requests_of(store, s.id) == [["gpu", 1, False], ["gpu", 1, False]]
    assert open_usage(store, s.id) == {first}

    (task,) = [t for t in cloud.tasks.poll(agent(host), host) if t.kind == "attach"]
    p = parse_change(task.payload)
    assert (p.action, [str(d.address) for d in p.devices], p.interfaces) == (
        "attach_device", [new], ())
    (frag,) = change_fragments(p)
    assert frag.key == f"pci:{new}" and "<hostdev" in frag.xml
    assert frag.xml.count("<address") == 1   # the host function only: libvirt picks the slot

    run_tasks(cloud, host)
    after = cloud.get_server(P1, "vm")
    assert after.status is ServerStatus.ACTIVE
    assert {str(d.address): d.state for d in after.devices} == {
        first: DeviceState.ALLOCATED, new: DeviceState.ALLOCATED}
    assert open_usage(store, s.id) == {first, new}
    assert ("attach_device", "started") in events(store, s.id)
    assert events(store, s.id)[-1] == ("attach_device", "done")


def test_no_free_device_on_the_host_is_a_409_naming_it_and_the_server_stays(
        store: Store, cloud: Cloud) -> None:
    # The server lands on node2 (pack: fewest matching devices); node1 keeps three free.
    s = active(cloud)
    assert s.host == "node2"
    cloud.attach_device(P1, "vm", alias="gpu")
    run_tasks(cloud, "node2")
    before = cloud.get_server(P1, "vm")
    with pytest.raises(Conflict) as err:
        cloud.attach_device(P1, "vm", alias="gpu")
    assert err.value.code == "no_free_device"
    assert "node2" in err.value.message and "lacks 1 free 'gpu' device" in err.value.message
    after = cloud.get_server(P1, "vm")
    assert (after.host, after.devices, after.status) == (
        "node2", before.devices, ServerStatus.ACTIVE)
    assert all(st is DeviceState.AVAILABLE for st, _o in states(cloud, "node1").values())
    assert events(store, s.id)[-1] == ("attach_device", "failed")
    assert cloud.tasks.poll(agent("node2"), "node2") == []


def test_attach_honours_the_guests_numa_cell_under_the_aliass_policy(
        store: Store, cloud: Cloud) -> None:
    # With hw:numa_nodes the guest sits on one node: gpu (legacy) and strict (required)
    # only take a device on that node; loose (preferred) takes one elsewhere when it must.
    cloud.create_aliases(ADMIN, [
        {"name": name, "vendor_id": "10de", "product_id": "20f1", "device_type": "type-PCI",
         "numa_policy": policy} for name, policy in (("strict", "required"),
                                                     ("loose", "preferred"))])
    report(store, "node3", inventory(gpu("0000:3b:00.0", group=10, numa=0),
                                     gpu("0000:5e:00.0", group=11, numa=1)))
    s = cloud.create_server(P1, name="vm", flavor="g1.numa", image="img")
    assert s.host is not None
    run_tasks(cloud, s.host)
    s = cloud.get_server(P1, "vm")
    (cell,) = s.numa_cells
    (held,) = s.devices
    assert held.numa_node == cell
    for alias in ("strict", "gpu"):
        with pytest.raises(Conflict) as err:
            cloud.attach_device(P1, "vm", alias=alias)
        assert err.value.code == "no_free_device" and "NUMA" in err.value.message
    got = cloud.attach_device(P1, "vm", alias="loose")
    assert {d.numa_node for d in got.devices if d.state is DeviceState.CLAIMED} == {1 - cell}


def test_attach_over_quota_is_refused_and_takes_nothing(store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    cloud.set_quota(ADMIN, project="p1", alias="gpu", limit=1)
    with pytest.raises(QuotaExceeded) as err:
        cloud.attach_device(P1, "vm", alias="gpu")
    assert err.value.code == "quota_exceeded" and "holds 1" in err.value.message
    assert len(cloud.get_server(P1, "vm").devices) == 1
    assert requests_of(store, s.id) == [["gpu", 1, False]]
    assert events(store, s.id)[-1] == ("attach_device", "failed")
    cloud.set_quota(ADMIN, project="p1", alias="gpu", limit=2)
    assert len(cloud.attach_device(P1, "vm", alias="gpu").devices) == 2


def test_a_failed_attach_frees_the_devices_and_keeps_the_server_as_it_was(
        store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    host = s.host
    assert host is not None
    got = cloud.attach_device(P1, "vm", alias="gpu")
    (new,) = [str(d.address) for d in got.devices if d.state is DeviceState.CLAIMED]
    (t,) = run_tasks(cloud, host, ok=False, message="libvirt: no free hot-plug slot")
    assert t.kind == "attach"
    after = cloud.get_server(P1, "vm")
    assert after.status is ServerStatus.ACTIVE and after.devices == s.devices
    assert states(cloud, host)[new] == (DeviceState.AVAILABLE, None)
    assert requests_of(store, s.id) == [["gpu", 1, False]]
    with store._tx.read() as conn:
        last = list_events(conn, s.id)[-1]
    assert (last.action, last.outcome) == ("attach_device", "failed")
    assert last.message == "libvirt: no free hot-plug slot"


def test_only_an_active_server_of_the_callers_project_can_change(
        store: Store, cloud: Cloud) -> None:
    building = cloud.create_server(P1, name="early", flavor="g1", image="img")
    with pytest.raises(Conflict) as err:
        cloud.attach_device(P1, "early", alias="gpu")
    assert err.value.code == "server_not_active"
    assert building.host is not None
    run_tasks(cloud, building.host)
    with pytest.raises(NotFound):
        cloud.attach_device(member("p2"), "early", alias="gpu")
    with pytest.raises(NotFound):
        cloud.detach_device(member("p2"), building.id, address=str(building.devices[0].address))
    with pytest.raises(NotFound) as missing:
        cloud.attach_device(P1, "early", alias="nonesuch")
    assert missing.value.field == "alias"
    assert cloud.attach_device(ADMIN, building.id, alias="gpu").status is ServerStatus.ACTIVE


# --- detach -----------------------------------------------------------------------------------

def test_detach_frees_only_when_the_host_confirms(store: Store, cloud: Cloud) -> None:
    s = active(cloud, flavor="plain")
    host = s.host
    assert host is not None
    cloud.attach_device(P1, "vm", alias="gpu")
    run_tasks(cloud, host)
    (dev,) = cloud.get_server(P1, "vm").devices
    addr = str(dev.address)
    queued = cloud.detach_device(P1, "vm", address=addr)
    assert [(str(d.address), d.state) for d in queued.devices] == [
        (addr, DeviceState.ALLOCATED)]
    # Asked again while pending: nothing more is queued.
    cloud.detach_device(P1, "vm", address=addr)
    assert [t.kind for t in cloud.tasks.poll(agent(host), host)] == ["detach"]
    # A failed detach changes nothing.
    run_tasks(cloud, host, ok=False, message="guest refused the unplug")
    assert states(cloud, host)[addr] == (DeviceState.ALLOCATED, s.id)
    assert events(store, s.id)[-1] == ("detach_device", "failed")
    cloud.detach_device(P1, "vm", address=addr)
    run_tasks(cloud, host)
    after = cloud.get_server(P1, "vm")
    assert after.devices == () and after.status is ServerStatus.ACTIVE
    assert states(cloud, host)[addr] == (DeviceState.AVAILABLE, None)
    assert requests_of(store, s.id) == []
    assert open_usage(store, s.id) == set()
    assert events(store, s.id)[-1] == ("detach_device", "done")


def test_detach_of_a_device_the_server_does_not_hold_is_not_found(
        store: Store, cloud: Cloud) -> None:
    active(cloud)
    with pytest.raises(NotFound) as err:
        cloud.detach_device(P1, "vm", address="0000:99:00.0")
    assert err.value.field == "address"


# --- interfaces -------------------------------------------------------------------------------

@pytest.fixture
def sriov(store: Store, cloud: Cloud) -> Cloud:
    report(store, "sriov-1", profile_inventory("sriov-nic-server"))
    cloud.create_network(ADMIN, name="net1", physical_network="physnet1",
                         segmentation="vlan", segmentation_id=100)
    return cloud


def test_attach_and_detach_an_interface_binds_a_vf_and_deletes_the_auto_port(
        store: Store, sriov: Cloud) -> None:
    cloud = sriov
    s = cloud.create_server(P1, name="vm", flavor="plain", image="img",
                            nics=[{"net_id": "net1", "vnic_type": "direct"}])
    assert s.host == "sriov-1", s.fault
    run_tasks(cloud, "sriov-1")
    got = cloud.attach_interface(P1, "vm", {"net_id": "net1", "vnic_type": "direct"})
    assert len(got.ports) == 2
    new = got.ports[1]
    assert new.auto_delete and new.binding is not None and new.name == "vm-nic1"
    assert states(cloud, "sriov-1")[str(new.binding.address)] == (DeviceState.CLAIMED, s.id)
    (task,) = [t for t in cloud.tasks.poll(agent("sriov-1"), "sriov-1") if t.kind == "attach"]
    p = parse_change(task.payload)
    assert p.action == "attach_interface" and p.devices == ()
    (nic,) = p.interfaces
    assert (nic.port, nic.vlan, str(nic.address)) == (new.id, 100, str(new.binding.address))
    run_tasks(cloud, "sriov-1")
    vf = str(new.binding.address)
    assert states(cloud, "sriov-1")[vf] == (DeviceState.ALLOCATED, s.id)
    assert cloud.get_port(P1, new.id).status == "ACTIVE"

    with pytest.raises(Conflict) as err:
        cloud.detach_device(P1, "vm", address=vf)
    assert err.value.code == "device_is_port"
    cloud.detach_interface(P1, "vm", port=new.id)
    assert states(cloud, "sriov-1")[vf] == (DeviceState.ALLOCATED, s.id)
    run_tasks(cloud, "sriov-1")
    assert states(cloud, "sriov-1")[vf] == (DeviceState.AVAILABLE, None)
    with pytest.raises(NotFound):
        cloud.get_port(P1, new.id)
    assert len(cloud.get_server(P1, "vm").ports) == 1
    assert events(store, s.id)[-2:] == [("detach_interface", "started"),
                                        ("detach_interface", "done")]


def test_a_failed_interface_attach_gives_an_existing_port_back(
        store: Store, sriov: Cloud) -> None:
    cloud = sriov
    port = cloud.create_port(P1, network="net1", name="mine", vnic_type="macvtap")
    cloud.create_server(P1, name="vm", flavor="plain", image="img",
                        nics=[{"net_id": "net1", "vnic_type": "direct"}])
    run_tasks(cloud, "sriov-1")
    got = cloud.attach_interface(P1, "vm", {"port_id": "mine"})
    assert [p.id for p in got.ports][-1] == port.id
    run_tasks(cloud, "sriov-1", ok=False, message="macvtap failed")
    back = cloud.get_port(P1, "mine")
    assert (back.server_id, back.binding, back.status) == (None, None, "DOWN")
    assert len(cloud.get_server(P1, "vm").ports) == 1
    # A port in use elsewhere is refused before anything is claimed.
    cloud.attach_interface(P1, "vm", {"port_id": "mine"})
    with pytest.raises(Conflict) as err:
        cloud.attach_interface(P1, "vm", {"port_id": "mine"})
    assert err.value.code == "port_in_use" and err.value.field == "port_id"


def test_no_free_vf_on_the_host_refuses_the_interface_and_makes_no_port(
        store: Store, sriov: Cloud) -> None:
    cloud = sriov
    cloud.create_network(ADMIN, name="far", physical_network="physnet9",
                         segmentation="vlan", segmentation_id=9)
    cloud.create_server(P1, name="vm", flavor="plain", image="img",
                        nics=[{"net_id": "net1", "vnic_type": "direct"}])
    run_tasks(cloud, "sriov-1")
    with pytest.raises(Conflict) as err:
        cloud.attach_interface(P1, "vm", {"net_id": "far", "vnic_type": "direct"})
    assert err.value.code == "no_free_device" and "sriov-1" in err.value.message
    assert [p.network for p in cloud.list_ports(P1)] == ["net1"]


def test_attach_refuses_an_alias_the_servers_image_cannot_drive(store: Store,
                                                                cloud: Cloud) -> None:
    cloud.create_image(ADMIN, name="plain-os", source="/images/plain.qcow2",
                       properties={"hw_pci_supported_aliases": ""})
    s = cloud.create_server(P1, name="nogpu", flavor="plain", image="plain-os")
    assert s.host is not None
    run_tasks(cloud, s.host)
    with pytest.raises(AliasNotSupportedByImage) as caught:
        cloud.attach_device(P1, "nogpu", alias="gpu")
    assert caught.value.field == "alias" and "'plain-os'" in caught.value.message
    got = cloud.get_server(ADMIN, s.id)
    assert got.devices == () and got.status is ServerStatus.ACTIVE
    assert not [t for t in cloud.tasks.poll(agent(s.host), s.host) if t.kind == "attach"]
