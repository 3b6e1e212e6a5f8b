"""Resize and cold migration through the services and the store (pcipass.services.moves,
pcipass.store.moves) on SQLite and PostgreSQL: the destination claim, the steps each agent
result drives, confirm and revert, failures, quota, usage, tenant isolation, the payloads the
agent parses. The agents are played by hand here; tests/test_e2e_moves.py runs the real ones.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from fleet import (
    ADMIN,
    HOST,
    T0,
    catalog,
    check_invariants,
    gpu,
    inventory,
    member,
    pf,
    report,
    settings,
    vf,
)
from pcipass.errors import Conflict, Forbidden, InvalidInput, NotFound, QuotaExceeded
from pcipass.pci.address import PciAddress
from pcipass.pci.device import HostKind, NetDev
from pcipass.records import (
    DeviceFilter,
    DeviceState,
    MoveStatus,
    Principal,
    Role,
    ServerRecord,
    ServerStatus,
)
from pcipass.services import Cloud
from pcipass.store import Store
from pcipass.store.events import list_events
from pcipass.store.schema import devices, hosts, moves, tasks, usage_records
from pcipass.virt.payload import parse_destroy, parse_spawn

P1 = member("p1")
P2 = member("p2")


def agent(host: str) -> Principal:
    return Principal(f"agent-{host}", Role.AGENT, host=host)


def gpus(*numa: int) -> Any:
    return inventory(*(gpu(f"0000:{0x3b + i:02x}:00.0", group=10 + i, numa=n)
                       for i, n in enumerate(numa)))


@pytest.fixture
def cloud(store: Store) -> Cloud:
    """node1: 3 GPUs, node2: 4 (pack boots a one-GPU server on node1)."""
    c = Cloud(store, settings())
    report(store, "node1", gpus(0, 0, 1))
    report(store, "node2", gpus(0, 0, 1, 1))
    catalog(c, {"g1": {"pci_passthrough:alias": "gpu:1"},
                "g2": {"pci_passthrough:alias": "gpu:2"},
                "g3": {"pci_passthrough:alias": "gpu:3"},
                "g5": {"pci_passthrough:alias": "gpu:5"},
                "plain": {}})
    return c


def play(cloud: Cloud, *, fail: tuple[str, str] | None = None, message: str = "boom",
         only: str | None = None) -> list[tuple[str, str, str]]:
    """Play every host's agent until no task is open: each reports ok, except the first
    task of ``fail`` = (host, kind), which fails. The (host, kind, server) of each run."""
    ran: list[tuple[str, str, str]] = []
    for _ in range(20):
        progressed = False
        for h in cloud.store.list_hosts(limit=100).items:
            if only is not None and h.name != only:
                continue
            for t in cloud.tasks.poll(agent(h.name), h.name):
                cloud.tasks.start(agent(h.name), t.id)
                failing = fail is not None and fail == (h.name, t.kind)
                if failing:
                    fail = None
                assert cloud.tasks.result(agent(h.name), t.id, ok=not failing,
                                          message=message if failing else None,
                                          domain_xml=None if failing else
                                          f"<domain>{t.kind}@{h.name}</domain>")
                ran.append((h.name, t.kind, t.server_id))
                progressed = True
        check_invariants(cloud.store)
        if not progressed:
            return ran
    raise AssertionError("the agents never ran out of work")


def active(cloud: Cloud, flavor: str = "g1", name: str = "vm", p: Principal = P1
           ) -> ServerRecord:
    s = cloud.create_server(p, name=name, flavor=flavor, image="img")
    assert s.status is ServerStatus.BUILDING, s.fault
    play(cloud)
    s = cloud.get_server(ADMIN, s.id)
    assert s.status is ServerStatus.ACTIVE
    return s


def owned(cloud: Cloud, server_id: str) -> dict[tuple[str, str], DeviceState]:
    """(host, address) → state of every device the server owns."""
    return {(d.host, str(d.device.address)): d.state
            for d in cloud.store.list_devices(DeviceFilter(), limit=1000).items
            if d.owner == server_id}


def move_rows(store: Store, server_id: str) -> list[Any]:
    with store._tx.read() as conn:
        return list(conn.execute(select(moves).where(moves.c.server_id == server_id)
                                 .order_by(moves.c.id)))


def open_usage(store: Store, server_id: str) -> set[tuple[str, str]]:
    with store._tx.read() as conn:
        return {(r.host, r.address) for r in conn.execute(
            select(usage_records.c.host, usage_records.c.address).where(
                usage_records.c.server_id == server_id, usage_records.c.ended_at.is_(None)))}


def event_log(store: Store, server_id: str) -> list[tuple[str, str]]:
    with store._tx.read() as conn:
        return [(e.action, e.outcome) for e in list_events(conn, server_id)]


# --- resize -----------------------------------------------------------------------------------

def test_resize_on_the_same_host_claims_beside_the_old_devices_and_confirm_frees_them(
        store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    assert s.host == "node1"
    old = set(owned(cloud, s.id))
    got = cloud.resize_server(P1, "vm", flavor="g2")
    assert got.status is ServerStatus.RESIZE and got.host == "node1"
    held = owned(cloud, s.id)
    assert len(held) == 3 and old < set(held)     # the old one plus two new, same host
    (move,) = move_rows(store, s.id)
    assert move.status == "claimed" and move.source_host_id == move.dest_host_id
    with store._tx.read() as conn:
        marks = dict(conn.execute(select(devices.c.address, devices.c.move_id)
                                  .where(devices.c.owner == s.id)).all())
    assert {a for a, m in marks.items() if m is None} == {a for _h, a in old}
    assert {m for m in marks.values() if m is not None} == {move.id}
    check_invariants(store)
    ran = play(cloud)
    assert [k for _h, k, _s in ran] == ["migrate_out", "spawn"]
    s2 = cloud.get_server(P1, "vm")
    assert (s2.status, s2.flavor, s2.host) == (ServerStatus.VERIFY_RESIZE, "g2", "node1")
    assert len(owned(cloud, s.id)) == 3     # both sides until confirmed
    assert len(open_usage(store, s.id)) == 3
    confirmed = cloud.confirm_resize(P1, "vm")
    assert confirmed.status is ServerStatus.ACTIVE
    ran = play(cloud)
    assert [k for _h, k, _s in ran] == ["destroy"]
    held = owned(cloud, s.id)
    assert set(held).isdisjoint(old) and len(held) == 2
    assert set(held.values()) == {DeviceState.ALLOCATED}
    assert open_usage(store, s.id) == set(held)
    assert move_rows(store, s.id)[0].status == "done"
    log = event_log(store, s.id)
    assert log.index(("resize", "started")) < log.index(("resize", "done")) \
        < log.index(("confirm", "started")) < log.index(("confirm", "done"))


def test_resize_goes_to_another_host_when_its_own_is_too_small_and_revert_comes_back(
        store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    (old,) = owned(cloud, s.id)
    got = cloud.resize_server(P1, "vm", flavor="g3")
    assert got.status is ServerStatus.RESIZE and got.host == "node1"   # until it moves
    assert {h for h, _a in owned(cloud, s.id)} == {"node1", "node2"}
    play(cloud)
    moved = cloud.get_server(P1, "vm")
    assert (moved.status, moved.host, moved.flavor) == (ServerStatus.VERIFY_RESIZE, "node2",
                                                        "g3")
    new = set(owned(cloud, s.id)) - {old}
    assert len(new) == 3 and {h for h, _a in new} == {"node2"}
    reverting = cloud.revert_resize(P1, "vm")
    assert reverting.status is ServerStatus.RESIZE
    ran = play(cloud)
    assert [(h, k) for h, k, _s in ran] == [("node2", "destroy"), ("node1", "restart")]
    back = cloud.get_server(P1, "vm")
    assert (back.status, back.host, back.flavor) == (ServerStatus.ACTIVE, "node1", "g1")
    assert back.fault is None
    assert owned(cloud, s.id) == {old: DeviceState.ALLOCATED}
    assert open_usage(store, s.id) == {old}
    with store._tx.read() as conn:
        ended = {(r.host, r.address) for r in conn.execute(select(usage_records).where(
            usage_records.c.server_id == s.id, usage_records.c.ended_at.is_not(None)))}
    assert ended == new      # the destination's devices were metered, then ended
    assert move_rows(store, s.id)[0].status == "reverted"
    assert ("revert", "done") in event_log(store, s.id)


def test_resize_same_host_off_sends_even_a_fitting_resize_elsewhere(store: Store) -> None:
    c = Cloud(store, settings(resize_same_host=False))
    report(store, "node1", gpus(0, 0, 1))
    report(store, "node2", gpus(0, 0, 1, 1))
    catalog(c, {"g1": {"pci_passthrough:alias": "gpu:1"},
                "g2": {"pci_passthrough:alias": "gpu:2"}})
    s = active(c)
    assert s.host == "node1"
    c.resize_server(P1, "vm", flavor="g2")
    play(c)
    assert c.get_server(P1, "vm").host == "node2"


def test_a_resize_that_fits_nowhere_is_refused_and_changes_nothing(
        store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    before = owned(cloud, s.id)
    with pytest.raises(Conflict) as err:
        cloud.resize_server(P1, "vm", flavor="g5")
    assert err.value.code == "no_valid_host"
    assert "5 x gpu" in err.value.message or "gpu" in err.value.message
    assert cloud.get_server(P1, "vm").status is ServerStatus.ACTIVE
    assert owned(cloud, s.id) == before
    assert move_rows(store, s.id) == []
    assert event_log(store, s.id)[-1] == ("resize", "failed")
    with pytest.raises(InvalidInput):
        cloud.resize_server(P1, "vm", flavor="g1")      # its own flavor
    check_invariants(store)


def test_resize_quota_counts_the_new_flavor_against_what_the_project_holds_besides(
        store: Store, cloud: Cloud) -> None:
    cloud.set_quota(ADMIN, project="p1", alias="gpu", limit=2)
    s = active(cloud)
    with pytest.raises(QuotaExceeded):
        cloud.resize_server(P1, "vm", flavor="g3")      # 3 > 2, the old one not counted
    got = cloud.resize_server(P1, "vm", flavor="g2")    # 2 <= 2: the old one is credited
    assert got.status is ServerStatus.RESIZE
    play(cloud)
    cloud.confirm_resize(P1, "vm")
    play(cloud)
    assert len(owned(cloud, s.id)) == 2


def test_members_resize_their_own_servers_only_and_may_not_migrate(
        store: Store, cloud: Cloud) -> None:
    active(cloud)
    with pytest.raises(NotFound):
        cloud.resize_server(P2, "vm", flavor="g2")
    with pytest.raises(Forbidden):
        cloud.migrate_server(P1, "vm")
    cloud.resize_server(P1, "vm", flavor="g2")
    play(cloud)
    with pytest.raises(NotFound):
        cloud.confirm_resize(P2, "vm")
    with pytest.raises(NotFound):
        cloud.revert_resize(P2, "vm")
    with pytest.raises(NotFound):
        cloud.server_moves(P2, "vm")
    (m,) = cloud.server_moves(P1, "vm")
    assert (m.kind.value, m.status, m.old_flavor, m.new_flavor) == (
        "resize", MoveStatus.VERIFY, "g1", "g2")
    assert cloud.confirm_resize(P1, "vm").status is ServerStatus.ACTIVE


# --- cold migration ---------------------------------------------------------------------------

def test_migrate_to_a_named_host_then_confirm(store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    (old,) = owned(cloud, s.id)
    with pytest.raises(Conflict) as err:
        cloud.migrate_server(ADMIN, "vm", host="node1")
    assert err.value.code == "same_host"
    with pytest.raises(NotFound):
        cloud.migrate_server(ADMIN, "vm", host="nowhere")
    got = cloud.migrate_server(ADMIN, "vm", host="node2")
    assert got.status is ServerStatus.MIGRATING
    play(cloud)
    there = cloud.get_server(ADMIN, "vm")
    assert (there.status, there.host, there.flavor) == (ServerStatus.VERIFY_RESIZE, "node2",
                                                        "g1")
    cloud.confirm_resize(ADMIN, "vm")
    play(cloud)
    held = owned(cloud, s.id)
    assert [h for h, _a in held] == ["node2"] and old not in held
    assert cloud.store.get_device("node1", PciAddress.parse(old[1])).state is DeviceState.AVAILABLE


def test_migrate_without_a_host_picks_another_and_auto_confirm_finishes_it(
        store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    got = cloud.migrate_server(ADMIN, "vm", auto_confirm=True)
    assert got.status is ServerStatus.MIGRATING
    ran = play(cloud)
    assert [(h, k) for h, k, _s in ran] == [("node1", "migrate_out"), ("node2", "spawn"),
                                          ("node1", "destroy")]
    there = cloud.get_server(ADMIN, "vm")
    assert (there.status, there.host) == (ServerStatus.ACTIVE, "node2")
    assert {h for h, _a in owned(cloud, s.id)} == {"node2"}
    assert move_rows(store, s.id)[0].status == "done"
    assert ("confirm", "started") in event_log(store, s.id)


def test_a_migration_with_no_other_host_that_fits_is_refused(store: Store, cloud: Cloud
                                                            ) -> None:
    s = active(cloud, "g3")           # only node1 (3) or node2 (4): pack takes node1
    assert s.host == "node1"
    other = active(cloud, "g2", name="other")   # node2 keeps 2 free: 3 do not fit
    assert other.host == "node2"
    with pytest.raises(Conflict) as err:
        cloud.migrate_server(ADMIN, "vm")
    assert err.value.code == "no_valid_host"
    assert cloud.get_server(ADMIN, "vm").status is ServerStatus.ACTIVE


# --- failures ---------------------------------------------------------------------------------

def test_a_destination_spawn_that_fails_leaves_the_server_active_on_its_source(
        store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    before = owned(cloud, s.id)
    cloud.migrate_server(ADMIN, "vm")
    ran = play(cloud, fail=("node2", "spawn"), message="no room on the bus")
    assert [(h, k) for h, k, _s in ran] == [("node1", "migrate_out"), ("node2", "spawn"),
                                          ("node1", "restart")]
    back = cloud.get_server(ADMIN, "vm")
    assert (back.status, back.host) == (ServerStatus.ACTIVE, "node1")
    assert back.fault is not None and "no room on the bus" in back.fault
    assert owned(cloud, s.id) == before
    assert move_rows(store, s.id)[0].status == "failed"
    assert ("migrate", "failed") in event_log(store, s.id)
    assert cloud.store.list_devices(DeviceFilter(host="node2", state=DeviceState.AVAILABLE),
                                    limit=100).items.__len__() == 4


def test_a_source_that_cannot_stop_the_server_keeps_it(store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    before = owned(cloud, s.id)
    cloud.resize_server(P1, "vm", flavor="g3")
    ran = play(cloud, fail=("node1", "migrate_out"))
    assert [k for _h, k, _s in ran] == ["migrate_out", "restart"]
    assert cloud.get_server(P1, "vm").status is ServerStatus.ACTIVE
    assert owned(cloud, s.id) == before
    assert move_rows(store, s.id)[0].status == "failed"


def test_a_restart_that_fails_leaves_the_server_in_error_holding_nothing(
        store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    cloud.resize_server(P1, "vm", flavor="g3")
    play(cloud)
    cloud.revert_resize(P1, "vm")
    play(cloud, fail=("node1", "restart"), message="domain lost")
    got = cloud.get_server(P1, "vm")
    assert (got.status, got.fault, got.host) == (ServerStatus.ERROR, "domain lost", "node1")
    assert owned(cloud, s.id) == {}
    assert open_usage(store, s.id) == set()
    assert move_rows(store, s.id)[0].status == "failed"
    cloud.delete_server(P1, "vm")
    ran = play(cloud)
    assert [(h, k) for h, k, _s in ran] == [("node1", "destroy")]
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.DELETED


def test_nothing_else_happens_to_a_moving_server(store: Store, cloud: Cloud) -> None:
    active(cloud)
    cloud.resize_server(P1, "vm", flavor="g2")
    for call in (lambda: cloud.attach_device(P1, "vm", alias="gpu"),
                 lambda: cloud.resize_server(P1, "vm", flavor="g3"),
                 lambda: cloud.migrate_server(ADMIN, "vm")):
        with pytest.raises(Conflict) as err:
            call()
        assert err.value.code in ("server_moving", "server_not_active")
    with pytest.raises(Conflict) as err:
        cloud.confirm_resize(P1, "vm")
    assert err.value.code == "not_verifying"


# --- deleting a server mid-move ------------------------------------------------------------

def verifying_on_node2(cloud: Cloud) -> ServerRecord:
    """A server of node1's migrated to node2, waiting there in VERIFY_RESIZE."""
    s = active(cloud)
    cloud.migrate_server(ADMIN, "vm", host="node2")
    play(cloud)
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.VERIFY_RESIZE
    return s


