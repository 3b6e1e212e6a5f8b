"""The task queue (pcipass.store.tasks through pcipass.services.tasks) on SQLite and
PostgreSQL: every transition, late results, expiry, forced deletes, racing pollers."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from sqlalchemy import select

from fleet import (
    ADMIN,
    Clock,
    a,
    audio,
    catalog,
    gpu,
    inventory,
    member,
    report,
    settings,
    two_gpus,
)
from pcipass.config import TaskSettings
from pcipass.errors import Forbidden, NotFound, TaskNotRunnable
from pcipass.records import DeviceState, Principal, Role, ServerRecord, ServerStatus
from pcipass.services import Cloud
from pcipass.store import Store
from pcipass.store.schema import devices, servers, tasks, usage_records
from pcipass.virt.payload import parse_destroy, parse_spawn

AGENT = Principal("agent-token", Role.AGENT, host="node1")
XML = "<domain type='kvm'><name>x</name></domain>"


def make_cloud(store: Store, timeout: float = 300.0) -> Cloud:
    return Cloud(store, replace(settings(), tasks=TaskSettings(timeout=timeout)))


@pytest.fixture
def cloud(store: Store) -> Cloud:
    c = make_cloud(store)
    report(store, "node1", two_gpus())
    catalog(c, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    return c


def boot(cloud: Cloud, name: str = "vm") -> ServerRecord:
    s = cloud.create_server(member("p1"), name=name, flavor="g1", image="img")
    assert s.status is ServerStatus.BUILDING
    return s


def only_task(cloud: Cloud, kind: str) -> str:
    (t,) = [t for t in cloud.tasks.poll(AGENT, "node1") if t.kind == kind]
    return t.id


def state(store: Store, address: str) -> tuple[DeviceState, str | None]:
    rec = store.get_device("node1", a(address))
    return rec.state, rec.owner


def task_states(store: Store) -> list[tuple[str, str]]:
    with store._tx.read() as conn:
        return [(r.kind, r.state) for r in conn.execute(
            select(tasks.c.kind, tasks.c.state).order_by(tasks.c.id))]


def no_orphans(store: Store) -> None:
    """No device is claimed or allocated without a live server (or a deleted one whose
    destroy its host has not confirmed yet)."""
    with store._tx.read() as conn:
        status = {r.id: r.status for r in conn.execute(select(servers.c.id, servers.c.status))}
        waiting = {r.server_id for r in conn.execute(
            select(tasks.c.server_id).where(tasks.c.kind == "destroy",
                                            tasks.c.state.in_(("queued", "running"))))}
        for r in conn.execute(select(devices.c.address, devices.c.state, devices.c.owner)):
            if r.state in ("claimed", "allocated"):
                assert r.owner is not None, r.address
                assert status[r.owner] in ("BUILDING", "ACTIVE", "DELETING") or (
                    r.owner in waiting), (r.address, status[r.owner])


def open_usage(store: Store, server_id: str) -> int:
    with store._tx.read() as conn:
        return len(conn.execute(select(usage_records.c.id).where(
            usage_records.c.server_id == server_id,
            usage_records.c.ended_at.is_(None))).all())


# --- spawn --------------------------------------------------------------------------------

def test_spawn_payload_is_what_the_agent_parses(store: Store, cloud: Cloud) -> None:
    s = boot(cloud)
    (t,) = cloud.tasks.poll(AGENT, "node1")
    assert (t.kind, t.state, t.server_id) == ("spawn", "queued", s.id)
    assert t.deadline is not None and (t.deadline - t.created_at).total_seconds() == 300
    p = parse_spawn(t.payload)
    assert (str(p.server.id), p.server.name, p.server.project) == (s.id, "vm", "p1")
    assert (p.vcpus, p.ram_mb, p.image_source) == (2, 2048, "/images/img.qcow2")
    assert [(str(d.address), d.alias, d.managed) for d in p.devices] == [
        (str(s.devices[0].address), "gpu", True)]


def test_spawn_success_allocates_and_stores_the_xml(store: Store, cloud: Cloud) -> None:
    s = boot(cloud)
    tid = only_task(cloud, "spawn")
    started = cloud.tasks.start(AGENT, tid)
    assert started.state == "running"
    assert cloud.tasks.start(AGENT, tid).state == "running"  # a restarted agent resumes
    with pytest.raises(NotFound):
        cloud.tasks.domain_xml(ADMIN, s.id)
    assert cloud.tasks.result(AGENT, tid, ok=True, message=None, domain_xml=XML)
    got = cloud.get_server(ADMIN, s.id)
    assert got.status is ServerStatus.ACTIVE
    assert state(store, str(s.devices[0].address)) == (DeviceState.ALLOCATED, s.id)
    assert cloud.tasks.domain_xml(ADMIN, "vm") == XML
    assert open_usage(store, s.id) == 1
    assert task_states(store) == [("spawn", "done")]
    # Finished: neither a second start nor a second result does anything.
    with pytest.raises(TaskNotRunnable) as err:
        cloud.tasks.start(AGENT, tid)
    assert err.value.code == "task_not_runnable" and err.value.status == 409
    assert not cloud.tasks.result(AGENT, tid, ok=False, message="late", domain_xml=None)
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.ACTIVE
    assert cloud.tasks.poll(AGENT, "node1") == []
    no_orphans(store)


def test_spawn_failure_frees_the_claims_with_the_drivers_message(store: Store,
                                                                 cloud: Cloud) -> None:
    s = boot(cloud)
    tid = only_task(cloud, "spawn")
    cloud.tasks.start(AGENT, tid)
    assert cloud.tasks.result(AGENT, tid, ok=False, message="libvirt: no such file",
                              domain_xml=None)
    got = cloud.get_server(ADMIN, s.id)
    assert (got.status, got.fault, got.devices) == (ServerStatus.ERROR,
                                                    "libvirt: no such file", ())
    assert state(store, str(s.devices[0].address)) == (DeviceState.AVAILABLE, None)
    assert task_states(store) == [("spawn", "failed")]
    # Deleting a failed boot does not wait for the host.
    assert cloud.delete_server(member("p1"), s.id).status is ServerStatus.DELETED
    no_orphans(store)


def test_only_the_tasks_own_agent_may_touch_it(store: Store, cloud: Cloud) -> None:
    report(store, "node2", inventory())  # nothing to boot on: the boot lands on node1
    boot(cloud)
    tid = only_task(cloud, "spawn")
    other = Principal("t2", Role.AGENT, host="node2")
    with pytest.raises(Forbidden):
        cloud.tasks.poll(other, "node1")
    with pytest.raises(Forbidden):
        cloud.tasks.start(other, tid)
    with pytest.raises(Forbidden):
        cloud.tasks.result(other, tid, ok=True, message=None, domain_xml=None)
    with pytest.raises(Forbidden):
        cloud.tasks.poll(member("p1"), "node1")
    with pytest.raises(Forbidden):
        cloud.tasks.domain_xml(member("p1"), "vm")
    with pytest.raises(NotFound):
        cloud.tasks.start(AGENT, "999999")
    assert cloud.tasks.start(ADMIN, tid).state == "running"
    assert task_states(store) == [("spawn", "running")]


def test_poll_records_that_the_host_was_seen(store: Store, cloud: Cloud) -> None:
    from pcipass.store.schema import hosts

    cloud.tasks.poll(AGENT, "node1")
    with store._tx.read() as conn:
        seen = conn.execute(select(hosts.c.last_seen).where(hosts.c.name == "node1")).scalar()
    assert seen is not None
    with pytest.raises(NotFound):
        cloud.tasks.poll(ADMIN, "nowhere")


# --- expiry -------------------------------------------------------------------------------

def test_a_spawn_past_its_deadline_fails_and_a_late_result_is_ignored(
        clocked: tuple[Store, Clock]) -> None:
    store, clock = clocked
    cloud = make_cloud(store, timeout=1.5)
    report(store, "node1", two_gpus())
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    s = boot(cloud)
    tid = only_task(cloud, "spawn")
    cloud.tasks.start(AGENT, tid)
    clock.advance(1.4)
    assert cloud.tasks.expire() == 0
    clock.advance(0.2)
    assert cloud.tasks.expire() == 1
    assert cloud.tasks.expire() == 0  # idempotent
    got = cloud.get_server(ADMIN, s.id)
    assert got.status is ServerStatus.ERROR
    assert got.fault == "spawn task timed out after 1.5 s on host node1"
    assert state(store, str(s.devices[0].address)) == (DeviceState.AVAILABLE, None)
    assert task_states(store) == [("spawn", "expired")]
    assert not cloud.tasks.result(AGENT, tid, ok=True, message=None, domain_xml=XML)
    with pytest.raises(TaskNotRunnable):
        cloud.tasks.start(AGENT, tid)
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.ERROR
    assert open_usage(store, s.id) == 0
    no_orphans(store)


def test_a_destroy_never_expires(clocked: tuple[Store, Clock]) -> None:
    store, clock = clocked
    cloud = make_cloud(store, timeout=0.2)
    report(store, "node1", two_gpus())
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    s = boot(cloud)
    tid = only_task(cloud, "spawn")
    assert cloud.tasks.result(AGENT, tid, ok=True, message=None, domain_xml=XML)
    assert cloud.delete_server(ADMIN, s.id).status is ServerStatus.DELETING
    clock.advance(3600)
    assert cloud.tasks.expire() == 0
    assert [t.kind for t in cloud.tasks.poll(AGENT, "node1")] == ["destroy"]
    assert state(store, str(s.devices[0].address)) == (DeviceState.ALLOCATED, s.id)


# --- delete -------------------------------------------------------------------------------

def active(cloud: Cloud) -> ServerRecord:
    s = boot(cloud)
    tid = only_task(cloud, "spawn")
    cloud.tasks.start(AGENT, tid)
    assert cloud.tasks.result(AGENT, tid, ok=True, message=None, domain_xml=XML)
    return s


def test_delete_waits_for_the_host_then_frees(store: Store, cloud: Cloud) -> None:
    s = active(cloud)
    addr = str(s.devices[0].address)
    gone = cloud.delete_server(member("p1"), "vm")
    assert gone.status is ServerStatus.DELETING
    assert state(store, addr) == (DeviceState.ALLOCATED, s.id)
    # Deleting again queues no second destroy.
    cloud.delete_server(member("p1"), s.id)
    (t,) = cloud.tasks.poll(AGENT, "node1")
    p = parse_destroy(t.payload)
    assert (str(p.server.id), [str(d.address) for d in p.devices]) == (s.id, [addr])
    cloud.tasks.start(AGENT, t.id)
    assert cloud.tasks.result(AGENT, t.id, ok=True, message=None, domain_xml=None)
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.DELETED
    assert state(store, addr) == (DeviceState.AVAILABLE, None)
    assert open_usage(store, s.id) == 0
    assert task_states(store) == [("spawn", "done"), ("destroy", "done")]
    no_orphans(store)


def test_a_failed_destroy_keeps_the_server_deleting_with_the_fault(store: Store,
                                                                  cloud: Cloud) -> None:
    s = active(cloud)
    cloud.delete_server(ADMIN, s.id)
    tid = only_task(cloud, "destroy")
    assert cloud.tasks.result(AGENT, tid, ok=False, message="domain is busy", domain_xml=None)
    got = cloud.get_server(ADMIN, s.id)
    assert (got.status, got.fault) == (ServerStatus.DELETING, "domain is busy")
    assert state(store, str(s.devices[0].address)) == (DeviceState.ALLOCATED, s.id)
    # Deleting again is the retry.
    cloud.delete_server(ADMIN, s.id)
    tid2 = only_task(cloud, "destroy")
    assert tid2 != tid
    assert cloud.tasks.result(AGENT, tid2, ok=True, message=None, domain_xml=None)
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.DELETED
    no_orphans(store)


def test_force_delete_keeps_the_devices_until_the_host_confirms(store: Store,
                                                                cloud: Cloud) -> None:
    s = active(cloud)
    addr = str(s.devices[0].address)
    with pytest.raises(Forbidden):
        cloud.delete_server(member("p1"), s.id, force=True)
    gone = cloud.delete_server(ADMIN, s.id, force=True)
    assert gone.status is ServerStatus.DELETED
    assert open_usage(store, s.id) == 0
    assert state(store, addr) == (DeviceState.ALLOCATED, s.id)
    # The device is not handed to anyone else meanwhile.
    other = cloud.create_server(member("p1"), name="vm2", flavor="g1", image="img")
    assert str(other.devices[0].address) != addr
    third = cloud.create_server(member("p1"), name="vm3", flavor="g1", image="img")
    assert third.status is ServerStatus.ERROR
    no_orphans(store)
    tid = only_task(cloud, "destroy")
    assert cloud.tasks.result(AGENT, tid, ok=True, message=None, domain_xml=None)
    assert state(store, addr) == (DeviceState.AVAILABLE, None)
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.DELETED
    no_orphans(store)


def test_delete_of_a_boot_not_yet_started_cancels_its_spawn(store: Store,
                                                            cloud: Cloud) -> None:
    s = boot(cloud)
    assert cloud.delete_server(ADMIN, s.id).status is ServerStatus.DELETING
    assert [t.kind for t in cloud.tasks.poll(AGENT, "node1")] == ["destroy"]
    assert task_states(store) == [("spawn", "failed"), ("destroy", "queued")]
    tid = only_task(cloud, "destroy")
    assert cloud.tasks.result(AGENT, tid, ok=True, message=None, domain_xml=None)
    assert state(store, str(s.devices[0].address)) == (DeviceState.AVAILABLE, None)
    no_orphans(store)


def test_a_spawn_finishing_after_a_delete_leaves_it_to_the_destroy(store: Store,
                                                                   cloud: Cloud) -> None:
    s = boot(cloud)
    spawn = only_task(cloud, "spawn")
    cloud.tasks.start(AGENT, spawn)
    cloud.delete_server(ADMIN, s.id)
    assert cloud.tasks.result(AGENT, spawn, ok=True, message=None, domain_xml=XML)
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.DELETING
    destroy = only_task(cloud, "destroy")
    assert cloud.tasks.result(AGENT, destroy, ok=True, message=None, domain_xml=None)
    assert cloud.get_server(ADMIN, s.id).status is ServerStatus.DELETED
    assert open_usage(store, s.id) == 0
    no_orphans(store)


def test_a_server_that_never_reached_a_host_is_deleted_at_once(store: Store,
                                                               cloud: Cloud) -> None:
    cloud.create_flavor(ADMIN, name="huge", vcpus=2, ram_mb=2048, disk_gb=1,
                        extra_specs={"pci_passthrough:alias": "gpu:5"})
    s = cloud.create_server(member("p1"), name="big", flavor="huge", image="img")
    assert (s.status, s.host) == (ServerStatus.ERROR, None)
    assert cloud.delete_server(member("p1"), s.id).status is ServerStatus.DELETED
    assert task_states(store) == []


def test_unmanaged_devices_are_marked_in_the_payloads(store: Store) -> None:
    cloud = make_cloud(store)
    dev = replace(gpu("0000:3b:00.0", group=7), tags={"managed": "no"})
    report(store, "node1", inventory(dev, audio("0000:3b:00.1", group=7,
                                                members=["0000:3b:00.0"])))
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    s = boot(cloud)
    (t,) = cloud.tasks.poll(AGENT, "node1")
    got = {d["address"]: (d["managed"], d["unit"]) for d in t.payload["devices"]}
    assert got["0000:3b:00.0"][0] is False
    assert len({u for _m, u in got.values()}) == 1  # one IOMMU unit
    cloud.tasks.result(AGENT, t.id, ok=True, message=None, domain_xml=XML)
    cloud.delete_server(ADMIN, s.id)
    (d,) = [t for t in cloud.tasks.poll(AGENT, "node1") if t.kind == "destroy"]
    managed = {x["address"]: x["managed"] for x in d.payload["devices"]}
    assert managed["0000:3b:00.0"] is False


# --- races --------------------------------------------------------------------------------

def test_two_pollers_start_a_task_and_only_one_result_counts(store: Store,
                                                             cloud: Cloud) -> None:
    s = boot(cloud)
    seen: list[list[str]] = []
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def agent(ok: bool) -> None:
        barrier.wait(timeout=10)
        seen.append([t.id for t in cloud.tasks.poll(AGENT, "node1")])
        for tid in seen[-1]:
            try:
                cloud.tasks.start(AGENT, tid)
            except TaskNotRunnable:
                continue  # the other agent finished it first
            results.append(cloud.tasks.result(AGENT, tid, ok=ok, message="boom",
                                              domain_xml=XML if ok else None))

    threads = [threading.Thread(target=agent, args=(ok,)) for ok in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results.count(True) == 1
    status = cloud.get_server(ADMIN, s.id).status
    assert status in (ServerStatus.ACTIVE, ServerStatus.ERROR)
    assert task_states(store) == [("spawn", "done" if status is ServerStatus.ACTIVE
                                   else "failed")]
    no_orphans(store)
