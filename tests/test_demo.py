"""`pcipass demo`: the whole path (server, simulated hosts, agents, API) in one command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pcipass.demo import SCENARIO, notable_facts
from pcipass.host.profiles import PROFILES
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, PciDevice
from pcipass.records import DeviceRecord, DeviceState

DEMO = [sys.executable, "-c", "from pcipass.cli.main import main; main()", "demo"]


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCIPASS_")}
    env["COLUMNS"] = "250"
    return env


def run_demo(*args: str) -> str:
    done = subprocess.run([*DEMO, "--once", *args], capture_output=True, text=True,
                          timeout=120, env=demo_env(), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def section(out: str, title: str, *, after: str | None = None) -> str:
    """From ``title`` (the first after ``after``, if given) to the end of its table."""
    start = out.index(title, out.index(after) if after else 0)
    end = out.find("└", start)
    return out[start:end]


@pytest.fixture(scope="module")
def demo_once() -> str:
    return run_demo()


def test_demo_once_shows_every_profile_hosts_and_pools(demo_once: str) -> None:
    out = demo_once
    hosts = section(out, "Hosts (GET /v1/hosts)")
    pools = section(out, "Pools (GET /v1/pools)")
    for profile in PROFILES:
        assert f"{profile}-1" in hosts
        assert f"{profile}-1" in pools  # every profile offers something
    assert "A100" in pools and "physical_network=physnet1" in pools
    assert re.search(r"IOMMU group \d+ holds GPU .* audio function", out)
    assert "Intel VMD" in out and "no IOMMU group" in out
    assert re.search(r"sriov-nic-server-1: 16 VFs on physnet1", out)
    assert "4 agents reported" in out


def test_demo_once_boots_refuses_explains_and_frees(demo_once: str) -> None:
    out = demo_once
    flat = " ".join(out.split())
    for number, (title, _step) in enumerate(SCENARIO, start=1):
        assert f"{number}. {title}" in out
    # the catalog, with what it refuses
    aliases = section(out, "PCI aliases (GET /v1/aliases)")
    for name in ("a100", "a6000", "nvme-pm9a3", "nvme-p4510", "vf-physnet1"):
        assert name in aliases
    assert "alias vf-typo refused [invalid_alias]" in flat and "physical_netwrok" in flat
    assert "flavor gpu.h100 refused [unknown_alias]" in flat and "h100" in flat
    flavors = section(out, "Flavors (GET /v1/flavors)")
    assert "gpu.large" in flavors and "private: render-farm" in flavors
    assert "render.a6000" not in section(out, "member token issued")  # hidden from ml-team
    # the boots: each one's outcome, refusals included
    assert re.search(r"server train-1 is BUILDING on gpu-server-1: \S+ \(a100, claimed\), "
                     r"\S+ \(a100, claimed\) \(NUMA-local", flat)
    assert re.search(r"server infer-1 is BUILDING on gpu-server-1: \S+ \(a100, claimed\) "
                     r"\(NUMA-local", flat)
    assert re.search(r"infer-2 .* refused \[quota_exceeded\]: .*a100", flat)
    assert re.search(r"db-1 .* refused \[alias_not_supported_by_image\]: .*nvme-pm9a3.*"
                     r"ubuntu-22.04-cuda", flat)
    assert "server db-2 is BUILDING on storage-server-1" in flat
    assert "server edge-1 is BUILDING on sriov-nic-server-1" in flat
    assert re.search(r"render-1 .* refused \[not_found\]", flat)
    assert re.search(r"server big-1 is ERROR: .*a100", flat)
    # the explanation, the servers and pools after, the delete
    assert "does not fit:" in flat
    assert "gpu-server-1" in section(out, "Hosts", after="does not fit")
    servers = section(out, "Servers (GET /v1/servers)")
    for name in ("train-1", "infer-1", "db-2", "edge-1", "big-1"):
        assert name in servers
    assert "Pools before booting" in out and "Pools after booting" in out
    # the hosts' task loops (fake virt driver) start every placed server
    for name, host in (("train-1", "gpu-server-1"), ("infer-1", "gpu-server-1"),
                       ("db-2", "storage-server-1"), ("edge-1", "sriov-nic-server-1")):
        assert f"{name} on {host}: ACTIVE" in flat
        assert re.search(rf"│ {name} +│ \S+ +│ \S+ +│ ACTIVE +│", servers)
    assert "BUILDING" not in servers
    xml = out[out.index("GET /v1/servers/train-1/domain-xml"):]
    assert len(re.findall(r'<hostdev mode="subsystem" type="pci"', xml)) >= 2
    assert '<driver name="vfio"/>' in xml
    # the delete goes through the host's destroy task; the device is free again
    assert "DELETE /v1/servers/infer-1: DELETING" in flat
    assert "agent ran the destroy task: infer-1 is DELETED" in flat
    assert re.search(r"gpu-server-1 \S+ \(a100\): was allocated, now available", flat)
    assert "Pools after the delete" in out
    assert "confirms the domain is gone" not in out  # no stopgap: the agent confirms
    assert "unexpected" not in out and "differed from the scenario" not in out


def test_demo_once_changes_running_servers(demo_once: str) -> None:
    out = demo_once
    flat = " ".join(out.split())
    # hot attach from the server's own host: claimed, then allocated once the agent plugs it
    plugged = re.search(r'POST /v1/servers/train-1/devices \{"alias": "a100"\}: server '
                        r"train-1 is ACTIVE on gpu-server-1: .*?(\S+) \(a100, claimed\)", flat)
    assert plugged, flat
    address = plugged[1]
    assert re.search(r"host gpu-server-1's agent plugged it: server train-1 is ACTIVE on "
                     rf"gpu-server-1: .*{re.escape(address)} \(a100, allocated\)", flat)
    assert "(a100, claimed)" not in flat[flat.index("agent plugged it"):]
    assert "another a100 refused [quota_exceeded]" in flat
    # detach: the device is free once the agent confirmed the unplug
    assert f"DELETE /v1/servers/train-1/devices/{address}, once its host's agent " \
           f"confirmed the unplug: - gpu-server-1 {address}: available" in flat
    events = section(out, "Events of train-1 since the attach")
    assert re.search(r"│ attach_device +│ done +│ gpu-server-1", events)
    assert re.search(r"│ detach_device +│ done +│ gpu-server-1", events)


def test_demo_once_moves_servers_and_drains_a_host(demo_once: str) -> None:
    out = demo_once
    flat = " ".join(out.split())
    moving = flat[flat.index("Move servers and drain a host"):]
    # cold migration: the destination host joins, the disk goes along, VERIFY_RESIZE, confirm
    assert "gpu-server-2 joins the fleet" in moving
    verify = moving.index("train-1 is VERIFY_RESIZE on gpu-server-2, holding both sides")
    marker = moving.index("the marker is in its boot disk on gpu-server-2 (the simulated "
                          "host's overlay file state/gpu-server-2/disks/")
    confirmed = moving.index("POST /v1/servers/train-1/resize/confirm: server train-1 is "
                             "ACTIVE on gpu-server-2")
    assert moving.index("wrote 'written by the guest before its move' into train-1's boot "
                        "disk on gpu-server-1") < verify < marker < confirmed
    assert re.search(r"on gpu-server-1, once its agent destroyed what it kept: "
                     r"- gpu-server-1 \S+: available - gpu-server-1 \S+: available", moving)
    moves = section(out, "Moves of train-1 (GET /v1/servers/train-1/moves)")
    assert re.search(r"│ \d+ +│ migrate +│ done +│ gpu-server-1 +│ gpu-server-2 +│", moves)
    cold_events = section(out, "Events of train-1 since the migrate")
    for action in ("migrate_out", "spawn", "confirm"):
        assert re.search(rf"│ {action} +│ done +│", cold_events), action
    # the drain listing of the reserved SR-IOV host: what could move live, what cannot
    assert "sriov-nic-server-2 joins the fleet" in moving
    assert "Host sriov-nic-server-1: reserved=yes (NIC firmware update); 3 servers still " \
           "there" in moving
    drain = section(out, "Servers on the host")
    assert re.search(r"│ web-2 .*│ yes +│", drain)
    assert re.search(r"│ gw-1 .*│ no +│", drain) and re.search(r"│ edge-1 .*│ no +│", drain)
    assert "port gw-1-nic0 is" in drain and "(alias 'vf-physnet1')" in drain  # the blockers
    # live migration: new bindings on the other host, the warning about the direct NIC
    assert "POST /v1/servers/web-2/live-migrate (any host that fits): MIGRATING" in moving
    assert "server web-2 is ACTIVE on sriov-nic-server-2" in moving
    ports = section(out, "web-2's ports after the move")
    direct = re.search(r"│ web-2-nic0 +│ tenant-net \(physnet1\) +│ direct +│ (\S+) +│ ACTIVE +│ "
                       r"sriov-nic-server-2 +│", ports)
    assert direct, ports
    assert re.search(r"│ st-port +│ storage-net \(physnet2\) +│ macvtap +│ \S+ +│ ACTIVE +│ "
                     r"sriov-nic-server-2 +│", ports)
    assert f"switch (sriov-nic-server-2): bind PF ens1f0 VLAN 100 MAC {direct[1]}" in moving
    assert f"switch (sriov-nic-server-1): unbind PF ens1f0 VLAN 100 MAC {direct[1]}" in moving
    assert re.search(r"event live_migrate started on sriov-nic-server-1: moving from host "
                     r"sriov-nic-server-1 to host sriov-nic-server-2; the guest loses "
                     rf"{re.escape(direct[1])} \(port \S+\) until the move finishes", moving)
    assert "POST /v1/hosts/sriov-nic-server-1/unreserve: reserved=no; servers still there: " \
           "edge-1, gw-1" in moving
    # a delete in VERIFY_RESIZE: both hosts let go, the move fails saying why
    again = moving.index("POST /v1/servers/train-1/migrate (any other host): VERIFY_RESIZE "
                         "on gpu-server-1, holding gpu-server-2 ")
    deleted = re.compile(r"DELETE /v1/servers/train-1 in VERIFY_RESIZE: DELETING, then DELETED "
                         r"once both hosts \(gpu-server-2, gpu-server-1\) let go: "
                         r"((?:- gpu-server-[12] \S+: available )+)Moves of train-1")
    freed = deleted.search(moving, again)
    assert freed, moving[again:]
    assert freed[1].count("- gpu-server-2 ") == 2 and freed[1].count("- gpu-server-1 ") == 2
    last_moves = section(out, "Moves of train-1", after="DELETE /v1/servers/train-1 in")
    assert re.search(r"│ \d+ +│ migrate +│ failed +│ gpu-server-2 +│ gpu-server-1 +│ gpu.large +│ "
                     r"the server was deleted during the move", last_moves)
    assert "unexpected" not in out and "differed from the scenario" not in out


def test_demo_builds_several_hosts_per_profile() -> None:
    out = run_demo("--hosts-per-profile", "2")
    hosts = section(out, "Hosts (GET /v1/hosts)")
    for profile in PROFILES:
        assert f"{profile}-1" in hosts and f"{profile}-2" in hosts
    assert "8 agents reported" in out
    # the moves find their second hosts in the fleet: none has to join
    assert "joins the fleet" not in out
    assert "the marker is in its boot disk on" in out
    assert "unexpected" not in out and "differed from the scenario" not in out


def test_demo_keeps_serving_until_interrupted() -> None:
    with subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=demo_env()) as proc:
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if "Ctrl-C stops everything" in line:
                    break
            text = "".join(lines)
            assert "admin token:" in text and "PCIPASS_URL=http://127.0.0.1:" in text
            workdir = re.search(r"trees are under (\S+)/hosts", text)
            assert workdir is not None
            assert Path(workdir[1]).is_dir()
            proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0, text + rest
            assert "stopping" in rest
            assert not Path(workdir[1]).exists()  # cleaned up, server stopped with it
        finally:
            if proc.poll() is None:
                proc.kill()


def record(host: str, addr: str, class_code: str, *, group: int | None,
           dev_type: DevType = DevType.PCI, tags: dict[str, str] | None = None,
           parent: str | None = None, assignable: bool = True) -> DeviceRecord:
    return DeviceRecord(host, PciDevice(
        PciAddress.parse(addr), "10de", "2230", class_code, dev_type=dev_type,
        iommu_group=group, tags=tags or {}, assignable=assignable,
        parent_addr=PciAddress.parse(parent) if parent else None,
    ), DeviceState.AVAILABLE)


def test_notable_facts() -> None:
    facts = notable_facts([
        record("h1", "0000:4b:00.0", "030000", group=7),
        record("h1", "0000:4b:00.1", "040300", group=7),
        record("h1", "0000:17:00.0", "030200", group=8),  # a GPU alone: nothing to say
        record("h2", "10000:00:02.0", "060400", group=None),  # a bridge: not worth a line
        record("h2", "10000:01:00.0", "010802", group=None),
        *(record("h3", f"0000:3b:01.{i}", "020000", group=20 + i, dev_type=DevType.VF,
                 tags={"physical_network": "physnet1"}, parent="0000:3b:00.0")
          for i in range(3)),
    ], lambda v, p: None)
    assert len(facts) == 3
    assert "h1: IOMMU group 7 holds GPU 0000:4b:00.0" in facts[0] and "0000:4b:00.1" in facts[0]
    assert facts[1].startswith("h2: 10000:01:00.0 sit") and "10000:00:02.0" not in facts[1]
    assert facts[2] == "h3: 3 VFs on physnet1 (3 available)"
    assert notable_facts([], lambda v, p: None) == ["nothing unusual"]
