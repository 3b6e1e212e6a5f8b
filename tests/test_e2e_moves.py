"""Resize and cold migration end to end: a real control plane, the agents' task runners with
the fake hypervisor and a recording VF programmer per host, on two simulated GPU servers and
two SR-IOV servers; the real client and CLI.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from agentworld import PROJECT, SRIOV_SPEC, World, agent_world
from cliserver import cli
from fleet import host_inventory
from pcipass import errors
from pcipass.cli.client import JSON
from pcipass.host.sriov.fake import FRESH_VF
from pcipass.host.sriov.model import VfSlot
from pcipass.services.move_disks import MOVE_DISKS_DIR
from pcipass.virt.driver import Operation
from pcipass.virt.payload import domain_name, overlay_path

GPUS = ("gpu-1", "gpu-2")
NICS = ("sriov-1", "sriov-2")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e-moves")
    hosts = {h: host_inventory(tmp / h, "gpu-server", index=i) for i, h in enumerate(GPUS)}
    hosts |= {h: host_inventory(tmp / h, "sriov-nic-server", SRIOV_SPEC, i)
              for i, h in enumerate(NICS)}
    with agent_world(tmp, hosts, sriov=NICS,
                     gpu_flavors={f"a100x{n}": n for n in (1, 2, 4)},
                     vlans={"net1": ("physnet1", 100)}) as world:
        yield world


def hostdevs(world: World, host: str, server: JSON) -> set[str]:
    return {k for k in world.plugged(server, host) if k.startswith("pci:")}


# --- resize -----------------------------------------------------------------------------------

def test_resize_on_the_same_host_then_confirm_frees_the_old_device(world: World) -> None:
    s = world.boot("vm-same", "a100x1")
    host = s["host"]
    (old,) = [d["address"] for d in s["devices"]]
    got = world.member.resize_server("vm-same", flavor="a100x2")
    assert (got["status"], got["host"]) == ("RESIZE", host)
    assert len(got["devices"]) == 3            # old and new, both the server's
    world.run_tasks()
    s2 = world.member.server("vm-same")
    assert (s2["status"], s2["host"], s2["flavor"]) == ("VERIFY_RESIZE", host, "a100x2")
    new = {d["address"] for d in s2["devices"]} - {old}
    assert hostdevs(world, host, s) == {f"pci:{a}" for a in new}   # the new domain runs
    assert world.domain(host, s) == (True, True)
    done = world.member.confirm_resize("vm-same")
    assert done["status"] == "ACTIVE"
    world.run_tasks()
    after = world.member.server("vm-same")
    assert {d["address"]: d["state"] for d in after["devices"]} == {a: "allocated" for a in new}
    assert world.admin.device(host, old)["state"] == "available"
    assert world.domain(host, s) == (True, True)      # confirm kept the new domain
    assert [m["status"] for m in world.member.server_moves("vm-same")] == ["done"]
    assert [e[:2] for e in world.events(s, "resize", "confirm")] == [
        ("resize", "started"), ("resize", "started"), ("resize", "done"),
        ("confirm", "started"), ("confirm", "done")]
    world.delete(s)


def test_resize_to_another_host_then_revert_restarts_on_the_source(world: World) -> None:
    s = world.boot("vm-far", "a100x1")
    source = s["host"]
    (old,) = [d["address"] for d in s["devices"]]
    world.member.resize_server("vm-far", flavor="a100x4")   # 3 left here: elsewhere
    world.run_tasks()
    moved = world.member.server("vm-far")
    dest = moved["host"]
    assert dest != source and moved["status"] == "VERIFY_RESIZE"
    assert world.domain(source, s) == (True, False)        # kept, stopped
    assert world.domain(dest, s) == (True, True)
    assert len(hostdevs(world, dest, s)) == 4
    back = world.member.revert_resize("vm-far")
    assert back["status"] == "RESIZE"
    world.run_tasks()
    after = world.member.server("vm-far")
    assert (after["status"], after["host"], after["flavor"]) == ("ACTIVE", source, "a100x1")
    assert [(d["address"], d["state"]) for d in after["devices"]] == [(old, "allocated")]
    assert len(world.free(dest)) == 4
    assert world.domain(dest, s) == (False, False)
    assert world.domain(source, s) == (True, True)
    assert hostdevs(world, source, s) == {f"pci:{old}"}
    assert [m["status"] for m in world.member.server_moves("vm-far")] == ["reverted"]
    world.delete(s)


def test_resize_over_quota_and_other_projects_are_refused(world: World) -> None:
    s = world.boot("vm-quota", "a100x1")
    world.admin.set_quota(PROJECT, "a100", 1)
    try:
        with pytest.raises(errors.QuotaExceeded):
            world.member.resize_server("vm-quota", flavor="a100x2")
    finally:
        world.admin.request("DELETE", f"/v1/quotas/{PROJECT}/a100")
    with pytest.raises(errors.NotFound):
        world.other.resize_server("vm-quota", flavor="a100x2")
    with pytest.raises(errors.Forbidden):
        world.member.migrate_server("vm-quota")
    assert world.member.server("vm-quota")["status"] == "ACTIVE"
    world.delete(s)


# --- cold migration ---------------------------------------------------------------------------

def test_cli_migrates_to_a_named_host_and_confirms(world: World) -> None:
    s = world.boot("vm-cli", "a100x1")
    source = s["host"]
    dest = next(h for h in GPUS if h != source)
    env = {"PCIPASS_URL": world.url, "PCIPASS_TOKEN": world.admin_token}
    result = cli("server", "migrate", "vm-cli", "--host", dest, "--json", env=env)
    assert result.exit_code == 0, result.output
    assert '"MIGRATING"' in result.output
    world.run_tasks()
    result = cli("server", "resize-confirm", "vm-cli", env=env)
    assert result.exit_code == 0, result.output
    world.run_tasks()
    after = world.member.server("vm-cli")
    assert (after["status"], after["host"]) == ("ACTIVE", dest)
    assert world.domain(source, s) == (False, False)
    result = cli("server", "moves", "vm-cli", env={**env, "PCIPASS_TOKEN": world.member_token})
    assert result.exit_code == 0 and "migrate" in result.output and "done" in result.output
    member_env = {**env, "PCIPASS_TOKEN": world.member_token}
    refused = cli("server", "migrate", "vm-cli", env=member_env)
    assert refused.exit_code != 0 and "admin" in refused.output
    world.delete(s)


def test_cli_waits_for_a_migration_and_exits_1_when_it_failed(world: World) -> None:
    s = world.boot("vm-wait", "a100x1")
    source = s["host"]
    dest = next(h for h in GPUS if h != source)
    env = {"PCIPASS_URL": world.url, "PCIPASS_TOKEN": world.admin_token}
    with world.agents_running():
        moved = cli("server", "migrate", "vm-wait", "--host", dest, "--wait",
                    "--timeout", "60", env=env)
    assert moved.exit_code == 0, moved.output
    assert f"server vm-wait is VERIFY_RESIZE on {dest}" in moved.stdout
    world.member.revert_resize("vm-wait")
    world.run_tasks()
    assert world.member.server("vm-wait")["host"] == source
    world.driver(dest).inject_failure(Operation.START, "no IOMMU on this bus",
                                      target=domain_name(str(s["id"])))
    try:
        with world.agents_running():
            failed = cli("server", "migrate", "vm-wait", "--host", dest, "--wait",
                         "--timeout", "60", env=env)
    finally:
        world.driver(dest).clear_failures()
    assert failed.exit_code == 1, failed.output
    assert f"could not be moved, it stays on {source}" in failed.stderr
    assert "no IOMMU on this bus" in failed.stderr
    world.delete(s)


def test_migrate_without_a_host_and_auto_confirm(world: World) -> None:
    s = world.boot("vm-auto", "a100x1")
    got = world.admin.migrate_server("vm-auto", auto_confirm=True)
    assert got["status"] == "MIGRATING"
    world.run_tasks()
    after = world.member.server("vm-auto")
    assert after["status"] == "ACTIVE" and after["host"] != s["host"]
    assert [d["address"] for d in after["devices"]] != [] and \
        all(d["state"] == "allocated" for d in after["devices"])
    assert world.domain(s["host"], s) == (False, False)
    assert [m["status"] for m in world.admin.server_moves("vm-auto")] == ["done"]
    world.delete(s)


def test_a_destination_spawn_failure_leaves_the_server_on_its_source(world: World) -> None:
    s = world.boot("vm-fail", "a100x1")
    source = s["host"]
    dest = next(h for h in GPUS if h != source)
    world.driver(dest).inject_failure(Operation.START, "no IOMMU on this bus",
                                      target=domain_name(str(s["id"])))
    try:
        world.admin.migrate_server("vm-fail", host=dest)
        world.run_tasks()
    finally:
        world.driver(dest).clear_failures()
    after = world.member.server("vm-fail")
    assert (after["status"], after["host"]) == ("ACTIVE", source)
    assert after["devices"] == s["devices"]
    assert "no IOMMU on this bus" in (after["fault"] or {}).get("message", "")
    assert world.domain(source, s) == (True, True) and world.domain(dest, s) == (False, False)
    assert len(world.free(dest)) == 4
    assert ("migrate", "failed") in [e[:2] for e in world.events(s)]
    assert [m["status"] for m in world.admin.server_moves("vm-fail")] == ["failed"]
    world.delete(s)


def test_an_agent_that_dies_mid_migration_resumes_and_nothing_is_owned_twice(
        world: World) -> None:
    s = world.boot("vm-dies", "a100x1")
    source = s["host"]
    world.admin.migrate_server("vm-dies")
    # The source's agent takes the task and dies before running it.
    agent = world.runners[source].client
    (task,) = [t for t in agent.poll_tasks(source, 0.0) if t["kind"] == "migrate_out"]
    agent.start_task(str(task["id"]))
    world.check_ownership()
    held = world.owned(s)
    assert len(held) == 2 and len({h for h, _a in held}) == 2   # one per side, each once
    with pytest.raises(errors.Conflict) as err:
        world.admin.revert_resize("vm-dies")
    assert err.value.code == "move_busy"
    # A new agent on the source resumes the running task; the destination's agent is down.
    world.run_tasks(skip=tuple(h for h in GPUS if h != source))
    assert world.admin.server("vm-dies")["status"] == "MIGRATING"
    assert world.domain(source, s) == (True, False)
    # With the destination's spawn still queued, the move can be reverted.
    back = world.admin.revert_resize("vm-dies")
    assert back["status"] == "MIGRATING"
    world.run_tasks()
    after = world.admin.server("vm-dies")
    assert (after["status"], after["host"]) == ("ACTIVE", source)
    assert world.domain(source, s) == (True, True)
    assert set(world.owned(s)) == {(h, a) for h, a in held if h == source}
    world.delete(s)


# --- ports ------------------------------------------------------------------------------------

def test_a_cold_migration_moves_the_port_vfs_and_the_switch_follows(world: World) -> None:
    s = world.boot("vm-nic", "small", {"net_id": "net1", "vnic_type": "direct"})
    source = s["host"]
    dest = next(h for h in NICS if h != source)
    (port,) = s["ports"]
    b = port["binding"]
    slot = VfSlot(b["pf_netdev"], b["vf_index"])
    assert world.vfs[source].state(slot).vlan == 100
    world.admin.migrate_server("vm-nic", host=dest)
    world.run_tasks()
    moved = world.member.server("vm-nic")
    (moved_port,) = moved["ports"]
    nb = moved_port["binding"]
    assert (moved["status"], nb["host"]) == ("VERIFY_RESIZE", dest)
    assert world.vfs[source].state(slot) == FRESH_VF            # restored on the source
    new_slot = VfSlot(nb["pf_netdev"], nb["vf_index"])
    vf = world.vfs[dest].state(new_slot)
    assert (vf.vlan, vf.mac) == (100, port["mac"])              # programmed there
    world.admin.confirm_resize("vm-nic")
    world.run_tasks()
    assert world.vfs[source].state(slot) == FRESH_VF
    assert world.vfs[dest].state(new_slot).vlan == 100
    world.delete(s)
    assert world.vfs[dest].state(new_slot) == FRESH_VF


def migrated_with_a_port(world: World, name: str) -> tuple[JSON, str, VfSlot, str, VfSlot]:
    """A server with a direct port, cold-migrated and waiting in VERIFY_RESIZE: the server
    as booted, and each host with the port's VF there (source, then destination)."""
    s = world.boot(name, "small", {"net_id": "net1", "vnic_type": "direct"})
    (port,) = s["ports"]
    slot = VfSlot(port["binding"]["pf_netdev"], port["binding"]["vf_index"])
    world.admin.migrate_server(name)
    world.run_tasks()
    moved = world.member.server(name)
    assert moved["status"] == "VERIFY_RESIZE"
    nb = moved["ports"][0]["binding"]
    return s, s["host"], slot, moved["host"], VfSlot(nb["pf_netdev"], nb["vf_index"])


