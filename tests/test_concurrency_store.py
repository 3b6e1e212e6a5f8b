"""Many processes booting through Cloud against one database (SQLite file, PostgreSQL).

More demand than devices; afterwards every device has at most one owner, every live server
holds exactly what it asked for, counters equal a recount, quotas held, and every refused
server says why (and is refused by the pure scheduler over what is left, too: capacity only
shrinks during the run, so a boot refused then is refused now).
"""

from __future__ import annotations

import multiprocessing
import random
from collections import Counter
from typing import Any

from sqlalchemy import select

from fleet import (
    ADMIN,
    catalog,
    check_invariants,
    cloud_of,
    everything,
    gpu,
    inventory,
    member,
    pf,
    report,
    two_gpus,
    vf,
)
from pcipass.errors import QuotaExceeded
from pcipass.records import ServerStatus
from pcipass.sched import NoPlacement, schedule
from pcipass.sched.weigh import WeighPolicy
from pcipass.services.boot import Placer
from pcipass.store import Store
from pcipass.store.candidates import Candidate
from pcipass.store.claims import NewServer
from pcipass.store.schema import hosts

WORKERS = 8
BOOTS = 6
FLAVORS = {"g1": {"pci_passthrough:alias": "gpu:1"},
           "g2": {"pci_passthrough:alias": "gpu:2"},
           "any1": {"pci_passthrough:alias": "anygpu:1"},   # a set of two kinds
           "vf1": {"pci_passthrough:alias": "vf:1"},
           "pf1": {"pci_passthrough:alias": "pf:1"}}


def nic_host() -> Any:
    return inventory(pf("0000:af:00.0", group=20, assignable=True, vfs=3),
                     *(vf(f"0000:af:02.{i}", "0000:af:00.0", group=21 + i) for i in range(3)))


def booter(url: str, worker: int, barrier: Any, results: Any) -> None:
    store = Store.open(url, migrate=False)
    cloud = cloud_of(store, max_attempts=1000)
    rng = random.Random(worker)
    project = "quota" if worker % 2 else f"free{worker}"
    out: list[tuple[str, str, str, str | None]] = []
    try:
        barrier.wait(timeout=60)
        for i in range(BOOTS):
            flavor = rng.choice(sorted(FLAVORS))
            try:
                s = cloud.create_server(member(project), name=f"w{worker}-{i}",
                                        flavor=flavor, image="img")
                out.append((flavor, project, s.status.value, s.fault))
            except QuotaExceeded as exc:
                out.append((flavor, project, "QUOTA", exc.message))
    finally:
        store.close()
        results.put(out)


