"""Hot attach and detach end to end: a real control plane, the agents' task runners with the
fake hypervisor and the recording VF programmer, on two simulated GPU servers and an SR-IOV
server; the real client.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from apiserver import api_server
from pcipass import errors
from pcipass.agent.tasks import TaskRunner
from pcipass.cli.agent import disk_overlays, host_cpus
from pcipass.cli.client import JSON, ApiClient
from pcipass.host.discovery import discover
from pcipass.host.profiles import build_host, suggested_aliases, suggested_device_spec
from pcipass.host.sriov.fake import FRESH_VF, RecordingVfProgrammer
from pcipass.host.sriov.model import VfSlot
from pcipass.pci.devspec import DeviceSpecSet, parse_device_spec
from pcipass.pci.inventory import Inventory, inventory_to_json
from pcipass.virt.driver import DriverKind, Operation, open_driver
from pcipass.virt.fake import FakeVirtDriver
from pcipass.virt.payload import domain_name, plugged_keys

PROJECT = "tenant"
SRIOV = "sriov-1"
SRIOV_SPEC = [{"vendor_id": "8086", "product_id": "1889", "address": "0000:3b:00.0",
               "physical_network": "physnet1"}]


@dataclass
class World:
    admin: ApiClient
    member: ApiClient
    other: ApiClient
    runners: dict[str, TaskRunner]
    state: Path
    vfs: RecordingVfProgrammer
    gpu_hosts: list[str] = field(default_factory=list)

    def run_tasks(self) -> None:
        """Play every host's agent until none has anything left to do."""
        for _ in range(50):
            if not any([r.run_once() for r in self.runners.values()]):
                return
        raise AssertionError("the task runners never ran out of work")

    def driver(self, host: str) -> FakeVirtDriver:
        return FakeVirtDriver(self.state / host / "virt")

    def plugged(self, server: JSON) -> frozenset[str]:
        """What the server's domain holds on its host (fake hypervisor's live XML)."""
        return plugged_keys(self.driver(str(server["host"])).get_xml(
            domain_name(str(server["id"]))))

    def boot(self, name: str, flavor: str, *nics: dict[str, str]) -> JSON:
        s = self.member.create_server(name=name, flavor=flavor, image="plain", nics=nics)
        self.run_tasks()
        s = self.member.server(s["id"])
        assert s["status"] == "ACTIVE", s["fault"]
        return s

    def delete(self, server: JSON) -> None:
        self.member.delete_server(server["id"])
        self.run_tasks()
        assert self.admin.server(server["id"])["status"] == "DELETED"

    def events(self, server: JSON) -> list[tuple[str, str, str | None]]:
        got = self.member.request("GET", f"/v1/servers/{server['id']}/events")
        return [(e["action"], e["outcome"], e["message"]) for e in got["events"]
                if e["action"].startswith(("attach_", "detach_"))]

    def free(self, host: str, product: str) -> list[str]:
        return sorted(d["address"] for d in self.admin.devices(
            [("host", host), ("product_id", product)]).items if d["state"] == "available")