def test_a_reverted_migration_reprograms_the_source_vf(world: World) -> None:
    s, source, slot, dest, dslot = migrated_with_a_port(world, "vm-nic2")
    (port,) = s["ports"]
    world.admin.revert_resize("vm-nic2")
    world.run_tasks()
    back = world.member.server("vm-nic2")
    assert back["host"] == source and back["ports"][0]["binding"] == port["binding"]
    assert world.vfs[source].state(slot).vlan == 100
    assert world.vfs[dest].state(dslot) == FRESH_VF
    world.delete(s)
    assert world.vfs[source].state(slot) == FRESH_VF


# --- deleting mid-move ------------------------------------------------------------------------

def test_a_server_deleted_in_verify_resize_is_destroyed_on_both_hosts(world: World) -> None:
    s = world.boot("vm-del", "a100x1")
    source = s["host"]
    dest = next(h for h in GPUS if h != source)
    free_before = {h: world.free(h) for h in GPUS}
    world.admin.migrate_server("vm-del", host=dest)
    world.run_tasks()
    assert world.member.server("vm-del")["status"] == "VERIFY_RESIZE"
    assert world.domain(source, s) == (True, False) and world.domain(dest, s) == (True, True)
    gone = world.member.delete_server("vm-del")
    assert gone["status"] == "DELETING"
    world.run_tasks()
    assert world.admin.server(s["id"])["status"] == "DELETED"
    assert world.domain(source, s) == (False, False) and world.domain(dest, s) == (False, False)
    assert world.owned(s) == {}
    (held,) = [d["address"] for d in s["devices"]]
    assert world.free(source) == sorted([*free_before[source], held])   # both sides back
    assert world.free(dest) == free_before[dest]
    (move,) = world.admin.server_moves(s["id"])
    assert (move["status"], move["message"]) == ("failed",
                                                 "the server was deleted during the move")
    assert [e[:2] for e in world.events(s, "migrate", "delete")][-3:] == [
        ("delete", "started"), ("migrate", "failed"), ("delete", "done")]