def test_eight_processes_booting_at_once_never_double_allocate(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        for i in range(3):
            report(store, f"gpu{i}", two_gpus())
        report(store, "a6000", inventory(gpu("0000:3b:00.0", group=10, product="2230"),
                                         gpu("0000:5e:00.0", group=11, product="2230")))
        for i in range(2):
            report(store, f"nic{i}", nic_host())
        cloud = cloud_of(store)
        cloud.create_aliases(ADMIN, [
            {"name": "anygpu", "vendor_id": "10de", "product_id": "20f1"},
            {"name": "anygpu", "vendor_id": "10de", "product_id": "2230"}])
        catalog(cloud, FLAVORS)
        cloud.set_quota(ADMIN, project="quota", alias="gpu", limit=3)
    finally:
        store.close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=booter, args=(db_url, w, barrier, results))
             for w in range(WORKERS)]
    for p in procs:
        p.start()
    outcomes = [o for _ in procs for o in results.get(timeout=240)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(outcomes) == WORKERS * BOOTS
    by_status = Counter(status for _f, _p, status, _m in outcomes)
    assert by_status["BUILDING"] > 0 and by_status["ERROR"] > 0, by_status
    store = Store.open(db_url, migrate=False)
    try:
        check_invariants(store)
        cloud = cloud_of(store)
        snapshot = everything(store)
        for flavor, _project, status, message in outcomes:
            assert message is None if status == "BUILDING" else bool(message)
            if status == "ERROR":
                assert message is not None and message.startswith("No host can satisfy")
                fl = cloud.get_flavor(ADMIN, flavor)
                req, _ = cloud._request(fl, cloud.get_image(ADMIN, "img"), None)
                assert isinstance(schedule(snapshot, req), NoPlacement), (flavor, message)
        (quota,) = cloud.list_quotas(ADMIN, project="quota")
        assert quota.used <= 3
        refused = [m for f, p, status, m in outcomes if status == "QUOTA"]
        assert all(m is not None and m.startswith("project quota may hold 3 'gpu' devices")
                   for m in refused)
    finally:
        store.close()


# --- two workers, one last device ------------------------------------------------------------

def racer(url: str, worker: int, barrier: Any, results: Any) -> None:
    """Boot once; both workers read their candidates before either claims."""
    from pcipass.store import Store as StoreClass

    real = StoreClass.candidates
    calls = {"n": 0}

    def candidates(self: Any, *args: Any, **kw: Any) -> Any:
        found = real(self, *args, **kw)
        calls["n"] += 1
        if calls["n"] == 1:
            results.put(("saw", worker, [c.name for c in found]))
            barrier.wait(timeout=60)
        return found

    StoreClass.candidates = candidates  # type: ignore[method-assign]
    store = StoreClass.open(url, migrate=False)
    try:
        server = cloud_of(store).create_server(ADMIN, name=f"r{worker}", flavor="g1",
                                               image="img")
        results.put(("got", worker, [server.status.value, server.host]))
    finally:
        store.close()


def test_the_worker_that_loses_the_last_device_retries_on_the_next_host(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        report(store, "last", inventory(gpu("0000:3b:00.0", group=10)))   # packs first
        report(store, "roomy", two_gpus())
        catalog(cloud_of(store), {"g1": {"pci_passthrough:alias": "gpu:1"}})
    finally:
        store.close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=racer, args=(db_url, w, barrier, results)) for w in (0, 1)]
    for p in procs:
        p.start()
    events = [results.get(timeout=120) for _ in range(4)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    saw = [names for kind, _w, names in events if kind == "saw"]
    assert saw == [["last", "roomy"], ["last", "roomy"]]  # both proposed the same host
    got = sorted(tuple(r) for kind, _w, r in events if kind == "got")
    assert got == [("BUILDING", "last"), ("BUILDING", "roomy")]
    store = Store.open(db_url, migrate=False)
    try:
        check_invariants(store)
    finally:
        store.close()


class Stale:
    """A store whose narrowing still offers its one host, as a read just before another
    worker's claim would."""

    def __init__(self, real: Store) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def candidates(self, *args: Any, **kw: Any) -> list[Candidate]:
        with self.real._tx.read() as conn:
            row = conn.execute(select(hosts.c.id, hosts.c.name)).one()
        return [Candidate(row.id, row.name)]


def test_a_boot_that_keeps_losing_races_gives_up_saying_so(store: Store) -> None:
    """With max_attempts 1, the loser of such a race fails, and its fault says why."""
    report(store, "last", inventory(gpu("0000:3b:00.0", group=10)))
    cloud = cloud_of(store)
    catalog(cloud, {"g1": {"pci_passthrough:alias": "gpu:1"}})
    assert cloud.create_server(ADMIN, name="w", flavor="g1", image="img").host == "last"
    fl = cloud.get_flavor(ADMIN, "g1")
    req, _ = cloud._request(fl, cloud.get_image(ADMIN, "img"), None)
    placer = Placer(Stale(store), WeighPolicy.PACK, 1, 8)  # type: ignore[arg-type]
    server = NewServer(id="00000000-0000-0000-0000-000000000001", name="loser",
                       project="p", flavor_id=fl.id, flavor_name=fl.name, image_id=None,
                       image_name="img", vcpus=fl.vcpus, ram_mb=fl.ram_mb,
                       requests=(("gpu", 1, False),))
    lost = placer.place(server, req)
    assert lost.status is ServerStatus.ERROR
    assert lost.fault == ("No host could be claimed for 1 x gpu: other boots took the "
                          "devices first on 1 host (last); gave up after 1 attempts")
    check_invariants(store)
