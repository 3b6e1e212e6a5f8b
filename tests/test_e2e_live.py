"""Live migration end to end: a real control plane, each host's agent task runner with its
own fake hypervisor (a state directory; hosts hand domains over by ``fake:///`` URI, the
one each agent reports) and its own recording VF programmer, on two simulated SR-IOV
servers and two GPU servers; the real client and CLI.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from agentworld import PROJECT, SRIOV_TWO_NETS_SPEC, World, agent_world
from apiserver import assert_error
from cliserver import cli, ok_json, ok_text
from fleet import host_inventory
from pcipass import errors
from pcipass.cli.client import JSON
from pcipass.host.sriov.fake import FRESH_VF
from pcipass.host.sriov.model import VfAttribute, VfSlot
from pcipass.virt.driver import Operation
from pcipass.virt.payload import domain_name
from pcipass.virt.xml import parse_xml, read_hostdevs

SRIOV = ("sriov-1", "sriov-2")
GPU = ("gpu-1", "gpu-2")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e-live")
    hosts = {h: host_inventory(tmp / h, "sriov-nic-server", SRIOV_TWO_NETS_SPEC, i)
             for i, h in enumerate(SRIOV)}
    hosts |= {h: host_inventory(tmp / h, "gpu-server", index=i) for i, h in enumerate(GPU)}
    with agent_world(tmp, hosts, sriov=SRIOV, gpu_flavors={"a100": 1},
                     vlans={"net1": ("physnet1", 100), "net2": ("physnet2", 200)},
                     rounds=80) as world:
        yield world


def by_type(server: JSON) -> dict[str, JSON]:
    return {p["vnic_type"]: p for p in server["ports"]}


def nics(xml: str) -> dict[str, tuple[str | None, str | None]]:
    """MAC → (interface type, macvtap source dev or VF address)."""
    out = {}
    for el in parse_xml(xml).iterfind("devices/interface"):
        mac = el.find("mac")
        assert mac is not None
        where = None
        if el.get("type") == "direct":
            src = el.find("source")
            where = None if src is None else src.get("dev")
        elif el.get("type") == "hostdev":
            wrapped = parse_xml("<domain><devices/></domain>")
            devs = wrapped.find("devices")
            assert devs is not None
            devs.append(el)
            where = str(read_hostdevs(wrapped, interfaces=True)[0].host)
        out[str(mac.get("address"))] = (el.get("type"), where)
    return out


def test_a_server_with_direct_and_macvtap_ports_live_migrates(world: World) -> None:
    s = world.boot("vm-live", "small", {"net_id": "net1", "vnic_type": "direct"},
                   {"net_id": "net1", "vnic_type": "macvtap"})
    src = s["host"]
    dst = next(h for h in SRIOV if h != src)
    name = domain_name(s["id"])
    before = {t: dict(p["binding"]) for t, p in by_type(s).items()}
    assert world.vfs[src].state(VfSlot("ens1f0", before["direct"]["vf_index"])).vlan == 100

    moving = world.admin.live_migrate(s["id"], host=dst)
    assert moving["status"] == "MIGRATING" and moving["host"] == src
    world.run_tasks()

    s = world.admin.server(s["id"])
    assert s["status"] == "ACTIVE" and s["host"] == dst, s["fault"]
    assert s["fault"] is None
    after = {t: p["binding"] for t, p in by_type(s).items()}
    for t in ("direct", "macvtap"):
        assert after[t]["host"] == dst, after
        assert world.device(dst, after[t]["address"])["state"] == "allocated"
        assert world.device(dst, after[t]["address"])["owner"] == s["id"]
        # the source's VF is free again, and put back as it was
        old = world.device(src, before[t]["address"])
        assert (old["state"], old["owner"]) == ("available", None)
        assert world.vfs[src].state(VfSlot("ens1f0", before[t]["vf_index"])) == FRESH_VF
        assert world.vfs[dst].state(VfSlot("ens1f0", after[t]["vf_index"])).mac == \
            by_type(s)[t]["mac"]
    assert {d["address"] for d in s["devices"]} == {after[t]["address"] for t in after}

    # the guest runs on the destination: the macvtap on its VF netdev, the VF plugged back
    assert not world.driver(src).exists(name)
    assert world.driver(dst).is_active(name)
    got = nics(world.driver(dst).get_xml(name))
    assert got[by_type(s)["macvtap"]["mac"]] == ("direct", after["macvtap"]["vf_netdev"])
    assert got[by_type(s)["direct"]["mac"]] == ("hostdev", after["direct"]["address"])
    src_ops = [str(c.operation) for c in world.driver(src).calls if c.error is None]
    assert src_ops[-2:] == ["detach_device", "migrate"]

    # every step in the event log; the unplug warned about the direct NIC
    ev = world.events(s)
    steps = [(a, o) for a, o, _m in ev if a.startswith("live_")]
    for step in ("live_prepare", "live_migrate", "live_finish"):
        assert (step, "done") in steps, steps
    warned = [m for a, o, m in ev if a == "live_migrate" and o == "started" and m
              and "loses" in m]
    assert warned and by_type(s)["direct"]["mac"] in warned[0], ev
    assert steps[-1] == ("live_migrate", "done")

    world.delete(s)
    for t in ("direct", "macvtap"):
        assert world.device(dst, after[t]["address"])["state"] == "available"


def test_a_failed_migrate_keeps_the_server_on_its_source(world: World) -> None:
    s = world.boot("vm-fail", "small", {"net_id": "net1", "vnic_type": "direct"})
    src = s["host"]
    dst = next(h for h in SRIOV if h != src)
    name = domain_name(s["id"])
    (port,) = s["ports"]
    world.driver(src).inject_failure(Operation.MIGRATE, "p2p migration refused by the peer")
    world.admin.live_migrate(s["id"], host=dst)
    world.run_tasks()

    s = world.admin.server(s["id"])
    assert s["status"] == "ACTIVE" and s["host"] == src
    assert s["ports"][0]["binding"] == port["binding"]
    assert world.driver(src).is_active(name) and not world.driver(dst).exists(name)
    assert nics(world.driver(src).get_xml(name))[port["mac"]] == (
        "hostdev", port["binding"]["address"])
    # the destination gave its VF back; nothing of the server stays there
    assert world.vfs[dst].ops("program") and world.vfs[dst].ops("restore")
    assert all(world.vfs[dst].state(VfSlot("ens1f0", i)) == FRESH_VF for i in range(8))
    assert not any(d["owner"] == s["id"] for d in world.admin.devices(
        [("host", dst)]).items)
    failed = [m for a, o, m in world.events(s) if a == "live_migrate" and o == "failed"]
    assert failed and "p2p migration refused" in str(failed[0])
    moves = world.admin.request("GET", f"/v1/servers/{s['id']}/moves")
    assert moves["moves"][-1]["status"] == "failed", moves
    world.delete(s)


def test_a_server_with_a_gpu_is_refused_naming_the_gpu(world: World) -> None:
    s = world.boot("vm-gpu", "a100")
    (gpu,) = [d["address"] for d in s["devices"]]
    with httpx.Client(base_url=world.url,
                      headers={"Authorization": f"Bearer {world.admin_token}"}) as http:
        reply = http.post(f"/v1/servers/{s['id']}/live-migrate", json={})
        assert_error(reply, 409, "not_live_migratable")
        assert gpu in reply.json()["message"] and "live_migratable" in reply.json()["message"]
    # the CLI says the same; a tenant may not live-migrate at all
    env = {"PCIPASS_URL": world.url, "PCIPASS_TOKEN": world.admin_token}
    refused = cli("server", "live-migrate", s["id"], env=env)
    assert refused.exit_code != 0 and gpu in refused.output
    member = cli("server", "live-migrate", s["id"], env=env_for_member(world))
    assert member.exit_code != 0 and "forbidden" in member.output.lower()
    assert world.admin.server(s["id"])["status"] == "ACTIVE"
    world.delete(s)


def env_for_member(world: World) -> dict[str, str | None]:
    token = str(world.admin.create_token("member", project=PROJECT)["token"])
    return {"PCIPASS_URL": world.url, "PCIPASS_TOKEN": token}


def test_drain_live_migrates_what_can_move_and_lists_the_rest(world: World) -> None:
    movable = world.boot("vm-m", "small", {"net_id": "net1", "vnic_type": "macvtap"})
    src = movable["host"]
    pinned = world.boot("vm-p", "small", {"net_id": "net2", "vnic_type": "direct-physical"})
    if pinned["host"] != src:   # both on one host, so the drain sees both
        world.delete(pinned)
        dst0 = next(h for h in SRIOV if h != src)
        world.admin.reserve_host(dst0, True, reason="pin the next boot")
        pinned = world.boot("vm-p", "small",
                            {"net_id": "net2", "vnic_type": "direct-physical"})
        world.admin.reserve_host(dst0, False)
    assert pinned["host"] == src
    pf = pinned["ports"][0]["binding"]["address"]
    dst = next(h for h in SRIOV if h != src)
    world.admin.reserve_host(src, True, reason="maintenance")

    env = {"PCIPASS_URL": world.url, "PCIPASS_TOKEN": world.admin_token}
    out = ok_json(cli("host", "drain", src, "--live-migrate", "--json", env=env))
    assert [m["name"] for m in out["migrating"]] == ["vm-m"]
    (stays,) = out["not_moved"]
    assert stays["server"]["name"] == "vm-p"
    assert stays["blockers"] and stays["blockers"][0].startswith(pf)
    world.run_tasks()

    moved = world.admin.server(movable["id"])
    assert moved["status"] == "ACTIVE" and moved["host"] == dst, moved["fault"]
    listing = world.admin.host_drain(src)
    assert [e["server"]["name"] for e in listing["servers"]] == ["vm-p"]
    text = ok_text(cli("host", "drain", src, "--live-migrate", env=env))
    assert "0 servers live-migrating, 1 staying" in text and pf in text
    world.admin.reserve_host(src, False)
    world.delete(moved)
    world.delete(pinned)


def test_a_failed_prepare_frees_the_destination_and_keeps_the_server(world: World) -> None:
    s = world.boot("vm-prep", "small", {"net_id": "net1", "vnic_type": "macvtap"})
    src = s["host"]
    dst = next(h for h in SRIOV if h != src)
    name = domain_name(s["id"])
    world.vfs[dst].fail(VfAttribute.MAC, pf="ens1f0", times=1)
    try:
        moving = world.admin.live_migrate(s["id"], host=dst)
        claimed = [d for d in world.admin.devices([("host", dst)]).items
                   if d["owner"] == s["id"]]
        assert moving["status"] == "MIGRATING" and [d["state"] for d in claimed] == ["claimed"]
        world.run_tasks()
    finally:
        world.vfs[dst].clear_failures()
    s = world.admin.server(s["id"])
    assert s["status"] == "ACTIVE" and s["host"] == src
    assert world.driver(src).is_active(name) and not world.driver(dst).exists(name)
    assert not any(d["owner"] == s["id"] for d in world.admin.devices([("host", dst)]).items)
    ev = world.events(s)
    assert ("live_prepare", "failed") in [(a, o) for a, o, _m in ev]
    (why,) = [m for a, o, m in ev if a == "live_migrate" and o == "failed"]
    assert why is not None and f"keeps running on host {src}" in why
    # and it can still move
    world.admin.live_migrate(s["id"], host=dst)
    world.run_tasks()
    assert world.admin.server(s["id"])["host"] == dst
    world.delete(s)


def test_a_live_migration_that_fits_nowhere_is_logged_as_one(world: World) -> None:
    """Regression: the refusal's event said "migrate", as if it were a cold migration."""
    s = world.boot("vm-nowhere", "small", {"net_id": "net1", "vnic_type": "direct"})
    gpu_host = GPU[0]   # no VF on physnet1 there
    with pytest.raises(errors.Conflict) as caught:
        world.admin.live_migrate(s["id"], host=gpu_host)
    assert caught.value.code == "no_valid_host"
    assert caught.value.message.startswith("cannot live-migrate server vm-nowhere")
    refused = [(a, o) for a, o, _m in world.events(s) if o == "failed"]
    assert refused == [("live_migrate", "failed")]
    assert world.admin.server(s["id"])["status"] == "ACTIVE"
    world.delete(s)