def test_a_server_deleted_mid_migration_gives_each_vf_back_once(world: World) -> None:
    s, source, slot, dest, dslot = migrated_with_a_port(world, "vm-del-nic")
    (port,) = s["ports"]
    assert world.vfs[source].state(slot) == FRESH_VF      # migrate_out gave it back
    assert world.vfs[dest].state(dslot).vlan == 100
    restores = len(world.vfs[source].ops("restore"))
    world.member.delete_server("vm-del-nic")
    world.run_tasks()
    assert world.admin.server(s["id"])["status"] == "DELETED"
    assert world.vfs[dest].state(dslot) == FRESH_VF
    assert world.vfs[source].state(slot) == FRESH_VF
    assert len(world.vfs[source].ops("restore")) == restores   # not given back twice
    assert world.owned(s) == {}
    assert all(p["id"] != port["id"] for p in world.admin.ports().items)


# --- the disk goes with the server ------------------------------------------------------------

def test_a_cold_migration_hands_the_guests_disk_to_the_destination(world: World) -> None:
    s = world.boot("vm-disk", "a100x1")
    source = s["host"]
    dest = next(h for h in GPUS if h != source)
    written = b"what the guest wrote before the move\n" * 1000
    with overlay_path(world.state / source, s["id"]).open("ab") as disk:
        disk.write(written)
    source_disk = overlay_path(world.state / source, s["id"]).read_bytes()
    world.admin.migrate_server("vm-disk", host=dest)
    world.run_tasks()
    assert world.member.server("vm-disk")["status"] == "VERIFY_RESIZE"
    assert overlay_path(world.state / dest, s["id"]).read_bytes() == source_disk
    (move,) = world.admin.server_moves(s["id"])
    copy = world.server_state / MOVE_DISKS_DIR / f"{move['id']}.qcow2"
    assert copy.read_bytes() == source_disk
    # Only the destination's agent, while its spawn runs, may take it; no member ever.
    with pytest.raises(errors.Forbidden):
        world.runners[source].client.get_move_disk(move["id"], world.state / "stolen")
    with pytest.raises(errors.Forbidden):
        world.member.get_move_disk(move["id"], world.state / "stolen")
    with pytest.raises(errors.Conflict) as late:
        world.runners[dest].client.get_move_disk(move["id"], world.state / "late")
    assert late.value.code == "move_not_ready"
    assert not (world.state / "stolen").exists() and not (world.state / "late").exists()
    world.admin.confirm_resize("vm-disk")
    world.run_tasks()
    assert not overlay_path(world.state / source, s["id"]).exists()
    deadline = time.monotonic() + 20     # the server's sweep removes the copy
    while copy.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not copy.exists()
    world.delete(s)


