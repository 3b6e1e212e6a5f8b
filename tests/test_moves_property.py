"""Property: random sequences of boot, resize, confirm, revert, migrate, attach, detach and
delete on a small fleet (SQLite), the hosts' agents played by a driver loop that runs every
queued task after each step (or, at random, not: a step may land on a server mid-move, and
an agent's task may fail).

After every step device ownership is consistent with the servers' records
(:func:`fleet.check_invariants`: each device owned once, by a live server, on the side of
its move the server's row or its move says; every live server holds exactly what each side
asked for; hosts' counters are the recount), and no device is owned by a DELETED server.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fleet import ADMIN, HOST, T0, catalog, check_invariants, cloud_of, gpu, inventory
from pcipass.errors import InfrastructureError, PcipassError
from pcipass.records import DeviceFilter, MoveStatus, Principal, Role, ServerStatus
from pcipass.services import Cloud
from pcipass.store import Store

FLAVORS = {
    "g1": {"pci_passthrough:alias": "gpu:1"},
    "g2": {"pci_passthrough:alias": "gpu:2"},
    "g3": {"pci_passthrough:alias": "gpu:3"},
    "plain": {},
}
HOSTS = ("host0", "host1", "host2")
TASK_KINDS = ("spawn", "destroy", "migrate_out", "restart", "attach", "detach")

server_index = st.integers(0, 7)
operations = st.lists(st.tuples(
    st.one_of(
        st.tuples(st.just("boot"), st.sampled_from(sorted(FLAVORS))),
        st.tuples(st.just("resize"), server_index, st.sampled_from(sorted(FLAVORS))),
        st.tuples(st.just("confirm"), server_index),
        st.tuples(st.just("revert"), server_index),
        st.tuples(st.just("migrate"), server_index, st.sampled_from((None, *HOSTS)),
                  st.booleans()),
        st.tuples(st.just("attach"), server_index),
        st.tuples(st.just("detach"), server_index),
        st.tuples(st.just("delete"), server_index),
    ),
    # After the step: run every agent ("run"), none ("stall"), or all with one task failing.
    st.sampled_from(("run", "run", "run", "stall", *(f"fail:{k}" for k in TASK_KINDS))),
), min_size=1, max_size=14)


def agent(host: str) -> Principal:
    return Principal(f"agent-{host}", Role.AGENT, host=host)


def drive(cloud: Cloud, fail: str | None) -> None:
    """Run every host's queued and running tasks until none is left; the first task of kind
    ``fail`` reports a failure."""
    for _ in range(30):
        progressed = False
        for host in HOSTS:
            for t in cloud.tasks.poll(agent(host), host):
                cloud.tasks.start(agent(host), t.id)
                failing = t.kind == fail
                if failing:
                    fail = None
                cloud.tasks.result(agent(host), t.id, ok=not failing,
                                   message="injected" if failing else None,
                                   domain_xml=None if failing else "<domain/>")
                progressed = True
        check_invariants(cloud.store)
        if not progressed:
            return
    raise AssertionError("the agents never ran out of work")


def step(cloud: Cloud, servers: list[str], op: tuple[Any, ...]) -> None:
    """One operation; a refusal (an error with a 4xx code) is a fine outcome."""
    kind = op[0]
    if kind == "boot":
        s = cloud.create_server(ADMIN, name="vm", flavor=op[1], image="img")
        servers.append(s.id)
        return
    if not servers:
        return
    sid = servers[op[1] % len(servers)]
    if kind == "resize":
        cloud.resize_server(ADMIN, sid, flavor=op[2])
    elif kind == "confirm":
        cloud.confirm_resize(ADMIN, sid)
    elif kind == "revert":
        cloud.revert_resize(ADMIN, sid)
    elif kind == "migrate":
        cloud.migrate_server(ADMIN, sid, host=op[2], auto_confirm=op[3])
    elif kind == "attach":
        cloud.attach_device(ADMIN, sid, alias="gpu")
    elif kind == "detach":
        held = [d for d in cloud.get_server(ADMIN, sid).devices if d.alias is not None]
        if held:
            cloud.detach_device(ADMIN, sid, address=str(held[-1].address))
    elif kind == "delete":
        cloud.delete_server(ADMIN, sid)


def no_device_of_the_deleted(cloud: Cloud, servers: list[str]) -> None:
    gone = {sid for sid in servers
            if cloud.get_server(ADMIN, sid).status is ServerStatus.DELETED}
    owners = {d.owner for d in cloud.store.list_devices(DeviceFilter(), limit=1000).items}
    assert not gone & owners


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty migrated database, copied for every example (migrating each time is slow)."""
    path = tmp_path_factory.mktemp("template") / "empty.db"
    Store.open(f"sqlite:///{path}").close()
    return path


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 4), min_size=3, max_size=3), ops=operations)
def test_device_ownership_follows_the_servers_through_any_sequence_of_moves(
        template: Path, tmp_path: Path, sizes: list[int], ops: list[tuple[Any, str]]) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.db"
    shutil.copy(template, path)
    store = Store.open(f"sqlite:///{path}", migrate=False)
    try:
        for name, n in zip(HOSTS, sizes, strict=True):
            store.report_inventory(name, None, inventory(*(
                gpu(f"0000:{0x10 + i:02x}:00.0", group=100 + i, numa=i % 2)
                for i in range(n)), host=HOST), now=T0)
        cloud = cloud_of(store)
        catalog(cloud, FLAVORS, vcpus=4, ram_mb=4096)
        servers: list[str] = []
        for op, then in ops:
            try:
                step(cloud, servers, op)
                event(f"{op[0]}: ok")
            except InfrastructureError:
                raise
            except PcipassError as exc:
                assert 400 <= exc.status < 500, exc
                event(f"{op[0]}: {exc.code}")
            check_invariants(store)
            if then != "stall":
                drive(cloud, then.removeprefix("fail:") if then.startswith("fail:") else None)
            no_device_of_the_deleted(cloud, servers)
        # Whatever state the steps left, the agents finish it and it stays consistent; every
        # server can then be deleted and every device comes back.
        drive(cloud, None)
        for sid in servers:
            moving = [m for m in cloud.server_moves(ADMIN, sid) if m.status.open]
            if moving and moving[0].status is MoveStatus.REVERTING:
                cloud.revert_resize(ADMIN, sid)     # a failed step: asked again
            elif moving and moving[0].status is MoveStatus.DELETING:
                cloud.delete_server(ADMIN, sid)     # a host's destroy failed: asked again
            elif moving:
                cloud.confirm_resize(ADMIN, sid)
        drive(cloud, None)
        for sid in servers:
            cloud.delete_server(ADMIN, sid)
        drive(cloud, None)
        assert {d.owner for d in store.list_devices(DeviceFilter(), limit=1000).items} <= {None}
        assert all(not m.status.open for sid in servers for m in cloud.server_moves(ADMIN, sid))
    finally:
        store.close()