def test_deleting_in_verify_resize_destroys_on_both_hosts_and_frees_both_sides(
        store: Store, cloud: Cloud) -> None:
    s = verifying_on_node2(cloud)
    both = owned(cloud, s.id)
    assert {h for h, _a in both} == {"node1", "node2"}
    gone = cloud.delete_server(P1, "vm")
    assert gone.status is ServerStatus.DELETING
    (mv,) = move_rows(store, s.id)
    assert (mv.status, mv.message) == ("deleting", "the server was deleted during the move")
    check_invariants(store)
    # Each host gets one destroy, listing what it holds of the server.
    polled = {h: cloud.tasks.poll(agent(h), h) for h in ("node1", "node2")}
    for h, (t,) in polled.items():
        assert t.kind == "destroy"
        p = parse_destroy(t.payload)
        assert (p.move, p.keep_domain, p.keep_disk) == (mv.id, False, False)
        assert {str(d.address) for d in p.devices} == {a for hh, a in both if hh == h}
    # node2 confirms first: its part is freed, the server still DELETING for node1's.
    (t2,) = polled["node2"]
    cloud.tasks.start(agent("node2"), t2.id)
    assert cloud.tasks.result(agent("node2"), t2.id, ok=True, message=None, domain_xml=None)
    assert {h for h, _a in owned(cloud, s.id)} == {"node1"}
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.DELETING
    check_invariants(store)
    play(cloud)
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.DELETED
    assert owned(cloud, s.id) == {}
    assert open_usage(store, s.id) == set()
    assert move_rows(store, s.id)[0].status == "failed"
    actions = [(e.action, e.outcome) for e in cloud.server_events(ADMIN, s.id)]
    assert actions[-7:] == [("delete", "started"), ("migrate", "failed"),
                            ("destroy", "started"), ("destroy", "done"),     # node2
                            ("destroy", "started"), ("destroy", "done"),     # node1
                            ("delete", "done")]