def test_a_move_on_one_host_keeps_its_disk_and_hands_nothing_over(world: World) -> None:
    s = world.boot("vm-disk-same", "a100x1")
    host = s["host"]
    disk = overlay_path(world.state / host, s["id"])
    with disk.open("ab") as f:
        f.write(b"kept in place")
    world.member.resize_server("vm-disk-same", flavor="a100x2")
    world.run_tasks()
    moved = world.member.server("vm-disk-same")
    assert (moved["status"], moved["host"]) == ("VERIFY_RESIZE", host)
    assert disk.read_bytes().endswith(b"kept in place")
    (move,) = world.admin.server_moves(s["id"])
    with pytest.raises(errors.Conflict) as none:
        world.runners[host].client.get_move_disk(move["id"], world.state / "none")
    assert none.value.code == "no_disk_handoff"
    world.member.revert_resize("vm-disk-same")
    world.run_tasks()
    assert disk.read_bytes().endswith(b"kept in place")
    world.delete(s)


def test_a_disk_that_cannot_be_handed_over_keeps_the_server_on_its_source(
        world: World) -> None:
    s = world.boot("vm-disk-lost", "a100x1")
    source = s["host"]
    dest = next(h for h in GPUS if h != source)
    disk = overlay_path(world.state / source, s["id"])
    disk.write_bytes(b"precious")
    # The copy vanishes between the source's upload and the destination's spawn.
    world.admin.migrate_server("vm-disk-lost", host=dest)
    world.run_tasks(skip=(dest,))
    (move,) = world.admin.server_moves(s["id"])
    (world.server_state / MOVE_DISKS_DIR / f"{move['id']}.qcow2").unlink()
    world.run_tasks()
    back = world.member.server("vm-disk-lost")
    assert (back["status"], back["host"]) == ("ACTIVE", source)
    assert "has not handed its disk over" in back["fault"]["message"]
    assert not overlay_path(world.state / dest, s["id"]).exists()   # no blank disk left
    assert disk.read_bytes() == b"precious"
    # A source without the disk refuses to move the server at all.
    disk.unlink()
    world.admin.migrate_server("vm-disk-lost", host=dest)
    world.run_tasks()
    back = world.member.server("vm-disk-lost")
    assert (back["status"], back["host"]) == ("ACTIVE", source)
    assert f"no disk for server {s['id']}" in back["fault"]["message"]
    assert [m["status"] for m in world.admin.server_moves(s["id"])] == ["failed", "failed"]
    world.delete(s)
