"""SR-IOV ports end to end: a real control plane, the agent's task runner with the fake
hypervisor and the recording VF programmer, on a simulated sriov-nic-server.

The host's device spec puts the VFs of ens1f0 (E810, 3b:00.0) on physnet1 and the ConnectX-6
port ens2f1 (af:00.1) with its VFs on physnet2, so a boot that takes that PF whole
(``direct-physical``) leaves physnet2 without a free VF.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apiserver import api_server
from pcipass.agent.tasks import TaskRunner
from pcipass.cli.agent import disk_overlays, host_cpus
from pcipass.cli.client import JSON, ApiClient
from pcipass.host.discovery import discover
from pcipass.host.profiles import build_host
from pcipass.host.sriov.fake import FRESH_VF, RecordingVfProgrammer
from pcipass.host.sriov.model import VfSlot
from pcipass.pci.devspec import DeviceSpecSet, parse_device_spec
from pcipass.pci.inventory import Inventory, inventory_to_json
from pcipass.virt.driver import DriverKind, open_driver

HOST = "sriov-1"
PROJECT = "tenant"
SPEC = [
    {"vendor_id": "8086", "product_id": "1889", "address": "0000:3b:00.0",
     "physical_network": "physnet1"},
    {"devname": "ens2f1", "physical_network": "physnet2"},
]
PF2 = "0000:af:00.1"


@dataclass
class World:
    admin: ApiClient
    member: ApiClient
    runner: TaskRunner
    vfs: RecordingVfProgrammer

    def run_tasks(self) -> None:
        """Play the host's agent until it has nothing left to do."""
        for _ in range(50):
            if not self.runner.run_once():
                return
        raise AssertionError("the task runner never ran out of work")

    def device(self, address: str) -> JSON:
        return self.admin.device(HOST, address)

    def boot(self, name: str, *nics: dict[str, str]) -> JSON:
        return self.member.create_server(name=name, flavor="small", image="plain", nics=nics)

    def server(self, ref: str) -> JSON:
        return self.member.server(ref)

    def delete(self, server: JSON) -> None:
        self.member.delete_server(server["id"])
        self.run_tasks()
        assert self.admin.server(server["id"])["status"] == "DELETED"


def sriov_inventory(root: Path) -> Inventory:
    build_host(root, "sriov-nic-server")
    specs = DeviceSpecSet(tuple(s for i, entry in enumerate(SPEC)
                                for s in parse_device_spec(entry, position=i)))
    found = discover(root)
    return Inventory(host=found.host, devices=specs.apply(found.devices))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e-ports")
    image = tmp / "images" / "plain.qcow2"
    image.parent.mkdir()
    image.write_bytes(b"")
    inv = sriov_inventory(tmp / "host")
    with api_server(f"sqlite:///{tmp / 'pcipass.db'}", tmp / "server") as api, \
            ApiClient(api.url, api.admin_token) as admin:
        agent_token = str(admin.create_token("agent", host=HOST)["token"])
        member_token = str(admin.create_token("member", project=PROJECT)["token"])
        admin.create_flavor(name="small", vcpus=2, ram_mb=2048, disk_gb=1, extra_specs={})
        admin.create_image(name="plain", source=str(image), properties={})
        admin.create_network(name="net1", physical_network="physnet1", segmentation="vlan",
                             segmentation_id=100)
        admin.create_network(name="net2", physical_network="physnet2", segmentation="vlan",
                             segmentation_id=200)
        state = tmp / "state"
        vfs = RecordingVfProgrammer({"ens1f0": 8, "ens1f1": 8, "ens2f0": 8, "ens2f1": 8})
        with ApiClient(api.url, agent_token) as agent, \
                ApiClient(api.url, member_token) as member:
            agent.put_inventory(HOST, None, inventory_to_json(inv))
            runner = TaskRunner(
                client=agent, host=HOST, state_dir=state,
                open_driver=lambda: open_driver(DriverKind.FAKE, state_dir=state),
                overlays=disk_overlays(DriverKind.FAKE, state), host_cpus=lambda: host_cpus(inv),
                wait=0.0, rand=lambda: 0.0, programmer=vfs)
            try:
                yield World(admin, member, runner, vfs)
            finally:
                runner.close()
        log = api.log()
        assert "Traceback" not in log, log[-6000:]


