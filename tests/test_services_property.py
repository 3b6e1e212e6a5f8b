"""Property: boots and deletes through Cloud on random small fleets (SQLite).

After every step the store's invariants hold (:func:`fleet.check_invariants`), and a boot is
refused exactly when the pure scheduler, over a full snapshot taken just before it, refuses
it too: the SQL narrowing never leaves out a host ``fit`` would have taken.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet import (
    ADMIN,
    HOST,
    T0,
    audio,
    catalog,
    check_invariants,
    cloud_of,
    confirm_destroys,
    everything,
    gpu,
    inventory,
    pf,
    vf,
)
from pcipass.pci.device import PciDevice
from pcipass.records import ServerStatus
from pcipass.sched import Placement, schedule
from pcipass.store import Store

FLAVORS = {
    "g1": {"pci_passthrough:alias": "gpu:1"},
    "g2": {"pci_passthrough:alias": "gpu:2"},
    "g2-node": {"pci_passthrough:alias": "gpu-req:2", "hw:numa_nodes": "1"},
    "g2-nodes": {"pci_passthrough:alias": "gpu:2", "hw:numa_nodes": "2"},
    "vf2": {"pci_passthrough:alias": "vf:2"},
    "pf1": {"pci_passthrough:alias": "pf:1"},
    "mix": {"pci_passthrough:alias": "gpu:1, vf:1"},
    "soft": {"pci_passthrough:alias": "vf:1", "pci_passthrough:alias_preferred": "gpu:2"},
    "plain": {},
    "any2": {"pci_passthrough:alias": "anygpu:2"},
}


@st.composite
def host_devices(draw: st.DrawFn) -> list[PciDevice]:
    devices: list[PciDevice] = []
    group = 100
    for i in range(draw(st.integers(0, 3))):
        address = f"0000:{0x10 + i:02x}:00.0"
        numa = draw(st.sampled_from([0, 1, None]))
        product = draw(st.sampled_from(["20f1", "20f1", "2230"]))
        shape = draw(st.sampled_from(["alone", "audio", "no-group"]))
        if shape == "audio":
            members = (address, address[:-1] + "1")
            devices += [gpu(address, group=group, numa=numa, members=members,  # type: ignore[arg-type]
                            product=product),
                        audio(members[1], group=group, numa=numa, members=members)]  # type: ignore[arg-type]
        else:
            devices.append(gpu(address, group=None if shape == "no-group" else group,  # type: ignore[arg-type]
                               numa=numa, product=product))  # type: ignore[arg-type]
        group += 1
    if draw(st.booleans()):
        vfs = draw(st.integers(0, 3))
        devices.append(pf("0000:af:00.0", group=group, assignable=draw(st.booleans()),
                          vfs=vfs, numa=draw(st.sampled_from([0, 1]))))
        for v in range(vfs):
            group += 1
            devices.append(vf(f"0000:af:02.{v}", "0000:af:00.0",
                              group=None if draw(st.integers(0, 5)) == 0 else group))
    return devices


operations = st.lists(st.one_of(
    st.tuples(st.just("boot"), st.sampled_from(sorted(FLAVORS))),
    st.tuples(st.just("delete"), st.integers(0, 20)),
), min_size=1, max_size=10)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty migrated database, copied for every example (migrating each time is slow)."""
    path = tmp_path_factory.mktemp("template") / "empty.db"
    Store.open(f"sqlite:///{path}").close()
    return path


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fleet=st.lists(host_devices(), min_size=1, max_size=3), ops=operations)
def test_boots_are_refused_only_when_no_host_could_take_them(
        template: Path, tmp_path: Path, fleet: list[list[PciDevice]],
        ops: list[tuple[str, Any]]) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.db"
    shutil.copy(template, path)
    store = Store.open(f"sqlite:///{path}", migrate=False)
    try:
        for i, devices in enumerate(fleet):
            store.report_inventory(f"host{i}", None, inventory(*devices, host=HOST), now=T0)
        cloud = cloud_of(store)
        cloud.create_aliases(ADMIN, [
            {"name": "gpu-req", "vendor_id": "10de", "product_id": "20f1",
             "numa_policy": "required"},
            {"name": "anygpu", "vendor_id": "10de", "product_id": "20f1"},
            {"name": "anygpu", "vendor_id": "10de", "product_id": "2230"}])
        catalog(cloud, FLAVORS, vcpus=16, ram_mb=4096)
        image = cloud.get_image(ADMIN, "img")
        live: list[str] = []
        for op, arg in ops:
            if op == "delete":
                if live:
                    cloud.delete_server(ADMIN, live.pop(arg % len(live)))
                    confirm_destroys(cloud)
            else:
                req, _ = cloud._request(cloud.get_flavor(ADMIN, arg), image, None)
                pure = schedule(everything(store), req)
                server = cloud.create_server(ADMIN, name="vm", flavor=arg, image="img")
                assert (server.status is ServerStatus.BUILDING) == isinstance(pure, Placement), (
                    arg, server.fault, pure)
                if server.status is ServerStatus.BUILDING:
                    live.append(server.id)
                else:
                    assert server.fault and server.fault.startswith("No host can satisfy")
            check_invariants(store)
    finally:
        store.close()
