"""Claims on the store directly: the one transaction, its re-checks, freeing, derived state."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from fleet import (
    T0,
    a,
    audio,
    check_invariants,
    gpu,
    inventory,
    pf,
    profile_inventory,
    report,
    two_gpus,
    vf,
)
from pcipass.errors import ClaimConflict, Conflict, QuotaExceeded
from pcipass.pci.alias import parse_aliases
from pcipass.pci.request import PciRequest
from pcipass.records import DeviceFilter, DeviceState, ServerRecord, ServerStatus
from pcipass.sched import BootRequest, Fit, HostView, NoFit, fit
from pcipass.services.boot import needs as needs_of
from pcipass.store import Store
from pcipass.store import claims as store_claims
from pcipass.store.claims import NewServer
from pcipass.store.schema import hosts, pools

ALIASES = parse_aliases([{"name": "gpu", "vendor_id": "10de", "product_id": "20f1"},
                         {"name": "vf", "vendor_id": "8086", "device_type": "type-VF"}])


def request(alias: str, count: int, *, soft: bool = False) -> PciRequest:
    return PciRequest(alias, count, ALIASES[alias].entries, soft=soft)


def boot(*reqs: PciRequest, vcpus: int = 2, ram_mb: int = 1024) -> BootRequest:
    return BootRequest(vcpus, ram_mb, None, reqs)


def new_server(req: BootRequest, project: str = "p1") -> NewServer:
    return NewServer(id=str(uuid.uuid4()), name="vm", project=project, flavor_id=None,
                     flavor_name="f", image_id=None, image_name="i", vcpus=req.vcpus,
                     ram_mb=req.ram_mb,
                     requests=tuple((r.alias, r.count, r.soft) for r in req.pci))


def host_id(store: Store, name: str) -> int:
    with store._tx.read() as conn:
        found: int = conn.execute(select(hosts.c.id).where(hosts.c.name == name)).scalar_one()
    return found


def place(store: Store, host: str, req: BootRequest, **kw: Any) -> ServerRecord | Fit | NoFit:
    def decide(view: HostView) -> Fit | NoFit:
        return fit(view, req)
    return store.claim(new_server(req, **kw), host_id(store, host), decide)


def states(store: Store, host: str = "node1") -> dict[str, tuple[str, str | None]]:
    return {str(d.device.address): (d.state.value, d.owner)
            for d in store.list_devices(DeviceFilter(host=host), limit=1000).items}


def test_claim_takes_the_devices_fit_chooses_on_the_fresh_host(store: Store) -> None:
    report(store, "node1", two_gpus())
    got = place(store, "node1", boot(request("gpu", 2)))
    assert isinstance(got, ServerRecord) and got.status is ServerStatus.BUILDING
    assert states(store) == {"0000:3b:00.0": ("claimed", got.id),
                             "0000:5e:00.0": ("claimed", got.id)}
    # The next decision sees the host as it is now, whatever snapshot proposed it.
    again = place(store, "node1", boot(request("gpu", 1)))
    assert isinstance(again, NoFit) and again.text == "lacks 1 free 'gpu' device"
    check_invariants(store)


def test_a_fit_the_caller_does_not_accept_is_not_claimed(store: Store) -> None:
    report(store, "node1", two_gpus())
    req = boot(request("gpu", 1))
    got = store.claim(new_server(req), host_id(store, "node1"), lambda v: fit(v, req),
                      accept=lambda f: False)
    assert isinstance(got, Fit)
    assert {s for s, _o in states(store).values()} == {"available"}


def test_a_device_taken_behind_the_lock_is_a_conflict_and_nothing_is_written(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even past fit, the UPDATE ... WHERE state = 'available' decides (house rule 2)."""
    report(store, "node1", two_gpus())
    real = store_claims.check_quota

    def writer_slips_in(conn: Any, *args: Any, **kw: Any) -> None:
        conn.execute(text("UPDATE devices SET state = 'claimed', owner = 'intruder' "
                          "WHERE address = '0000:3b:00.0'"))
        real(conn, *args, **kw)

    monkeypatch.setattr(store_claims, "check_quota", writer_slips_in)
    with pytest.raises(ClaimConflict) as exc:
        place(store, "node1", boot(request("gpu", 2)))
    assert exc.value.code == "claim_conflict"
    monkeypatch.undo()
    assert {s for s, _o in states(store).values()} == {"available"}  # all rolled back
    with store._tx.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM servers")).scalar() == 0
    check_invariants(store)


def test_quota_is_checked_again_inside_the_claim(store: Store) -> None:
    report(store, "node1", two_gpus())
    store.set_quota("p1", "gpu", 1)
    assert isinstance(place(store, "node1", boot(request("gpu", 1))), ServerRecord)
    with pytest.raises(QuotaExceeded):
        place(store, "node1", boot(request("gpu", 1)))
    assert isinstance(place(store, "node1", boot(request("gpu", 1)), project="p2"),
                      ServerRecord)