def host_inventory(root: Path, profile: str, spec: list[dict[str, str]], index: int = 0
                   ) -> Inventory:
    build_host(root, profile, index=index)
    specs = DeviceSpecSet(tuple(s for i, entry in enumerate(spec)
                                for s in parse_device_spec(entry, position=i)))
    found = discover(root)
    return Inventory(host=found.host, devices=specs.apply(found.devices))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e-attach")
    image = tmp / "images" / "plain.qcow2"
    image.parent.mkdir()
    image.write_bytes(b"")
    invs = {f"gpu-{i + 1}": host_inventory(tmp / f"gpu-{i + 1}", "gpu-server",
                                           suggested_device_spec("gpu-server"), i)
            for i in range(2)}
    invs[SRIOV] = host_inventory(tmp / SRIOV, "sriov-nic-server", SRIOV_SPEC)
    state = tmp / "state"
    vfs = RecordingVfProgrammer({"ens1f0": 8, "ens1f1": 8, "ens2f0": 8, "ens2f1": 8})
    with api_server(f"sqlite:///{tmp / 'pcipass.db'}", tmp / "server") as api, \
            ApiClient(api.url, api.admin_token) as admin:
        admin.create_aliases(suggested_aliases("gpu-server"))
        admin.create_flavor(name="a100", vcpus=2, ram_mb=2048, disk_gb=1,
                            extra_specs={"pci_passthrough:alias": "a100:1"})
        admin.create_flavor(name="small", vcpus=2, ram_mb=2048, disk_gb=1, extra_specs={})
        admin.create_image(name="plain", source=str(image), properties={})
        admin.create_network(name="net1", physical_network="physnet1", segmentation="vlan",
                             segmentation_id=100)
        member_token = str(admin.create_token("member", project=PROJECT)["token"])
        other_token = str(admin.create_token("member", project="elsewhere")["token"])
        runners: dict[str, TaskRunner] = {}
        clients = []
        try:
            for host, inv in invs.items():
                token = str(admin.create_token("agent", host=host)["token"])
                client = ApiClient(api.url, token)
                clients.append(client)
                client.put_inventory(host, None, inventory_to_json(inv))
                hstate = state / host
                runners[host] = TaskRunner(
                    client=client, host=host, state_dir=hstate,
                    open_driver=lambda d=hstate: open_driver(DriverKind.FAKE, state_dir=d),
                    overlays=disk_overlays(DriverKind.FAKE, hstate),
                    host_cpus=lambda i=inv: host_cpus(i), wait=0.0, rand=lambda: 0.0,
                    programmer=vfs if host == SRIOV else None)
            with ApiClient(api.url, member_token) as member, \
                    ApiClient(api.url, other_token) as other:
                yield World(admin, member, other, runners, state, vfs,
                            sorted(h for h in invs if h != SRIOV))
        finally:
            for r in runners.values():
                r.close()
            for c in clients:
                c.close()
        log = api.log()
        assert "Traceback" not in log, log[-6000:]


A100 = "20f1"


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
    assert [(a, o) for a, o, _m in world.events(s)] == [
        ("attach_device", "started"), ("attach_device", "done"),
        ("detach_device", "started"), ("detach_device", "done")]
    world.delete(s)


def test_a_full_host_refuses_with_409_and_the_server_is_not_moved(world: World) -> None:
    s = world.boot("vm-b", "a100")
    host = s["host"]
    other_host = next(h for h in world.gpu_hosts if h != host)
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
    assert world.events(s)[-1][:2] == ("attach_device", "failed")
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
    action, outcome, message = world.events(s)[-1]
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
    assert world.vfs.state(slot) == FRESH_VF
    world.run_tasks()
    vf = world.vfs.state(slot)
    assert (vf.mac, vf.vlan) == (port["mac"], 100)
    assert f"pci:{port['binding']['address']}" in world.plugged(s)
    assert world.admin.device(SRIOV, port["binding"]["address"])["state"] == "allocated"
    assert world.member.port(port["id"])["status"] == "ACTIVE"

    world.member.detach_interface("vm-e", port["id"])
    world.run_tasks()
    assert world.vfs.state(slot) == FRESH_VF
    assert f"pci:{port['binding']['address']}" not in world.plugged(s)
    assert world.admin.device(SRIOV, port["binding"]["address"])["state"] == "available"
    with pytest.raises(errors.NotFound):
        world.member.port(port["id"])
    (left,) = world.member.server("vm-e")["ports"]
    first_slot = VfSlot(left["binding"]["pf_netdev"], left["binding"]["vf_index"])
    assert world.vfs.state(first_slot).mac == left["mac"]   # the boot's port is untouched
    world.delete(s)
    assert world.vfs.state(first_slot) == FRESH_VF


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