def test_a_server_deleted_after_the_destination_prepared_gives_back_both_hosts_vfs(
        world: World) -> None:
    s = world.boot("vm-live-del", "small", {"net_id": "net1", "vnic_type": "direct"})
    src = s["host"]
    dst = next(h for h in SRIOV if h != src)
    (port,) = s["ports"]
    sslot = VfSlot("ens1f0", port["binding"]["vf_index"])
    world.admin.live_migrate(s["id"], host=dst)
    world.run_tasks(skip=(src,))                 # the destination prepares; the source waits
    assert [m["status"] for m in world.admin.server_moves(s["id"])] == ["moving"]
    prepared = [c.slot for c in world.vfs[dst].ops("program")]
    assert prepared and world.vfs[dst].state(prepared[-1]).vlan == 100
    assert world.member.delete_server(s["id"])["status"] == "DELETING"
    world.run_tasks()
    assert world.admin.server(s["id"])["status"] == "DELETED"
    assert world.vfs[dst].state(prepared[-1]) == FRESH_VF       # the prepared VF, back
    assert world.vfs[src].state(sslot) == FRESH_VF              # and the source's
    assert not world.driver(src).exists(domain_name(s["id"]))
    assert not world.driver(dst).exists(domain_name(s["id"]))
    assert world.owned(s) == {}
    steps = [(a, o) for a, o, _m in world.events(s)]
    assert ("live_migrate", "failed") in steps and steps[-1] == ("delete", "done")
    assert ("live_migrate", "done") not in steps            # the queued migrate never ran