def test_freeing_is_the_mirror_and_keeps_the_reserved_flag(store: Store) -> None:
    report(store, "node1", two_gpus())
    got = place(store, "node1", boot(request("gpu", 2)))
    assert isinstance(got, ServerRecord)
    store.set_reserved("node1", a("0000:3b:00.0"), True)   # taken out while held
    assert store.get_device("node1", a("0000:3b:00.0")).owner == got.id
    gone = store.delete_server(got.id)
    assert gone.status is ServerStatus.DELETED
    assert states(store) == {"0000:3b:00.0": ("reserved", None),
                             "0000:5e:00.0": ("available", None)}
    check_invariants(store)


def test_a_one_time_use_device_comes_back_reserved_until_an_operator_unreserves_it(
        store: Store) -> None:
    once = gpu("0000:3b:00.0", group=10, tags={"one_time_use": "true"})
    report(store, "node1", inventory(once, gpu("0000:5e:00.0", group=11)))
    got = place(store, "node1", boot(request("gpu", 2)))
    assert isinstance(got, ServerRecord)
    store.delete_server(got.id)
    assert states(store) == {"0000:3b:00.0": ("reserved", None),     # to be cleaned first
                             "0000:5e:00.0": ("available", None)}
    check_invariants(store)
    assert isinstance(place(store, "node1", boot(request("gpu", 2))), NoFit)
    store.set_reserved("node1", a("0000:3b:00.0"), False)              # cleaned
    assert isinstance(place(store, "node1", boot(request("gpu", 2))), ServerRecord)


def test_a_device_the_spec_drops_while_held_leaves_the_pools_when_freed(store: Store) -> None:
    report(store, "node1", two_gpus())
    got = place(store, "node1", boot(request("gpu", 1)))
    assert isinstance(got, ServerRecord)
    (held,) = got.devices
    dropped = inventory(*(replace(d, assignable=False) if d.address == held.address else d
                          for d in two_gpus().devices))
    store.report_inventory("node1", 1, dropped, now=T0)
    assert store.get_device("node1", held.address).owner == got.id
    store.delete_server(got.id)
    rec = store.get_device("node1", held.address)
    assert (rec.state, rec.reason) == (DeviceState.AVAILABLE, "not selected by the device spec")
    assert sum(p.total for p in store.list_pools(host="node1").items) == 1
    check_invariants(store)


def test_group_mates_and_pf_vf_dependants_follow_every_writer(store: Store) -> None:
    members = ("0000:4b:00.0", "0000:4b:00.1")
    base = inventory(gpu("0000:4b:00.0", group=30, members=members),
                     audio("0000:4b:00.1", group=30, members=members),
                     pf("0000:af:00.0", group=20, assignable=True, vfs=1),
                     vf("0000:af:02.0", "0000:af:00.0", group=21))
    report(store, "node1", base)
    got = place(store, "node1", boot(request("vf", 1)))
    assert isinstance(got, ServerRecord)
    assert states(store)["0000:af:00.0"] == ("unavailable", None)
    # A report adding a VF under the PF leaves the PF unavailable and the new VF free.
    more = inventory(*base.devices, vf("0000:af:02.1", "0000:af:00.0", group=22))
    store.report_inventory("node1", 1, more, now=T0)
    assert states(store)["0000:af:00.0"] == ("unavailable", None)
    assert states(store)["0000:af:02.1"] == ("available", None)
    # Reserving the GPU makes its audio mate unavailable, and back.
    store.set_reserved("node1", a("0000:4b:00.0"), True)
    assert states(store)["0000:4b:00.1"] == ("unavailable", None)
    assert store.get_device("node1", a("0000:4b:00.1")).reason == (
        "goes with 0000:4b:00.0 (IOMMU group 30), which is reserved: taken out of service "
        "by an operator")
    store.set_reserved("node1", a("0000:4b:00.0"), False)
    assert states(store)["0000:4b:00.1"] == ("available", None)
    check_invariants(store)


def test_spawn_completion_moves_a_vanished_claim_to_allocated(store: Store) -> None:
    report(store, "node1", two_gpus())
    got = place(store, "node1", boot(request("gpu", 1)))
    assert isinstance(got, ServerRecord)
    (held,) = got.devices
    other = next(d for d in two_gpus().devices if d.address != held.address)
    store.report_inventory("node1", 1, inventory(other), now=T0)
    active = store.complete_spawn(got.id)
    assert active.status is ServerStatus.ACTIVE
    store.report_inventory("node1", 2, two_gpus(), now=T0)
    assert store.get_device("node1", held.address).state is DeviceState.ALLOCATED
    with pytest.raises(Conflict):
        store.fail_spawn(got.id, "too late")
    check_invariants(store)