def test_deleting_before_the_source_let_go_cancels_the_step(store: Store,
                                                            cloud: Cloud) -> None:
    s = active(cloud)
    cloud.resize_server(P1, "vm", flavor="g3")      # node1 has 3: the same host, or node2
    with store._tx.read() as conn:
        (queued,) = conn.execute(select(tasks.c.id, tasks.c.kind).where(
            tasks.c.server_id == s.id, tasks.c.state == "queued")).all()
    assert queued.kind == "migrate_out"
    cloud.delete_server(P1, "vm")
    with store._tx.read() as conn:
        state = conn.execute(select(tasks.c.state, tasks.c.message)
                             .where(tasks.c.id == queued.id)).one()
    assert tuple(state) == ("failed", "the server was deleted during the move")
    ran = play(cloud)
    assert {k for _h, k, _s in ran} == {"destroy"}
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.DELETED
    assert owned(cloud, s.id) == {}
    assert all(d.owner is None for d in store.list_devices(DeviceFilter(), limit=100).items)


def test_deleting_while_a_host_runs_a_step_is_a_409_until_it_ends(
        store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    cloud.migrate_server(ADMIN, "vm", host="node2")
    (t,) = cloud.tasks.poll(agent("node1"), "node1")
    cloud.tasks.start(agent("node1"), t.id)          # migrate_out running
    with pytest.raises(Conflict) as err:
        cloud.delete_server(P1, "vm")
    assert err.value.code == "move_busy" and "migrate_out" in err.value.message
    assert move_rows(store, s.id)[0].status == "claimed"    # nothing changed
    assert cloud.tasks.result(agent("node1"), t.id, ok=True, message=None, domain_xml=None)
    assert cloud.delete_server(P1, "vm").status is ServerStatus.DELETING
    play(cloud)
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.DELETED
    assert owned(cloud, s.id) == {}


def test_a_host_that_fails_its_part_keeps_it_until_the_delete_is_asked_again(
        store: Store, cloud: Cloud) -> None:
    s = verifying_on_node2(cloud)
    cloud.delete_server(P1, "vm")
    play(cloud, fail=("node1", "destroy"), message="virsh: domain busy")
    got = cloud.get_server(ADMIN, s.id)
    assert (got.status, got.fault) == (ServerStatus.DELETING, "virsh: domain busy")
    assert {h for h, _a in owned(cloud, s.id)} == {"node1"}
    with pytest.raises(Conflict) as err:
        cloud.revert_resize(P1, "vm")
    assert err.value.code == "not_verifying"
    cloud.delete_server(P1, "vm")                    # asked again: node1 only
    ran = play(cloud)
    assert [(h, k) for h, k, _s in ran] == [("node1", "destroy")]
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.DELETED
    assert owned(cloud, s.id) == {}


def test_a_forced_delete_mid_move_is_deleted_at_once_and_frees_on_confirmation(
        store: Store, cloud: Cloud) -> None:
    s = verifying_on_node2(cloud)
    gone = cloud.delete_server(ADMIN, "vm", force=True)
    assert gone.status is ServerStatus.DELETED
    assert open_usage(store, s.id) == set()
    assert len(owned(cloud, s.id)) == 2              # kept until the hosts confirm
    play(cloud)
    assert owned(cloud, s.id) == {}
    assert move_rows(store, s.id)[0].status == "failed"


def test_revert_before_the_source_started_cancels_the_move(store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    before = owned(cloud, s.id)
    cloud.resize_server(P1, "vm", flavor="g3")
    back = cloud.revert_resize(P1, "vm")
    assert back.status is ServerStatus.ACTIVE
    assert owned(cloud, s.id) == before
    assert play(cloud) == []          # the migrate_out was cancelled
    assert move_rows(store, s.id)[0].status == "reverted"


def test_an_agent_that_dies_mid_move_leaves_every_device_owned_once(
        store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    cloud.migrate_server(ADMIN, "vm")
    (t,) = cloud.tasks.poll(agent("node1"), "node1")
    cloud.tasks.start(agent("node1"), t.id)          # ...and the agent dies
    check_invariants(store)
    with pytest.raises(Conflict) as err:
        cloud.revert_resize(ADMIN, "vm")
    assert err.value.code == "move_busy"
    # The agent comes back and finishes; the destination's agent dies in its spawn.
    assert cloud.tasks.result(agent("node1"), t.id, ok=True, message=None, domain_xml=None)
    (spawn,) = cloud.tasks.poll(agent("node2"), "node2")
    cloud.tasks.start(agent("node2"), spawn.id)
    check_invariants(store)
    assert len(owned(cloud, s.id)) == 2               # one on each side, each owned once
    # An expired destination spawn sends the server back.
    with store._tx.write() as conn:
        conn.execute(tasks.update().where(tasks.c.id == int(spawn.id))
                     .values(deadline=T0))
    assert cloud.tasks.expire() == 1
    play(cloud)
    back = cloud.get_server(ADMIN, "vm")
    assert (back.status, back.host) == (ServerStatus.ACTIVE, "node1")
    assert back.fault is not None and "timed out" in back.fault
    assert not cloud.tasks.result(agent("node2"), spawn.id, ok=True, message=None,
                                  domain_xml=None)
    assert {h for h, _a in owned(cloud, s.id)} == {"node1"}


# --- ports ------------------------------------------------------------------------------------

def sriov() -> Any:
    return inventory(replace(pf("0000:3b:00.0", group=1, vfs=2), netdevs=(NetDev("ens1f0"),)),
                     *(replace(vf(f"0000:3b:02.{i}", "0000:3b:00.0", group=2 + i),
                               vf_index=i, netdevs=(NetDev(f"ens1f0v{i}"),))
                       for i in range(2)))


def with_a_port(store: Store) -> tuple[Cloud, ServerRecord]:
    """Two SR-IOV hosts and an ACTIVE server "vm" with a direct port on VLAN 100."""
    c = Cloud(store, settings())
    report(store, "net1", sriov())
    report(store, "net2", sriov())
    catalog(c, {"plain": {}})
    c.create_network(ADMIN, name="n1", physical_network="physnet1", segmentation="vlan",
                     segmentation_id=100)
    c.create_server(P1, name="vm", flavor="plain", image="img",
                    nics=[{"net_id": "n1", "vnic_type": "direct"}])
    play(c)
    return c, c.get_server(P1, "vm")


def test_a_cold_migration_moves_the_ports_binding_and_a_revert_brings_it_back(
        store: Store) -> None:
    c, s = with_a_port(store)
    (port,) = s.ports
    assert port.binding is not None and port.binding.host == s.host
    source = s.host
    c.migrate_server(ADMIN, "vm")
    with store._tx.read() as conn:
        (out,) = conn.execute(select(tasks.c.payload).where(tasks.c.kind == "migrate_out")
                              ).scalars()
    got = parse_destroy(out)
    assert got.move is not None and [i.port for i in got.interfaces] == [port.id]
    assert got.interfaces[0].address is not None
    ran = play(c)
    spawn = [k for h, k, _s in ran if k == "spawn" and h != source]
    assert spawn == ["spawn"]
    there = c.get_server(P1, "vm")
    (moved,) = there.ports
    assert moved.binding is not None and moved.binding.host == there.host != source
    c.revert_resize(ADMIN, "vm")
    play(c)
    back = c.get_server(P1, "vm")
    (again,) = back.ports
    assert back.host == source and again.binding == port.binding
    assert again.status == "ACTIVE"


@pytest.mark.parametrize("when", ["claimed", "verify"])
def test_a_delete_mid_migration_gives_back_only_the_ports_a_host_still_holds(
        store: Store, when: str) -> None:
    c, s = with_a_port(store)
    source = s.host
    c.migrate_server(ADMIN, "vm")
    if when == "verify":
        play(c)     # the source let its port go (migrate_out); the destination holds it
    assert c.delete_server(P1, "vm").status is ServerStatus.DELETING
    with store._tx.read() as conn:
        parts = {h: parse_destroy(p) for h, p in conn.execute(
            select(hosts.c.name, tasks.c.payload).join(hosts, hosts.c.id == tasks.c.host_id)
            .where(tasks.c.kind == "destroy", tasks.c.state == "queued"))}
    dest = next(h for h in ("net1", "net2") if h != source)
    assert set(parts) == {source, dest}
    assert all(len(p.devices) == 1 for p in parts.values())     # each host's VF
    holder = source if when == "claimed" else dest
    assert {h: [i.port for i in p.interfaces] for h, p in parts.items()} == {
        holder: [s.ports[0].id], ({source, dest} - {holder}).pop(): []}
    play(c)
    assert c.get_server(ADMIN, s.id).status is ServerStatus.DELETED
    assert all(p.id != s.ports[0].id for p in c.list_ports(ADMIN))   # made for it: gone
    assert owned(c, s.id) == {}


def test_a_move_spawn_payload_parses_and_keeps_the_disk_on_the_same_host(
        store: Store, cloud: Cloud) -> None:
    active(cloud)
    cloud.resize_server(P1, "vm", flavor="g2")
    play(cloud, only="node1")           # the migrate_out only... and the spawn, same host
    with store._tx.read() as conn:
        payloads = {r.kind: r.payload for r in conn.execute(select(tasks.c.kind,
                                                                   tasks.c.payload))
                    if r.payload.get("move") is not None}
    assert set(payloads) == {"migrate_out", "spawn"}
    spawn = parse_spawn(payloads["spawn"])
    assert len(spawn.devices) == 2 and payloads["spawn"]["keep_disk"] is True
    cloud.revert_resize(P1, "vm")
    with store._tx.read() as conn:
        (destroy,) = [r.payload for r in conn.execute(select(tasks.c.payload).where(
            tasks.c.kind == "destroy"))]
    got = parse_destroy(destroy)
    assert got.keep_disk and not got.keep_domain and len(got.devices) == 2


def test_a_bare_metal_server_cannot_move_nor_a_server_resize_onto_bare_metal(
        store: Store, cloud: Cloud) -> None:
    report(store, "metal", inventory(gpu("0000:3b:00.0", group=10),
                                     host=replace(HOST, kind=HostKind.BAREMETAL)))
    cloud.create_flavor(ADMIN, name="metal", vcpus=2, ram_mb=2048, disk_gb=1,
                        extra_specs={"pci_passthrough:alias": "gpu:1",
                                     "pcipass:baremetal": "true"})
    m = cloud.create_server(P1, name="bm", flavor="metal", image="img")
    assert m.host == "metal"
    play(cloud)
    for call in (lambda: cloud.resize_server(P1, "bm", flavor="g1"),
                 lambda: cloud.migrate_server(ADMIN, "bm")):
        with pytest.raises(Conflict) as err:
            call()
        assert err.value.code == "baremetal_server"
    active(cloud)
    with pytest.raises(Conflict) as err:
        cloud.resize_server(P1, "vm", flavor="metal")
    assert err.value.code == "baremetal_server"
    with pytest.raises(Conflict) as err:
        cloud.migrate_server(ADMIN, "vm", host="metal")   # never onto a bare-metal host
    assert err.value.code == "no_valid_host"


def test_closed_move_ids_names_the_moves_that_are_over(store: Store, cloud: Cloud) -> None:
    s = verifying_on_node2(cloud)
    (mv,) = move_rows(store, s.id)
    assert store.closed_move_ids([int(mv.id), 999]) == {999}      # open; never existed
    cloud.confirm_resize(P1, "vm")
    play(cloud)
    assert store.closed_move_ids([int(mv.id)]) == {int(mv.id)}
    assert store.closed_move_ids([]) == set()