def ports_by_type(server: JSON) -> dict[str, JSON]:
    return {p["vnic_type"]: p for p in server["ports"]}


def test_ports_bind_vfs_and_pfs_on_their_physnets_and_go_with_their_servers(
        world: World) -> None:
    kept = world.member.create_port(network="net1", name="kept", vnic_type="macvtap")

    # --- direct and macvtap (an existing port) on physnet1 ------------------------------
    a = world.boot("vm-a", {"net_id": "net1", "vnic_type": "direct"}, {"port_id": "kept"})
    assert a["status"] == "BUILDING", a["fault"]
    world.run_tasks()
    a = world.server("vm-a")
    assert a["status"] == "ACTIVE", a["fault"]
    ports = ports_by_type(a)
    assert set(ports) == {"direct", "macvtap"}
    assert ports["macvtap"]["id"] == kept["id"] and not ports["macvtap"]["auto_delete"]
    assert ports["direct"]["auto_delete"]
    for port in ports.values():
        b = port["binding"]
        assert port["status"] == "ACTIVE" and port["server_id"] == a["id"]
        assert b["host"] == HOST and b["pf_netdev"] == "ens1f0"
        dev = world.device(b["address"])
        assert dev["dev_type"] == "type-VF" and dev["parent_addr"] == "0000:3b:00.0"
        assert dev["tags"]["physical_network"] == "physnet1"
        assert (dev["state"], dev["owner"]) == ("allocated", a["id"])
        assert b["vf_index"] == dev["vf_index"]
        assert b["vf_netdev"] == dev["netdevs"][0]["name"]
        # the agent programmed the VF with the port's MAC and the network's VLAN
        vf = world.vfs.state(VfSlot("ens1f0", b["vf_index"]))
        assert (vf.mac, vf.vlan, vf.spoofchk, vf.trust) == (port["mac"], 100, True, False)

    # --- direct-physical takes ens2f1 whole: physnet2 has no free VF left -----------------
    b_srv = world.boot("vm-b", {"net_id": "net2", "vnic_type": "direct-physical"})
    world.run_tasks()
    b_srv = world.server("vm-b")
    assert b_srv["status"] == "ACTIVE", b_srv["fault"]
    (pf_port,) = b_srv["ports"]
    assert pf_port["binding"] == {"host": HOST, "address": PF2, "pf_netdev": "ens2f1",
                                  "vf_index": None, "vf_netdev": None}
    assert world.device(PF2)["state"] == "allocated"

    c = world.boot("vm-c", {"net_id": "net2", "vnic_type": "direct"})
    assert c["status"] == "ERROR" and c["host"] is None
    assert "no free VF on physnet2" in c["fault"]["message"], c["fault"]
    world.delete(c)
    world.delete(b_srv)
    assert world.device(PF2)["state"] == "available"
    assert world.member.ports([("network", "net2")]).items == []

    # --- with the PF back, physnet2's VFs serve a direct port ---------------------------------
    d = world.boot("vm-d", {"net_id": "net2", "vnic_type": "direct"})
    world.run_tasks()
    d = world.server("vm-d")
    assert d["status"] == "ACTIVE", d["fault"]
    (vf_port,) = d["ports"]
    bound = vf_port["binding"]
    assert bound["pf_netdev"] == "ens2f1" and bound["address"].startswith("0000:af:")
    dev = world.device(bound["address"])
    assert (dev["dev_type"], dev["parent_addr"], dev["tags"]["physical_network"]) == (
        "type-VF", PF2, "physnet2")
    assert world.vfs.state(VfSlot("ens2f1", bound["vf_index"])).vlan == 200

    # --- deleting frees the VFs, deletes the auto port, detaches the explicit one ------------
    world.delete(a)
    for port in ports.values():
        b = port["binding"]
        assert world.device(b["address"])["state"] == "available"
        assert world.vfs.state(VfSlot("ens1f0", b["vf_index"])) == FRESH_VF
    left = world.member.ports([("network", "net1")]).items
    assert [p["id"] for p in left] == [kept["id"]]
    assert (left[0]["server_id"], left[0]["binding"], left[0]["status"]) == (None, None, "DOWN")
    world.delete(d)
    world.member.delete_port("kept")
    assert world.member.ports().items == []