def test_stale_derived_state_is_recomputed_when_the_store_opens(db_url: str) -> None:
    """Hosts written before migration 0002 (or under older rules) are re-derived."""
    store = Store.open(db_url)
    try:
        report(store, "node1", two_gpus())
        with store._tx.write() as conn:   # as 0001 left them: no kinds, old pool keys
            conn.execute(update(hosts).values(derived=0, pci_free=0))
            conn.execute(update(pools).values(usable=0, kind_id=None,
                                              key=func.substr(pools.c.key, 2) + "x"))
            conn.execute(text("DELETE FROM host_kinds"))
            conn.execute(text("UPDATE devices SET reason = 'stale'"))
    finally:
        store.close()
    store = Store.open(db_url)
    try:
        check_invariants(store)
        assert isinstance(place(store, "node1", boot(request("gpu", 1))), ServerRecord)
    finally:
        store.close()


def test_bulk_loading_writes_what_reports_would(db_url: str) -> None:
    gpus, nics = profile_inventory("gpu-server"), profile_inventory("sriov-nic-server")
    bulk = Store.open(db_url)
    try:
        bulk.load_hosts([("g1", gpus), ("n1", nics), ("g2", gpus)], now=T0)
        with pytest.raises(Conflict):
            bulk.load_hosts([("g1", gpus)], now=T0)
        loaded = {h: (states(bulk, h), pool_summary(bulk, h)) for h in ("g1", "n1", "g2")}
        check_invariants(bulk)
        report(bulk, "r1", gpus)
        report(bulk, "r2", nics)
        assert (states(bulk, "r1"), pool_summary(bulk, "r1")) == loaded["g1"]
        assert (states(bulk, "r2"), pool_summary(bulk, "r2")) == loaded["n1"]
        reasons = {d.device.address: d.reason for d in
                   bulk.list_devices(DeviceFilter(host="g1"), limit=1000).items}
        assert reasons == {d.device.address: d.reason for d in
                           bulk.list_devices(DeviceFilter(host="r1"), limit=1000).items}
    finally:
        bulk.close()


def pool_summary(store: Store, host: str) -> list[tuple[Any, ...]]:
    return sorted((p.vendor_id, p.product_id, p.dev_type.value, p.numa_node,
                   str(p.parent_addr), p.total, p.free)
                  for p in store.list_pools(host=host, limit=1000).items)


def test_claims_and_frees_keep_every_count_on_a_big_host(store: Store) -> None:
    report(store, "nic", profile_inventory("sriov-nic-server"))
    report(store, "gpu", profile_inventory("gpu-server"))
    placed = [place(store, "nic", boot(request("vf", 3))) for _ in range(4)]
    assert all(isinstance(p, ServerRecord) for p in placed)
    check_invariants(store)
    for p in placed[::2]:
        assert isinstance(p, ServerRecord)
        store.delete_server(p.id)
    check_invariants(store)


def test_a_request_matching_several_kinds_gets_a_kind_set_kept_by_every_writer(
        store: Store) -> None:
    """The first boot for an alias matching two kinds registers their set; claims, frees and
    reports (a new host, a new device) keep each host's sum for it."""
    report(store, "mixed", inventory(gpu("0000:3b:00.0", group=10),
                                     gpu("0000:5e:00.0", group=11, product="2230")))
    entries = parse_aliases([{"name": "any", "vendor_id": "10de", "product_id": "20f1"},
                             {"name": "any", "vendor_id": "10de", "product_id": "2230"}])
    req = boot(PciRequest("any", 2, entries["any"].entries))
    need = needs_of(req.hard, store.kinds())
    assert len(need) == 1 and len(need[0].kind_ids) == 2
    assert [c.name for c in store.candidates(need, 2, 1024, spread=False, limit=8)] == [
        "mixed"]
    check_invariants(store)   # the set is registered, with the host's sum
    got = place(store, "mixed", req)
    assert isinstance(got, ServerRecord)
    assert store.candidates(need, 2, 1024, spread=False, limit=8) == []
    report(store, "later", inventory(gpu("0000:3b:00.0", group=10, product="2230"),
                                     gpu("0000:5e:00.0", group=11, product="2230")))
    assert [c.name for c in store.candidates(need, 2, 1024, spread=False, limit=8)] == [
        "later"]
    store.delete_server(got.id)
    assert [c.name for c in store.candidates(need, 2, 1024, spread=False, limit=8)] == [
        "mixed", "later"]   # as many free each: the older host first
    check_invariants(store)
