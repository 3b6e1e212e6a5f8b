"""Reconciliation and pools: pure table tests of every rule, and properties over random hosts."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, HostInfo, PciDevice
from pcipass.pci.inventory import Inventory
from pcipass.pci.pool import (
    PoolDelta,
    PoolKey,
    Slot,
    is_free,
    pool_counts,
    pool_deltas,
    pool_key,
    slot,
    tags_key,
)
from pcipass.pci.reconcile import Change, Plan, Tracked, apply_plan, reconcile
from pcipass.records import DeviceState
from strategies import hosts

A = DeviceState.AVAILABLE
C = DeviceState.CLAIMED
AL = DeviceState.ALLOCATED
U = DeviceState.UNAVAILABLE
R = DeviceState.REMOVED

PF = PciAddress.parse("0000:3b:00.0")


def dev(address: str, **kw: object) -> PciDevice:
    """A small assignable plain device; keywords override any field."""
    base = PciDevice(address=PciAddress.parse(address), vendor_id="10de", product_id="20b5",
                     class_code="030200", numa_node=0, driver="vfio-pci", assignable=True)
    return replace(base, **kw)  # type: ignore[arg-type]


def vf(address: str, **kw: object) -> PciDevice:
    return dev(address, vendor_id="8086", product_id="1889", class_code="020000",
               dev_type=DevType.VF, parent_addr=PF, **kw)


def inv(*devices: PciDevice) -> Inventory:
    return Inventory(HostInfo(cpus=8), tuple(devices))


def t(d: PciDevice, state: DeviceState = A, *, owner: str | None = None,
      reserved: bool = False, held: DeviceState | None = None) -> Tracked:
    return Tracked(d, state, reserved, owner, held)


D1 = dev("0000:3b:00.0")
D2 = dev("0000:5e:00.0")
D3 = dev("0000:86:00.0")


# --- reconcile: one test per rule ----------------------------------------------------------

def test_new_device_appears_available() -> None:
    plan = reconcile([t(D1)], inv(D1, D2))
    assert plan.added == (t(D2),)
    assert plan.added[0].state is A and plan.added[0].owner is None
    assert (plan.updated, plan.removed, plan.gone) == ((), (), ())


def test_first_report_adds_everything_in_address_order() -> None:
    plan = reconcile([], inv(D3, D1, D2))
    assert [x.address for x in plan.added] == [D1.address, D2.address, D3.address]


@pytest.mark.parametrize("state, owner, reserved", [
    (A, None, False), (A, None, True), (AL, "vm-1", False), (C, "vm-1", True), (U, None, False),
])
def test_unchanged_report_plans_nothing(state: DeviceState, owner: str | None,
                                        reserved: bool) -> None:
    plan = reconcile([t(D1, state, owner=owner, reserved=reserved), t(D2)], inv(D2, D1))
    assert plan == Plan()
    assert not plan.changed


@pytest.mark.parametrize("state, owner", [(A, None), (AL, "vm-1"), (C, "vm-2"), (U, None)])
def test_changed_facts_apply_and_keep_the_bookkeeping(state: DeviceState,
                                                      owner: str | None) -> None:
    before = t(D1, state, owner=owner, reserved=True)
    new = replace(D1, driver="nvidia", numa_node=1, tags={"gpu": "a100"})
    plan = reconcile([before], inv(new))
    assert plan.updated == (Change(before, t(new, state, owner=owner, reserved=True)),)
    assert (plan.added, plan.removed, plan.gone) == ((), (), ())


@pytest.mark.parametrize("state, reserved", [(A, False), (A, True), (U, False)])
def test_device_vanished_while_free_is_gone(state: DeviceState, reserved: bool) -> None:
    before = t(D2, state, reserved=reserved)
    plan = reconcile([t(D1), before], inv(D1))
    assert plan.gone == (before,)
    assert (plan.added, plan.updated, plan.removed) == ((), (), ())


@pytest.mark.parametrize("state", [AL, C])
def test_device_vanished_while_in_use_is_removed_and_keeps_its_owner(
        state: DeviceState) -> None:
    before = t(D2, state, owner="vm-1", reserved=True)
    plan = reconcile([t(D1), before], inv(D1))
    (change,) = plan.removed
    assert change.before == before
    assert change.after == t(D2, R, owner="vm-1", reserved=True, held=state)
    assert plan.gone == ()


def test_in_use_without_owner_still_counts_as_in_use() -> None:
    """A claimed row is never deleted, even if its owner is somehow missing."""
    plan = reconcile([t(D1, C)], inv())
    assert plan.removed[0].after.state is R and plan.removed[0].after.held_state is C


def test_removed_device_still_missing_plans_nothing() -> None:
    assert reconcile([t(D1, R, owner="vm-1", held=AL)], inv()) == Plan()


@pytest.mark.parametrize("held", [AL, C])
def test_removed_device_that_comes_back_takes_back_its_owners_state(
        held: DeviceState) -> None:
    before = t(D1, R, owner="vm-1", reserved=True, held=held)
    back = replace(D1, driver="vfio-pci", numa_node=1)
    plan = reconcile([before], inv(back))
    assert plan.updated == (Change(before, t(back, held, owner="vm-1", reserved=True)),)


def test_removed_device_without_recorded_state_comes_back_allocated() -> None:
    plan = reconcile([t(D1, R, owner="vm-1")], inv(D1))
    assert plan.updated[0].after == t(D1, AL, owner="vm-1")


def test_removed_device_whose_owner_let_go_comes_back_available() -> None:
    plan = reconcile([t(D1, R)], inv(D1))
    assert plan.updated[0].after == t(D1, A)


def test_no_longer_assignable_while_allocated_stays_allocated_out_of_its_pool() -> None:
    before = t(D1, AL, owner="vm-1")
    dropped = replace(D1, assignable=False)
    plan = reconcile([before], inv(dropped))
    (change,) = plan.updated
    assert change.after == t(dropped, AL, owner="vm-1")
    # It leaves its pool now (it was not free there); freed later it joins none.
    assert slot(change.after.device, AL, False) is None
    assert pool_deltas([(slot(D1, AL, False), None)]) == {pool_key(D1): PoolDelta(-1, 0)}
    assert slot(dropped, A, False) is None


def test_reserved_flag_survives_every_kind_of_report() -> None:
    current = [t(D1, reserved=True), t(D2, AL, owner="vm", reserved=True),
               t(D3, R, owner="vm", reserved=True, held=AL)]
    report = inv(replace(D1, driver="x"), D3)
    after = apply_plan(current, reconcile(current, report))
    assert {x.address: x.reserved for x in after} == {
        D1.address: True, D2.address: True, D3.address: True}


def test_plan_counts_and_moves() -> None:
    current = [t(D1), t(D2, AL, owner="vm"), t(D3)]
    new = dev("0000:af:00.0")
    plan = reconcile(current, inv(replace(D1, driver="x"), new))
    assert (len(plan.added), len(plan.updated), len(plan.removed), len(plan.gone)) == (1, 1, 1, 1)
    moves = list(plan.moves())
    assert (None, t(new)) in moves
    assert (t(D3), None) in moves
    assert plan.changed


def test_apply_plan_gives_the_reported_devices_plus_the_removed_ones() -> None:
    current = [t(D1), t(D2, AL, owner="vm")]
    after = apply_plan(current, reconcile(current, inv(D3)))
    assert after == [t(D2, R, owner="vm", held=AL), t(D3)]


# --- pools ----------------------------------------------------------------------------------

def test_pool_key_of_a_vf_names_its_parent_and_sorts_tags() -> None:
    d = vf("0000:3b:02.1", tags={"trusted": "true", "physical_network": "physnet1"})
    key = pool_key(d)
    assert key == PoolKey("8086", "1889", DevType.VF, 0, PF,
                          (("physical_network", "physnet1"), ("trusted", "true")))
    assert key is not None
    assert key.tags_key == '{"physical_network":"physnet1","trusted":"true"}'
    assert key.tags_dict == {"trusted": "true", "physical_network": "physnet1"}


def test_pool_key_ignores_tag_order_and_what_is_not_in_the_key() -> None:
    a = vf("0000:3b:02.1", tags={"a": "1", "b": "2"}, driver="iavf")
    b = vf("0000:3b:02.2", tags={"b": "2", "a": "1"}, driver="vfio-pci", iommu_group=9)
    ka, kb = pool_key(a), pool_key(b)
    assert ka == kb and ka is not None and kb is not None
    assert ka.digest == kb.digest and len(ka.digest) == 64


@pytest.mark.parametrize("change", [
    {"vendor_id": "15b3"}, {"product_id": "1018"}, {"numa_node": 1}, {"numa_node": None},
    {"tags": {"physical_network": "other"}}, {"parent_addr": PciAddress.parse("0000:5e:00.0")},
])
def test_pool_key_separates_what_is_not_interchangeable(change: dict[str, object]) -> None:
    base = vf("0000:3b:02.1", tags={"physical_network": "physnet1"})
    other_key, base_key = pool_key(replace(base, **change)), pool_key(base)  # type: ignore[arg-type]
    assert other_key != base_key
    assert other_key is not None and base_key is not None
    assert other_key.digest != base_key.digest


def test_pool_key_of_non_vfs_has_no_parent_and_unassignable_has_none() -> None:
    key = pool_key(D1)
    assert key is not None and key.parent_addr is None and key.dev_type is DevType.PCI
    assert pool_key(replace(D1, assignable=False)) is None


@pytest.mark.parametrize("state, reserved, free", [
    (A, False, True), (A, True, False), (C, False, False), (AL, False, False),
    (AL, True, False), (U, False, False), (R, False, False),
])
def test_free_means_available_and_not_reserved(state: DeviceState, reserved: bool,
                                               free: bool) -> None:
    assert is_free(state, reserved) is free


def test_slot_of_removed_or_unassignable_device_is_none() -> None:
    assert slot(D1, R, False) is None
    assert slot(replace(D1, assignable=False), A, False) is None
    assert slot(D1, AL, True) == Slot(pool_key(D1), False)  # type: ignore[arg-type]


def test_pool_deltas_move_counts_and_drop_zero_moves() -> None:
    k1, k2 = pool_key(D1), pool_key(vf("0000:3b:02.1"))
    assert k1 is not None and k2 is not None
    deltas = pool_deltas([
        (None, Slot(k1, True)),              # added, free
        (Slot(k1, True), Slot(k1, False)),   # claimed
        (Slot(k2, True), None),              # gone
        (Slot(k2, False), Slot(k2, False)),  # no move
        (Slot(k2, False), Slot(k1, True)),   # moved to another pool and freed
    ])
    assert deltas == {k1: PoolDelta(2, 1), k2: PoolDelta(-2, -1)}
    assert pool_deltas([(None, Slot(k1, True)), (Slot(k1, True), None)]) == {}


def test_pool_counts_from_scratch() -> None:
    slots = [slot(D1, A, False), slot(replace(D1, address=D2.address), AL, False),
             slot(replace(D1, address=D3.address), A, True), None]
    assert pool_counts(slots) == {pool_key(D1): PoolDelta(3, 1)}


def test_tags_key_is_canonical() -> None:
    assert tags_key({"b": "2", "a": "1"}) == tags_key({"a": "1", "b": "2"}) == '{"a":"1","b":"2"}'
    assert tags_key({}) == "{}"


# --- properties -----------------------------------------------------------------------------

STATES = st.sampled_from([A, A, A, C, AL, U, R])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Tracked], Inventory]:
    """What the store holds for a host, and a new report that overlaps it."""
    devices = draw(hosts(max_devices=10))
    current: list[Tracked] = []
    for d in devices:
        if not draw(st.booleans()):
            continue
        state = draw(STATES)
        owner = draw(st.sampled_from(["vm-1", "vm-2"])) if state in (C, AL, R) else None
        held = draw(st.sampled_from([None, C, AL])) if state is R else None
        d = replace(d, assignable=draw(st.booleans()))
        current.append(Tracked(d, state, draw(st.booleans()), owner, held))
    reported = []
    for d in devices:
        if not draw(st.booleans()):
            continue
        if draw(st.booleans()):
            d = replace(d, driver=draw(st.sampled_from(["vfio-pci", "ice", None])),
                        assignable=draw(st.booleans()),
                        tags=draw(st.dictionaries(st.sampled_from(["a", "b"]),
                                                  st.sampled_from(["1", "2"]), max_size=2)))
        reported.append(d)
    return current, Inventory(HostInfo(), tuple(reported))


@given(scenarios())
def test_applying_a_plan_then_reconciling_again_plans_nothing(
        scenario: tuple[list[Tracked], Inventory]) -> None:
    current, report = scenario
    after = apply_plan(current, reconcile(current, report))
    assert reconcile(after, report) == Plan()


@given(scenarios())
def test_devices_in_use_never_lose_their_owner(
        scenario: tuple[list[Tracked], Inventory]) -> None:
    current, report = scenario
    after = {x.address: x for x in apply_plan(current, reconcile(current, report))}
    for before in current:
        if before.owner is not None:
            assert after[before.address].owner == before.owner
            assert after[before.address].state in (C, AL, R)


@given(scenarios())
def test_after_a_report_the_store_holds_the_report_plus_removed_devices(
        scenario: tuple[list[Tracked], Inventory]) -> None:
    current, report = scenario
    after = apply_plan(current, reconcile(current, report))
    reported = report.by_address()
    for x in after:
        if x.address in reported:
            assert x.device == reported[x.address]
            assert x.state is not R and x.held_state is None
        else:
            assert x.state is R and x.in_use
    assert reported.keys() <= {x.address for x in after}


@given(scenarios())
def test_pool_deltas_of_a_plan_equal_the_difference_of_recounts(
        scenario: tuple[list[Tracked], Inventory]) -> None:
    current, report = scenario
    plan = reconcile(current, report)
    after = apply_plan(current, plan)

    def counts(ts: list[Tracked]) -> dict[PoolKey, PoolDelta]:
        return pool_counts(slot(x.device, x.state, x.reserved) for x in ts)

    before_counts, after_counts = counts(current), counts(after)
    moved = pool_deltas(
        (None if b is None else slot(b.device, b.state, b.reserved),
         None if a is None else slot(a.device, a.state, a.reserved))
        for b, a in plan.moves()
    )
    for key in before_counts.keys() | after_counts.keys():
        assert before_counts.get(key, PoolDelta()) + moved.get(key, PoolDelta()) == \
            after_counts.get(key, PoolDelta())
