"""SR-IOV ports end to end: a real control plane, the agent's task runner with the fake
hypervisor and the recording VF programmer, on a simulated sriov-nic-server.

The host's device spec puts the VFs of ens1f0 (E810, 3b:00.0) on physnet1 and the ConnectX-6
port ens2f1 (af:00.1) with its VFs on physnet2, so a boot that takes that PF whole
(``direct-physical``) leaves physnet2 without a free VF.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentworld import SRIOV_TWO_NETS_SPEC, World, agent_world
from fleet import host_inventory
from pcipass.cli.client import JSON
from pcipass.host.sriov.fake import FRESH_VF
from pcipass.host.sriov.model import VfSlot

HOST = "sriov-1"
PF2 = "0000:af:00.1"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e-ports")
    hosts = {HOST: host_inventory(tmp / HOST, "sriov-nic-server", SRIOV_TWO_NETS_SPEC)}
    with agent_world(tmp, hosts, sriov=[HOST],
                     vlans={"net1": ("physnet1", 100), "net2": ("physnet2", 200)}) as world:
        yield world


def create(world: World, name: str, *nics: dict[str, str]) -> JSON:
    """The member's new server as the API answers, before the agent has run."""
    return world.member.create_server(name=name, flavor="small", image="plain", nics=nics)


def ports_by_type(server: JSON) -> dict[str, JSON]:
    return {p["vnic_type"]: p for p in server["ports"]}


def test_ports_bind_vfs_and_pfs_on_their_physnets_and_go_with_their_servers(
        world: World) -> None:
    kept = world.member.create_port(network="net1", name="kept", vnic_type="macvtap")

    # --- direct and macvtap (an existing port) on physnet1 ------------------------------
    a = create(world, "vm-a", {"net_id": "net1", "vnic_type": "direct"}, {"port_id": "kept"})
    assert a["status"] == "BUILDING", a["fault"]
    world.run_tasks()
    a = world.member.server("vm-a")
    assert a["status"] == "ACTIVE", a["fault"]
    ports = ports_by_type(a)
    assert set(ports) == {"direct", "macvtap"}
    assert ports["macvtap"]["id"] == kept["id"] and not ports["macvtap"]["auto_delete"]
    assert ports["direct"]["auto_delete"]
    for port in ports.values():
        b = port["binding"]
        assert port["status"] == "ACTIVE" and port["server_id"] == a["id"]
        assert b["host"] == HOST and b["pf_netdev"] == "ens1f0"
        dev = world.device(HOST, b["address"])
        assert dev["dev_type"] == "type-VF" and dev["parent_addr"] == "0000:3b:00.0"
        assert dev["tags"]["physical_network"] == "physnet1"
        assert (dev["state"], dev["owner"]) == ("allocated", a["id"])
        assert b["vf_index"] == dev["vf_index"]
        assert b["vf_netdev"] == dev["netdevs"][0]["name"]
        # the agent programmed the VF with the port's MAC and the network's VLAN
        vf = world.vfs[HOST].state(VfSlot("ens1f0", b["vf_index"]))
        assert (vf.mac, vf.vlan, vf.spoofchk, vf.trust) == (port["mac"], 100, True, False)

    # --- direct-physical takes ens2f1 whole: physnet2 has no free VF left -----------------
    b_srv = create(world, "vm-b", {"net_id": "net2", "vnic_type": "direct-physical"})
    world.run_tasks()
    b_srv = world.member.server("vm-b")
    assert b_srv["status"] == "ACTIVE", b_srv["fault"]
    (pf_port,) = b_srv["ports"]
    assert pf_port["binding"] == {"host": HOST, "address": PF2, "pf_netdev": "ens2f1",
                                  "vf_index": None, "vf_netdev": None}
    assert world.device(HOST, PF2)["state"] == "allocated"

    c = create(world, "vm-c", {"net_id": "net2", "vnic_type": "direct"})
    assert c["status"] == "ERROR" and c["host"] is None
    assert "no free VF on physnet2" in c["fault"]["message"], c["fault"]
    world.delete(c)
    world.delete(b_srv)
    assert world.device(HOST, PF2)["state"] == "available"
    assert world.member.ports([("network", "net2")]).items == []

    # --- with the PF back, physnet2's VFs serve a direct port ---------------------------------
    d = create(world, "vm-d", {"net_id": "net2", "vnic_type": "direct"})
    world.run_tasks()
    d = world.member.server("vm-d")
    assert d["status"] == "ACTIVE", d["fault"]
    (vf_port,) = d["ports"]
    bound = vf_port["binding"]
    assert bound["pf_netdev"] == "ens2f1" and bound["address"].startswith("0000:af:")
    dev = world.device(HOST, bound["address"])
    assert (dev["dev_type"], dev["parent_addr"], dev["tags"]["physical_network"]) == (
        "type-VF", PF2, "physnet2")
    assert world.vfs[HOST].state(VfSlot("ens2f1", bound["vf_index"])).vlan == 200

    # --- deleting frees the VFs, deletes the auto port, detaches the explicit one ------------
    world.delete(a)
    for port in ports.values():
        b = port["binding"]
        assert world.device(HOST, b["address"])["state"] == "available"
        assert world.vfs[HOST].state(VfSlot("ens1f0", b["vf_index"])) == FRESH_VF
    left = world.member.ports([("network", "net1")]).items
    assert [p["id"] for p in left] == [kept["id"]]
    assert (left[0]["server_id"], left[0]["binding"], left[0]["status"]) == (None, None, "DOWN")
    world.delete(d)
    world.member.delete_port("kept")
    assert world.member.ports().items == []
