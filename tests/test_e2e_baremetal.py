"""A bare-metal machine end to end: a real control plane, the agent's task runner with the fake
bare-metal driver, the real client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from apiserver import api_server
from fleet import HOST, gpu, inventory
from pcipass import errors
from pcipass.agent.tasks import TaskRunner
from pcipass.cli.agent import disk_overlays, host_cpus
from pcipass.cli.client import ApiClient
from pcipass.pci.device import HostKind
from pcipass.pci.inventory import inventory_to_json
from pcipass.virt.baremetal import FakeBareMetalDriver
from pcipass.virt.driver import DriverKind, open_driver
from pcipass.virt.payload import domain_name

BM = "metal-1"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[ApiClient, TaskRunner, Path]]:
    image = tmp_path / "img.qcow2"
    image.write_bytes(b"")
    inv = inventory(gpu("0000:5e:00.0", group=10), gpu("0000:86:00.0", group=11),
                    host=replace(HOST, kind=HostKind.BAREMETAL))
    state = tmp_path / "state" / BM
    with api_server(f"sqlite:///{tmp_path / 'pcipass.db'}", tmp_path / "server") as api, \
            ApiClient(api.url, api.admin_token) as admin:
        admin.create_aliases([{"name": "gpu", "vendor_id": "10de", "product_id": "20f1",
                               "device_type": "type-PCI"}])
        admin.create_flavor(name="metal", vcpus=2, ram_mb=2048, disk_gb=1, extra_specs={
            "pci_passthrough:alias": "gpu:1", "pcipass:baremetal": "true"})
        admin.create_image(name="img", source=str(image), properties={})
        token = str(admin.create_token("agent", host=BM)["token"])
        with ApiClient(api.url, token) as agent:
            agent.put_inventory(BM, None, inventory_to_json(inv))
            runner = TaskRunner(
                client=agent, host=BM, state_dir=state,
                open_driver=lambda: open_driver(DriverKind.BAREMETAL_FAKE, state_dir=state),
                overlays=disk_overlays(DriverKind.BAREMETAL_FAKE, state),
                host_cpus=lambda: host_cpus(inv), wait=0.0, rand=lambda: 0.0)
            try:
                yield admin, runner, state
            finally:
                runner.close()
        log = api.log()
        assert "Traceback" not in log, log[-6000:]


def _run(runner: TaskRunner) -> None:
    for _ in range(20):
        if not runner.run_once():
            return
    raise AssertionError("the task runner never ran out of work")


def test_a_bare_metal_server_powers_the_machine_on_and_off(
        world: tuple[ApiClient, TaskRunner, Path]) -> None:
    admin, runner, state = world
    assert admin.host(BM)["kind"] == "baremetal"
    s = admin.create_server(name="m1", flavor="metal", image="img")
    assert s["host"] == BM
    _run(runner)
    s = admin.server(s["id"])
    assert s["status"] == "ACTIVE", s["fault"]
    assert {d["address"]: (d["alias"], d["state"]) for d in s["devices"]} == {
        "0000:5e:00.0": ("gpu", "allocated"), "0000:86:00.0": (None, "allocated")}
    machine = FakeBareMetalDriver(state / "baremetal")
    name = domain_name(s["id"])
    assert machine.holder() == name and machine.powered()
    assert machine.devices() == ["0000:5e:00.0", "0000:86:00.0"]
    assert not (state / "virt").exists()              # no domain XML, no disk overlay
    assert not (state / "disks").exists()

    with pytest.raises(errors.Conflict) as exc:
        admin.attach_device("m1", alias="gpu")
    assert exc.value.code == "baremetal_server"

    admin.delete_server(s["id"])
    _run(runner)
    assert admin.server(s["id"])["status"] == "DELETED"
    assert [c["op"] for c in machine.calls()] == ["power_on", "power_off"]
    assert machine.holder() is None and not machine.powered()
    states = {d["address"]: d["state"] for d in admin.devices([("host", BM)]).items}
    assert states == {"0000:5e:00.0": "available", "0000:86:00.0": "available"}
