"""Hot attach and detach end to end: a real control plane, the agents' task runners with the
fake hypervisor and the recording VF programmer, on two simulated GPU servers and an SR-IOV
server; the real client.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentworld import A100, PROJECT, SRIOV_SPEC, World, agent_world
from fleet import host_inventory
from pcipass import errors
from pcipass.host.sriov.fake import FRESH_VF
from pcipass.host.sriov.model import VfSlot
from pcipass.virt.driver import Operation

GPUS = ("gpu-1", "gpu-2")
SRIOV = "sriov-1"
HOTPLUG = ("attach_device", "attach_interface", "detach_device", "detach_interface")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e-attach")
    hosts = {h: host_inventory(tmp / h, "gpu-server", index=i) for i, h in enumerate(GPUS)}
    hosts[SRIOV] = host_inventory(tmp / SRIOV, "sriov-nic-server", SRIOV_SPEC)
    with agent_world(tmp, hosts, sriov=[SRIOV], gpu_flavors={"a100": 1},
                     vlans={"net1": ("physnet1", 100)}) as world:
        yield world


def test_attach_and_detach_a_device_on_a_running_server(world: World) -> None:
    s = world.boot("vm-a", "a100")
    host = s["host"]
    (first,) = [d["address"] for d in s["devices"]]
    got = world.member.attach_device("vm-a", alias="a100")
    assert (got["status"], got["host"]) == ("ACTIVE", host)
    (new,) = [d["address"] for d in got["devices"] if d["state"] == "claimed"]
    assert f"pci:{new}" not in world.plugged(s)          # not before the agent ran
    world.run_tasks()
    after = world.member.server("vm-a")
    assert after["status"] == "ACTIVE"
    assert {d["address"]: d["state"] for d in after["devices"]} == {
        first: "allocated", new: "allocated"}
    assert {f"pci:{first}", f"pci:{new}"} <= world.plugged(s)
    assert world.admin.server_domain_xml("vm-a").count("<hostdev") == 2

    # Detach: still held until the agent confirms, then freed and gone from the guest.
    queued = world.member.detach_device("vm-a", new)
    assert {d["address"]: d["state"] for d in queued["devices"]}[new] == "allocated"
    assert world.admin.device(host, new)["owner"] == s["id"]
    world.run_tasks()
    assert world.admin.device(host, new)["state"] == "available"
    assert f"pci:{new}" not in world.plugged(s) and f"pci:{first}" in world.plugged(s)
    assert [d["address"] for d in world.member.server("vm-a")["devices"]] == [first]
    assert [(a, o) for a, o, _m in world.events(s, *HOTPLUG)] == [
        ("attach_device", "started"), ("attach_device", "done"),
        ("detach_device", "started"), ("detach_device", "done")]
    world.delete(s)


def test_a_full_host_refuses_with_409_and_the_server_is_not_moved(world: World) -> None:
    s = world.boot("vm-b", "a100")
    host = s["host"]
    other_host = next(h for h in GPUS if h != host)
    spare = len(world.free(host, A100))
    world.member.attach_device("vm-b", alias="a100", count=spare)
    world.run_tasks()
    held = world.member.server("vm-b")["devices"]
    assert len(held) == spare + 1 and world.free(host, A100) == []
    assert len(world.free(other_host, A100)) >= 1
    with pytest.raises(errors.Conflict) as err:
        world.member.attach_device("vm-b", alias="a100")
    assert err.value.code == "no_free_device"
    assert f"host {host} lacks 1 free 'a100' device" in err.value.message
    after = world.member.server("vm-b")
    assert (after["host"], after["devices"], after["status"]) == (host, held, "ACTIVE")
    assert world.events(s, *HOTPLUG)[-1][:2] == ("attach_device", "failed")
    world.delete(s)


def test_attach_over_quota_is_refused(world: World) -> None:
    s = world.boot("vm-c", "a100")
    world.admin.set_quota(PROJECT, "a100", 1)
    try:
        with pytest.raises(errors.QuotaExceeded) as err:
            world.member.attach_device("vm-c", alias="a100")
        assert err.value.code == "quota_exceeded"
        assert len(world.member.server("vm-c")["devices"]) == 1
    finally:
        world.admin.delete_quota(PROJECT, "a100")
    world.delete(s)


def test_an_attach_the_hypervisor_refuses_frees_the_device(world: World) -> None:
    s = world.boot("vm-d", "a100")
    host = s["host"]
    before = s["devices"]
    world.driver(host).inject_failure(Operation.ATTACH_DEVICE, "internal error: no free "
                                      "hot-pluggable PCIe root port")
    got = world.member.attach_device("vm-d", alias="a100")
    (new,) = [d["address"] for d in got["devices"] if d["state"] == "claimed"]
    world.run_tasks()
    after = world.member.server("vm-d")
    assert (after["status"], after["devices"]) == ("ACTIVE", before)
    assert world.admin.device(host, new)["state"] == "available"
    assert f"pci:{new}" not in world.plugged(s)
    action, outcome, message = world.events(s, *HOTPLUG)[-1]
    assert (action, outcome) == ("attach_device", "failed")
    assert message is not None and "no free hot-pluggable PCIe root port" in message
    world.delete(s)


def test_attach_and_detach_an_interface_programs_and_restores_its_vf(world: World) -> None:
    s = world.boot("vm-e", "small", {"net_id": "net1", "vnic_type": "direct"})
    assert s["host"] == SRIOV
    got = world.member.attach_interface("vm-e", {"net_id": "net1", "vnic_type": "direct"})
    port = got["ports"][-1]
    assert port["auto_delete"] and port["binding"]["host"] == SRIOV
    slot = VfSlot(port["binding"]["pf_netdev"], port["binding"]["vf_index"])
    assert world.vfs[SRIOV].state(slot) == FRESH_VF
    world.run_tasks()
    vf = world.vfs[SRIOV].state(slot)
    assert (vf.mac, vf.vlan) == (port["mac"], 100)
    assert f"pci:{port['binding']['address']}" in world.plugged(s)
    assert world.admin.device(SRIOV, port["binding"]["address"])["state"] == "allocated"
    assert world.member.port(port["id"])["status"] == "ACTIVE"

    world.member.detach_interface("vm-e", port["id"])
    world.run_tasks()
    assert world.vfs[SRIOV].state(slot) == FRESH_VF
    assert f"pci:{port['binding']['address']}" not in world.plugged(s)
    assert world.admin.device(SRIOV, port["binding"]["address"])["state"] == "available"
    with pytest.raises(errors.NotFound):
        world.member.port(port["id"])
    (left,) = world.member.server("vm-e")["ports"]
    first_slot = VfSlot(left["binding"]["pf_netdev"], left["binding"]["vf_index"])
    assert world.vfs[SRIOV].state(first_slot).mac == left["mac"]   # the boot's port: untouched
    world.delete(s)
    assert world.vfs[SRIOV].state(first_slot) == FRESH_VF


def test_another_project_cannot_attach_or_detach(world: World) -> None:
    s = world.boot("vm-f", "a100")
    (addr,) = [d["address"] for d in s["devices"]]
    with pytest.raises(errors.NotFound):
        world.other.attach_device(s["id"], alias="a100")
    with pytest.raises(errors.NotFound):
        world.other.detach_device(s["id"], addr)
    with pytest.raises(errors.NotFound):
        world.other.attach_interface(s["id"], {"net_id": "net1", "vnic_type": "direct"})
    assert world.member.server("vm-f")["devices"] == s["devices"]
    assert world.admin.attach_device(s["id"], alias="a100")["status"] == "ACTIVE"
    world.run_tasks()
    assert len(world.member.server("vm-f")["devices"]) == 2
    world.delete(s)
