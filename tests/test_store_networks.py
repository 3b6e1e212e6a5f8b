"""Networks and ports in the store: records, MAC uniqueness (races included), attaching ports
to a boot, binding them in the claim, the spawn and destroy payloads, and giving them back."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from fleet import check_invariants, profile_inventory, report
from pcipass.errors import Conflict, InvalidInput, NotFound
from pcipass.pci.address import PciAddress
from pcipass.pci.alias import AliasEntry, Constraint
from pcipass.pci.device import DevType, PciDevice
from pcipass.pci.request import PciRequest
from pcipass.records import DeviceFilter, NetworkRecord, PortRecord, ServerRecord, ServerStatus
from pcipass.sched import BootRequest, HostView, fit
from pcipass.store import Store
from pcipass.store.claims import NewServer
from pcipass.store.networks import MAC_TRIES, NewPort
from pcipass.store.schema import hosts
from pcipass.store.tasks import Outcome, TaskStore

PREFIX = "fa:16:3e"
NIC_HOST = "nic"


def vlan_net(store: Store, name: str = "net1", *, project: str | None = None,
             physnet: str = "physnet1", vlan: int = 100) -> NetworkRecord:
    return store.create_network(name=name, project=project, physical_network=physnet,
                                segmentation="vlan", segmentation_id=vlan)


def flat_net(store: Store, name: str = "flat2", *, physnet: str = "physnet2"
             ) -> NetworkRecord:
    return store.create_network(name=name, project=None, physical_network=physnet,
                                segmentation="flat", segmentation_id=None)


def new_port(store: Store, network: NetworkRecord | str, *, project: str = "p1",
             name: str | None = None, vnic_type: str = "direct", mac: str | None = None,
             prefix: str = PREFIX, rng: random.Random | None = None,
             **kw: Any) -> PortRecord:
    values: dict[str, Any] = {"trusted": False, "spoofchk": True, "max_tx_rate_mbps": None,
                              "min_tx_rate_mbps": None, "numa_affinity_policy": None, **kw}
    net_id = network if isinstance(network, str) else network.id
    return store.create_port(project=project, network_id=net_id, name=name,
                             vnic_type=vnic_type, mac=mac, mac_prefix=prefix, rng=rng,
                             **values)


class Scripted(random.Random):
    """Draws the given octets first (then random ones), counting every draw."""

    def __init__(self, octets: list[int], seed: int = 0) -> None:
        super().__init__(seed)
        self.script = list(octets)
        self.draws = 0

    def randrange(self, *args: Any, **kw: Any) -> int:
        self.draws += 1
        if self.script:
            return self.script.pop(0)
        return super().randrange(*args, **kw)


def raises(fn: Callable[[], object], kind: type[Exception]) -> Any:
    with pytest.raises(kind) as exc:
        fn()
    return exc.value


# --- networks -------------------------------------------------------------------------------

def test_networks_are_created_listed_shown_and_scoped_by_project(store: Store) -> None:
    shared = vlan_net(store, "net1")
    own = store.create_network(name="p1-net", project="p1", physical_network="physnet2",
                               segmentation="flat", segmentation_id=None)
    assert (shared.project, shared.physical_network, shared.segmentation,
            shared.segmentation_id, shared.ports) == (None, "physnet1", "vlan", 100, 0)
    assert [n.name for n in store.list_networks()] == ["net1", "p1-net"]
    assert [n.name for n in store.list_networks(project="p1")] == ["net1", "p1-net"]
    assert [n.name for n in store.list_networks(project="p2")] == ["net1"]
    assert store.get_network("net1") == shared
    assert store.get_network(own.id, project="p1") == own
    assert store.get_network("net1", project="p2") == shared       # shared: everyone sees it
    hidden = raises(lambda: store.get_network("p1-net", project="p2"), NotFound)
    assert hidden.field == "network"
    taken = raises(lambda: vlan_net(store, "net1", vlan=200), Conflict)
    assert taken.field == "name"
    new_port(store, shared)
    new_port(store, shared)
    assert store.get_network("net1").ports == 2
    assert {n.name: n.ports for n in store.list_networks()} == {"net1": 2, "p1-net": 0}


def test_deleting_a_network_takes_its_free_ports_and_is_refused_while_one_is_attached(
        store: Store) -> None:
    net = vlan_net(store)
    free = new_port(store, net, name="free")
    held = new_port(store, net, name="held")
    store.prepare_ports("server-1", "p1", [], [held.id], mac_prefix=PREFIX)
    refused = raises(lambda: store.delete_network("net1"), Conflict)
    assert (refused.code, refused.field) == ("network_in_use", "network")
    assert "server-1" in refused.message
    assert {p.id for p in store.list_ports()} == {free.id, held.id}   # nothing deleted
    store.release_ports("server-1")
    store.delete_network(net.id)
    assert store.list_networks() == ()
    assert store.list_ports() == ()
    assert raises(lambda: store.get_port(free.id), NotFound).field == "port"


# --- ports ----------------------------------------------------------------------------------

def test_a_port_gets_a_random_mac_under_the_prefix_or_the_one_given(store: Store) -> None:
    net = vlan_net(store)
    other = vlan_net(store, "net2", vlan=200)
    made = new_port(store, net, name="web", vnic_type="macvtap", trusted=True,
                    spoofchk=False, max_tx_rate_mbps=1000, min_tx_rate_mbps=100,
                    numa_affinity_policy="preferred", rng=random.Random(7))
    assert made.mac.startswith(PREFIX + ":") and len(made.mac) == 17
    assert (made.name, made.project, made.network_id, made.network, made.physical_network,
            made.segmentation_id, made.vnic_type, made.trusted, made.spoofchk,
            made.max_tx_rate_mbps, made.min_tx_rate_mbps, made.numa_affinity_policy,
            made.server_id, made.auto_delete, made.status, made.binding) == (
        "web", "p1", net.id, "net1", "physnet1", 100, "macvtap", True, False, 1000, 100,
        "preferred", None, False, "DOWN", None)
    assert store.get_port(made.id) == made == store.get_port("web", project="p1")
    raises(lambda: store.get_port("web", project="p2"), NotFound)

    given = new_port(store, net, mac="FA:16:3E:00:00:01")
    assert given.mac == "fa:16:3e:00:00:01"
    again = raises(lambda: new_port(store, net, mac="fa:16:3e:00:00:01"), Conflict)
    assert (again.code, again.field) == ("mac_in_use", "mac")
    assert new_port(store, other, mac="fa:16:3e:00:00:01").network == "net2"  # per network
    bad = raises(lambda: new_port(store, net, mac="01:00:5e:00:00:01"), InvalidInput)
    assert bad.field == "mac"
    assert [p.id for p in store.list_ports(network="net1")] == [made.id, given.id]
    assert len(store.list_ports(project="p1")) == 3 and store.list_ports(project="p2") == ()


def test_a_port_on_a_network_the_project_cannot_see_is_not_found(store: Store) -> None:
    private = vlan_net(store, "mine", project="p1")
    refused = raises(lambda: new_port(store, private, project="p2"), NotFound)
    assert refused.field == "network"
    assert new_port(store, "mine", project="p1").network_id == private.id


def test_a_generated_mac_that_is_taken_is_drawn_again_a_bounded_number_of_times(
        store: Store) -> None:
    net = vlan_net(store)
    new_port(store, net, mac="fa:16:3e:00:00:07")
    once = Scripted([7, 8])                       # 5-octet prefix: one draw per MAC
    assert new_port(store, net, prefix="fa:16:3e:00:00", rng=once).mac == "fa:16:3e:00:00:08"
    assert once.draws == 2
    twice = Scripted([0, 0, 7, 0, 0, 8, 0, 0, 9])  # 3-octet prefix: three draws per MAC
    assert new_port(store, net, rng=twice).mac == "fa:16:3e:00:00:09"
    assert twice.draws == 9
    stuck = Scripted([7] * MAC_TRIES)
    exhausted = raises(lambda: new_port(store, net, prefix="fa:16:3e:00:00", rng=stuck),
                       Conflict)
    assert (exhausted.code, exhausted.field, stuck.draws) == ("mac_exhausted", "mac",
                                                              MAC_TRIES)
    assert len(store.list_ports()) == 3           # the failed tries left nothing behind


def _in_threads(count: int, db_url: str, work: Callable[[Store, int], object]
                ) -> tuple[list[object], list[BaseException]]:
    """Run ``work`` in ``count`` threads at once, each on a Store of its own."""
    barrier = threading.Barrier(count)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        own = Store.open(db_url, migrate=False)
        try:
            barrier.wait(timeout=30)
            got = work(own, i)
            with lock:
                results.append(got)
        except BaseException as exc:  # collected for the test's thread
            with lock:
                errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return results, errors


def test_concurrent_creators_with_random_macs_all_get_distinct_ones(
        store: Store, db_url: str) -> None:
    """60 ports from 30 workers at once under a prefix with only 256 MACs: every creation
    succeeds and no MAC repeats. Workers share seeds in pairs, so their first picks clash
    (and one of each pair must retry against the other's uncommitted row)."""
    net = vlan_net(store)
    prefix = "fa:16:3e:00:00"
    rngs = [Scripted([], seed=i // 2) for i in range(30)]

    def work(own: Store, i: int) -> list[str]:
        return [new_port(own, net, prefix=prefix, rng=rngs[i]).mac for _ in range(2)]

    results, errors = _in_threads(30, db_url, work)
    assert errors == []
    macs = [m for got in results if isinstance(got, list) for m in got]
    assert len(macs) == 60 and len(set(macs)) == 60
    assert all(m.startswith(prefix + ":") for m in macs)
    assert sorted(p.mac for p in store.list_ports()) == sorted(macs)
    assert sum(r.draws for r in rngs) > 60        # the clashing pairs did retry


def test_concurrent_creators_of_the_same_mac_one_wins(store: Store, db_url: str) -> None:
    net = vlan_net(store)

    def work(own: Store, _i: int) -> str:
        return new_port(own, net, mac="fa:16:3e:aa:bb:cc").id

    results, errors = _in_threads(8, db_url, work)
    assert len(results) == 1
    assert len(errors) == 7
    assert all(isinstance(e, Conflict) and e.code == "mac_in_use" for e in errors), errors
    assert [p.id for p in store.list_ports()] == results


# --- attaching ports to a boot --------------------------------------------------------------

def test_prepare_ports_makes_new_ports_and_attaches_free_ones_once(store: Store) -> None:
    net = vlan_net(store)
    mine = new_port(store, net, name="mine")
    other = new_port(store, net, project="p2")
    got = store.prepare_ports("s1", "p1", [NewPort(net.id, "macvtap")], [mine.id],
                              mac_prefix="fa:16:3e:01")
    assert [(p.auto_delete, p.server_id, p.vnic_type) for p in got] == [
        (True, "s1", "macvtap"), (False, "s1", "direct")]
    assert got[1].id == mine.id and got[0].mac.startswith("fa:16:3e:01:")
    assert {p.id for p in store.list_ports(server="s1")} == {p.id for p in got}
    in_use = raises(lambda: store.prepare_ports("s2", "p1", [NewPort(net.id, "direct")],
                                                [mine.id], mac_prefix=PREFIX), Conflict)
    assert (in_use.code, in_use.field) == ("port_in_use", "port") and "s1" in in_use.message
    assert store.list_ports(server="s2") == ()       # its new port rolled back with it
    raises(lambda: store.prepare_ports("s2", "p1", [], [other.id], mac_prefix=PREFIX),
           NotFound)                                   # another project's port
    assert store.get_port(other.id).server_id is None
    deleting = raises(lambda: store.delete_port("mine", project="p1"), Conflict)
    assert deleting.code == "port_in_use"

    store.release_ports("s1")
    assert [(p.id, p.server_id) for p in store.list_ports(project="p1")] == [(mine.id, None)]
    store.delete_port("mine", project="p1")
    assert store.list_ports(project="p1") == ()


# --- the claim binds ports ------------------------------------------------------------------

def port_request(port: PortRecord, dev_type: DevType = DevType.VF) -> PciRequest:
    """What ``net.port.port_request`` builds for a port, written out."""
    alias = f"port:{port.id}"
    entry = AliasEntry(name=alias, dev_type=dev_type,
                       match=(Constraint("physical_network", (port.physical_network,)),))
    kind = "PF" if dev_type is DevType.PF else "VF"
    return PciRequest(alias, 1, (entry,), port=port.id,
                      label=f"{kind} on {port.physical_network}")


def nic_devices() -> dict[PciAddress, PciDevice]:
    return {d.address: d for d in profile_inventory("sriov-nic-server").devices}


def host_id(store: Store, name: str) -> int:
    with store._tx.read() as conn:
        found: int = conn.execute(select(hosts.c.id).where(hosts.c.name == name)).scalar_one()
    return found


def boot(store: Store, nics: tuple[PortRecord, ...], reqs: tuple[PciRequest, ...],
         server_id: str) -> ServerRecord:
    req = BootRequest(2, 2048, None, reqs)
    s = NewServer(id=server_id, name="vm", project="p1", flavor_id=None, flavor_name="f",
                  image_id=None, image_name="i", vcpus=2, ram_mb=2048,
                  requests=tuple((r.alias, r.count, r.soft) for r in reqs), ports=nics)

    def decide(view: HostView) -> Any:
        return fit(view, req)

    got = store.claim(s, host_id(store, NIC_HOST), decide)
    assert isinstance(got, ServerRecord), got
    return got


def booted(store: Store) -> tuple[ServerRecord, dict[str, PortRecord]]:
    """A server on the SR-IOV host with a macvtap port made for it, and existing direct,
    direct-physical and normal ports."""
    report(store, NIC_HOST, profile_inventory("sriov-nic-server"))
    net1, flat2 = vlan_net(store), flat_net(store)
    web = new_port(store, net1, name="web", trusted=True, max_tx_rate_mbps=500)
    phys = new_port(store, flat2, name="phys", vnic_type="direct-physical")
    plain = new_port(store, net1, name="plain", vnic_type="normal")
    server_id = str(uuid.uuid4())
    nics = store.prepare_ports(server_id, "p1", [NewPort(net1.id, "macvtap")],
                               [web.id, phys.id, plain.id], mac_prefix=PREFIX)
    tap = nics[0]
    got = boot(store, nics, (port_request(web), port_request(tap),
                             port_request(phys, DevType.PF)), server_id)
    return got, {"tap": tap, "web": web, "phys": phys, "plain": plain}


def test_the_claim_binds_each_port_to_the_device_it_got(store: Store) -> None:
    got, ports = booted(store)
    devices = nic_devices()
    by_id = {p.id: p for p in got.ports}
    assert [p.id for p in got.ports] == [ports[k].id for k in ("tap", "web", "phys", "plain")]
    for key in ("tap", "web"):
        b = by_id[ports[key].id].binding
        assert b is not None and b.host == NIC_HOST
        vf = devices[b.address]
        assert vf.dev_type is DevType.VF and vf.tags["physical_network"] == "physnet1"
        assert vf.parent_addr is not None
        assert (b.pf_netdev, b.vf_index, b.vf_netdev) == (
            devices[vf.parent_addr].netdevs[0].name, vf.vf_index, vf.netdevs[0].name)
    phys = by_id[ports["phys"].id].binding
    assert phys is not None
    pf = devices[phys.address]
    assert pf.dev_type is DevType.PF and pf.tags["physical_network"] == "physnet2"
    assert (phys.pf_netdev, phys.vf_index, phys.vf_netdev) == (pf.netdevs[0].name, None, None)
    assert by_id[ports["plain"].id].binding is None
    # A normal port holds no device and follows its server.
    assert [p.status for p in got.ports] == ["BUILD", "BUILD", "BUILD", "BUILD"]
    # Each port's device is held under its own alias.
    assert {d.alias: d.address for d in got.devices} == {
        f"port:{pid}": p.binding.address for pid, p in by_id.items() if p.binding is not None}
    assert store.get_server(got.id).ports == got.ports
    assert store.get_port("web").server_id == got.id
    check_invariants(store)

    active = store.complete_spawn(got.id)
    assert [p.status for p in active.ports] == ["ACTIVE", "ACTIVE", "ACTIVE", "ACTIVE"]
    listed = store.list_servers(project="p1").items
    assert [s.ports for s in listed] == [active.ports]


def test_the_spawn_payload_lists_interfaces_and_keeps_vfs_out_of_devices(
        store: Store) -> None:
    got, ports = booted(store)
    by_id = {p.id: p for p in got.ports}
    (task,) = TaskStore(store, 300).poll(NIC_HOST)
    payload = task.payload
    phys = by_id[ports["phys"].id].binding
    assert phys is not None
    # The macvtap and direct VFs become <interface>s; the direct-physical PF stays a hostdev.
    assert [d["address"] for d in payload["devices"]] == [str(phys.address)]
    nics = payload["interfaces"]
    assert [n["port"] for n in nics] == [p.id for p in got.ports]
    web = by_id[ports["web"].id]
    assert web.binding is not None
    assert nics[1] == {
        "port": web.id, "vnic_type": "direct", "mac": web.mac, "vlan": 100,
        "address": str(web.binding.address), "pf": web.binding.pf_netdev,
        "vf_index": web.binding.vf_index, "vf_netdev": web.binding.vf_netdev,
        "managed": True, "trusted": True, "spoofchk": True, "max_tx_rate_mbps": 500,
        "min_tx_rate_mbps": None, "network": "net1", "physical_network": "physnet1"}
    tap = by_id[ports["tap"].id].binding
    assert tap is not None and tap.vf_netdev is not None
    assert (nics[0]["vnic_type"], nics[0]["vlan"], nics[0]["vf_netdev"]) == (
        "macvtap", 100, tap.vf_netdev)
    assert (nics[2]["vnic_type"], nics[2]["vlan"], nics[2]["address"], nics[2]["pf"]) == (
        "direct-physical", None, str(phys.address), phys.pf_netdev)
    assert {k: nics[3][k] for k in ("vnic_type", "address", "pf", "vf_index", "vf_netdev")
            } == {"vnic_type": "normal", "address": None, "pf": None, "vf_index": None,
                  "vf_netdev": None}


def test_a_port_detached_before_the_claim_fails_it_whole(store: Store) -> None:
    report(store, NIC_HOST, profile_inventory("sriov-nic-server"))
    net = vlan_net(store)
    web = new_port(store, net, name="web")
    server_id = str(uuid.uuid4())
    (nic,) = store.prepare_ports(server_id, "p1", [], [web.id], mac_prefix=PREFIX)
    store.release_ports(server_id)
    refused = raises(lambda: boot(store, (nic,), (port_request(nic),), server_id), Conflict)
    assert refused.code == "port_in_use"
    raises(lambda: store.get_server(server_id), NotFound)
    assert store.get_port(web.id).binding is None
    assert all(d.owner is None for d in store.list_devices(DeviceFilter(host=NIC_HOST),
                                                           limit=1000).items)
    check_invariants(store)


# --- giving ports back ----------------------------------------------------------------------

def test_deleting_the_server_deletes_its_own_ports_and_detaches_the_others(
        store: Store) -> None:
    got, ports = booted(store)
    tasks = TaskStore(store, 300)
    store.complete_spawn(got.id)
    deleting = tasks.delete(got.id, force=False)
    assert deleting.status is ServerStatus.DELETING
    assert all(p.server_id == got.id for p in deleting.ports)   # kept until the host confirms
    destroy = next(t for t in tasks.poll(NIC_HOST) if t.kind == "destroy")
    assert [(n["port"], n["address"]) for n in destroy.payload["interfaces"]] == [
        (p.id, None if p.binding is None else str(p.binding.address)) for p in got.ports]
    assert tasks.result(destroy.id, Outcome(ok=True), host=NIC_HOST)

    gone = store.get_server(got.id)
    assert gone.status is ServerStatus.DELETED and gone.ports == () and gone.devices == ()
    raises(lambda: store.get_port(ports["tap"].id), NotFound)       # made by the boot
    left = {p.id: p for p in store.list_ports()}
    assert set(left) == {ports[k].id for k in ("web", "phys", "plain")}
    assert all((p.server_id, p.binding, p.status) == (None, None, "DOWN")
               for p in left.values())
    check_invariants(store)
    store.delete_network("net1")                  # nothing holds it any more


def test_a_failed_spawn_keeps_the_ports_attached_but_unbound_until_deleted(
        store: Store) -> None:
    got, ports = booted(store)
    failed = store.fail_spawn(got.id, "VF programming failed")
    assert failed.status is ServerStatus.ERROR and failed.devices == ()
    assert [(p.id, p.server_id, p.binding, p.status) for p in failed.ports] == [
        (p.id, got.id, None, "DOWN") for p in got.ports]
    check_invariants(store)

    deleted = TaskStore(store, 300).delete(got.id, force=False)
    assert deleted.status is ServerStatus.DELETED and deleted.ports == ()
    assert {p.id for p in store.list_ports()} == {ports[k].id for k in ("web", "phys",
                                                                         "plain")}
    assert all(p.server_id is None for p in store.list_ports())


def test_deleting_a_server_directly_frees_its_ports_too(store: Store) -> None:
    got, ports = booted(store)
    store.delete_server(got.id)
    assert {p.id: p.server_id for p in store.list_ports()} == {
        ports[k].id: None for k in ("web", "phys", "plain")}
    assert store.delete_server(got.id).ports == ()   # idempotent
    check_invariants(store)


def test_a_server_without_ports_has_none_and_an_empty_interfaces_list(store: Store) -> None:
    report(store, NIC_HOST, profile_inventory("sriov-nic-server"))
    got = boot(store, (), (), str(uuid.uuid4()))
    assert got.ports == () and store.get_server(got.id).ports == ()
    (task,) = TaskStore(store, 300).poll(NIC_HOST)
    assert task.payload["interfaces"] == []
