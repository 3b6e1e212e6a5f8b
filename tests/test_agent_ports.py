"""The host side of SR-IOV ports: the agent programs VFs before a spawn, tells the switch, and
puts everything back on destroy or rollback, across agent restarts.

Runs the real :class:`~pcipass.agent.tasks.TaskRunner` against the fake hypervisor, the
recording VF programmer (its tables stand for the kernel's, so they outlive a "restarted"
runner) and the ``log`` switch driver writing JSON lines.
"""

from __future__ import annotations

import errno
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pcipass import errors
from pcipass.agent.ports import (
    FALLBACK_VF,
    SavedVf,
    SriovKind,
    SwitchBinding,
    VfStore,
    make_programmer,
    sriov_tables,
    vf_config,
)
from pcipass.cli.main import app
from pcipass.host.sriov import (
    NetlinkVfProgrammer,
    RecordingVfProgrammer,
    VfAttribute,
    VfConfig,
    VfSlot,
    effective,
)
from pcipass.net.switch import LogSwitchDriver
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, HostInfo, NetDev, PciDevice
from pcipass.pci.inventory import Inventory
from pcipass.virt.driver import Operation
from pcipass.virt.payload import domain_name, overlay_path, parse_spawn
from pcipass.virt.xml import parse_xml, read_hostdevs
from test_agent_tasks import HOST, Crash, CrashingDriver, FakeApi, Host

DIRECT_VF = VfSlot("ens1f0", 3)
MACVTAP_VF = VfSlot("ens2f0", 1)
# What the VFs have before pcipass touches them: not what FALLBACK_VF would put back, so a
# restore from the saved config and a reset to defaults cannot be mistaken for each other.
BEFORE_1 = VfConfig(mac="02:00:00:00:01:03", vlan=None, spoofchk=False, trust=False,
                    link_state="auto", min_tx_rate_mbps=0, max_tx_rate_mbps=0)
BEFORE_2 = VfConfig(mac="02:00:00:00:02:01", vlan=7, spoofchk=True, trust=True,
                    link_state="enable", min_tx_rate_mbps=0, max_tx_rate_mbps=500)
PF_ADDRESS = "0000:86:00.0"

MAC_DIRECT, MAC_MACVTAP, MAC_PHYS, MAC_NORMAL = (
    "fa:16:3e:00:00:01", "fa:16:3e:00:00:02", "fa:16:3e:00:00:03", "fa:16:3e:00:00:04")

# Each SR-IOV port's switch binding, in port order.
BINDINGS: list[dict[str, Any]] = [{"host": HOST, "pf": "ens1f0", "vlan": 100, "mac": MAC_DIRECT},
            {"host": HOST, "pf": "ens2f0", "vlan": None, "mac": MAC_MACVTAP},
            {"host": HOST, "pf": "ens3f0", "vlan": 200, "mac": MAC_PHYS}]


def interfaces() -> list[dict[str, Any]]:
    """One port of each vnic type, bound as the claim binds them (contract's payload shape)."""
    common = {"managed": True, "trusted": False, "spoofchk": True, "max_tx_rate_mbps": None,
              "min_tx_rate_mbps": None, "network": "net1", "physical_network": "physnet1"}
    return [
        {**common, "port": "p-direct", "vnic_type": "direct", "mac": MAC_DIRECT, "vlan": 100,
         "address": "0000:5e:10.2", "pf": "ens1f0", "vf_index": 3, "vf_netdev": "ens1f0v3",
         "trusted": True, "max_tx_rate_mbps": 1000, "min_tx_rate_mbps": 100},
        {**common, "port": "p-macvtap", "vnic_type": "macvtap", "mac": MAC_MACVTAP,
         "vlan": None, "address": "0000:5f:00.5", "pf": "ens2f0", "vf_index": 1,
         "vf_netdev": "ens2f0v1", "spoofchk": False, "network": "flat1",
         "physical_network": "physnet2"},
        {**common, "port": "p-phys", "vnic_type": "direct-physical", "mac": MAC_PHYS,
         "vlan": 200, "address": PF_ADDRESS, "pf": "ens3f0", "vf_index": None,
         "vf_netdev": None},
        {**common, "port": "p-normal", "vnic_type": "normal", "mac": MAC_NORMAL, "vlan": None,
         "address": None, "pf": None, "vf_index": None, "vf_netdev": None},
    ]


def spawn_payload(host: Host, *, nics: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    nics = interfaces() if nics is None else nics
    phys = [n["address"] for n in nics if n["vnic_type"] == "direct-physical"]
    return {
        "server": {"id": str(uuid.uuid4()), "name": "web-1", "project": "web"},
        "flavor": {"name": "small", "vcpus": 2, "ram_mb": 2048, "disk_gb": 10,
                   "extra_specs": {}},
        "image": {"name": "cirros", "source": str(host.image), "properties": {}},
        "devices": [{"address": a, "alias": "port:p-phys", "managed": True} for a in phys],
        "numa": None,
        "interfaces": nics,
    }


def destroy_payload(spawn: dict[str, Any]) -> dict[str, Any]:
    return {"server": spawn["server"],
            "devices": [{"address": d["address"], "managed": d["managed"]}
                        for d in spawn["devices"]],
            "interfaces": spawn["interfaces"]}


class Programmer(RecordingVfProgrammer):
    """The recording fake, also noting whether the domain existed at each program/restore."""

    def __init__(self, host: Host) -> None:
        super().__init__()
        self.add_pf("ens1f0", 8, initial=BEFORE_1)
        self.add_pf("ens2f0", 4, initial=BEFORE_2)
        self.host = host
        self.domain_seen: list[tuple[str, bool]] = []

    def _note(self, op: str) -> None:
        self.domain_seen.append((op, any(True for _ in self.host.driver.list())))

    def program(self, slot: VfSlot, config: VfConfig) -> VfConfig:
        self._note("program")
        return super().program(slot, config)

    def restore(self, slot: VfSlot, previous: VfConfig) -> None:
        self._note("restore")
        super().restore(slot, previous)


class Switch(LogSwitchDriver):
    """The log driver; notes how many VF restores came before each unbind, and can fail."""

    def __init__(self, path: Path, programmer: Programmer) -> None:
        super().__init__(path)
        self.programmer = programmer
        self.restores_before_unbind: list[int] = []
        self.domains_at_bind: list[int] = []
        self.fail_bind: int | None = None         # the n-th bind (from 1) is refused
        self.crash_unbind = False                 # the agent dies in the next unbind
        self.binds = 0

    def bind(self, host: str, pf: str, vlan: int | None, mac: str) -> None:
        self.binds += 1
        if self.binds == self.fail_bind:
            raise errors.InfrastructureError(f"top-of-rack switch refused VLAN {vlan} on {pf}")
        self.domains_at_bind.append(len(self.programmer.host.driver.list()))
        super().bind(host, pf, vlan, mac)

    def unbind(self, host: str, pf: str, vlan: int | None, mac: str) -> None:
        if self.crash_unbind:
            self.crash_unbind = False
            raise Crash("unbind")
        self.restores_before_unbind.append(len(self.programmer.ops("restore")))
        super().unbind(host, pf, vlan, mac)

    def lines(self, op: str | None = None) -> list[dict[str, Any]]:
        """What the JSON-lines file says, the op dropped (filtered on it when given)."""
        if self.path is None or not self.path.exists():
            return []
        rows = [json.loads(x) for x in self.path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "op"} for r in rows
                if op is None or r["op"] == op]


class Rig:
    """A host with VFs and a switch; ``runner()`` is a fresh agent each time (a restart)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.vfs = Programmer(host)
        self.switch = Switch(host.root / "switch.jsonl", self.vfs)

    def runner(self, **kw: Any) -> Any:
        opts: dict[str, Any] = {"programmer": self.vfs, "switch": self.switch}
        opts.update(kw)
        return self.host.runner(**opts)

    def vf_file(self, payload: dict[str, Any]) -> Path:
        return self.host.state_dir / "vfs" / f"{payload['server']['id']}.json"

    def run(self, task_id: str, kind: str, payload: dict[str, Any], **kw: Any) -> bool:
        self.host.api.add(task_id, kind, payload)
        return bool(self.runner(**kw).run_once())


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    image = tmp_path / "images" / "cirros.qcow2"
    image.parent.mkdir()
    image.write_bytes(b"")
    host = Host(tmp_path, FakeApi(), CrashingDriver(tmp_path / "state" / "virt"), image)
    return Rig(host)


def programmed_1() -> VfConfig:
    return VfConfig(mac=MAC_DIRECT, vlan=100, spoofchk=True, trust=True,
                    min_tx_rate_mbps=100, max_tx_rate_mbps=1000)


def programmed_2() -> VfConfig:
    return VfConfig(mac=MAC_MACVTAP, vlan=None, spoofchk=False, trust=False)


def saved_json(port: str, slot: VfSlot, c: VfConfig) -> dict[str, Any]:
    return {"port": port, "pf": slot.pf_netdev, "vf_index": slot.vf_index, "previous": {
        "mac": c.mac, "vlan": c.vlan, "qos": c.qos, "vlan_proto": c.vlan_proto,
        "spoofchk": c.spoofchk, "trust": c.trust, "link_state": c.link_state,
        "min_tx_rate_mbps": c.min_tx_rate_mbps, "max_tx_rate_mbps": c.max_tx_rate_mbps}}


def assert_vfs_as_before(rig: Rig) -> None:
    assert rig.vfs.state(DIRECT_VF) == BEFORE_1
    assert rig.vfs.state(MACVTAP_VF) == BEFORE_2


# --- spawn -----------------------------------------------------------------------------------

def test_spawn_programs_the_vfs_tells_the_switch_and_plugs_each_vnic_type(rig: Rig) -> None:
    p = spawn_payload(rig.host)
    assert rig.run("s", "spawn", p) is True
    assert rig.host.api.results["s"]["ok"] is True, rig.host.api.results["s"]

    # one program call per VF port, in port order, with the port's settings
    assert [(c.slot, c.config) for c in rig.vfs.ops("program")] == [
        (DIRECT_VF, programmed_1()), (MACVTAP_VF, programmed_2())]
    assert [c.slot for c in rig.vfs.ops("read")][:1] == [DIRECT_VF]   # read before programming
    assert rig.vfs.state(DIRECT_VF) == effective(BEFORE_1, programmed_1())
    assert rig.vfs.state(MACVTAP_VF).vlan is None      # a flat port clears the VF's VLAN 7
    assert rig.vfs.state(MACVTAP_VF).mac == MAC_MACVTAP
    assert rig.vfs.domain_seen == [("program", False), ("program", False)]  # before define

    # what the VFs had, in the journal and in the server's file
    j = rig.host.journal("s")
    assert j is not None
    assert j.vfs == (SavedVf("p-direct", DIRECT_VF, BEFORE_1),
                     SavedVf("p-macvtap", MACVTAP_VF, BEFORE_2))
    assert json.loads(rig.vf_file(p).read_text()) == {
        "version": 1, "server_id": p["server"]["id"],
        "vfs": [saved_json("p-direct", DIRECT_VF, BEFORE_1),
                saved_json("p-macvtap", MACVTAP_VF, BEFORE_2)]}

    # the switch hears of every SR-IOV port (not the normal one), before the domain exists
    assert rig.switch.lines() == BINDINGS
    assert [c.op for c in rig.switch.calls] == ["bind"] * 3
    assert rig.switch.domains_at_bind == [0, 0, 0]
    assert j.bound == tuple(SwitchBinding(port, b["pf"], b["vlan"], b["mac"]) for port, b in
                            zip(("p-direct", "p-macvtap", "p-phys"), BINDINGS, strict=True))

    # the domain: a hostdev VF, a macvtap on the VF's netdev, a virtio NIC, the PF as hostdev
    root = parse_xml(rig.host.driver.get_xml(domain_name(p["server"]["id"])))
    nics = root.findall("devices/interface")
    assert [n.get("type") for n in nics] == ["hostdev", "direct", "network"]
    assert [n.find("mac").get("address") for n in nics] == [  # type: ignore[union-attr]
        MAC_DIRECT, MAC_MACVTAP, MAC_NORMAL]
    assert nics[0].find("vlan/tag").get("id") == "100"  # type: ignore[union-attr]
    assert nics[1].find("source").attrib == {  # type: ignore[union-attr]
        "dev": "ens2f0v1", "mode": "passthrough"}
    assert nics[2].find("source").attrib == {"network": "default"}  # type: ignore[union-attr]
    assert [str(h.host) for h in read_hostdevs(root)] == [PF_ADDRESS]
    assert [str(h.host) for h in read_hostdevs(root, interfaces=True)] == [
        PF_ADDRESS, "0000:5e:10.2"]


def test_normal_ports_go_on_the_configured_network(rig: Rig) -> None:
    p = spawn_payload(rig.host, nics=[interfaces()[3]])
    assert rig.run("s", "spawn", p, normal_network="tenant-nat") is True
    root = parse_xml(rig.host.driver.get_xml(domain_name(p["server"]["id"])))
    (nic,) = root.findall("devices/interface")
    assert nic.find("source").attrib == {"network": "tenant-nat"}  # type: ignore[union-attr]
    assert rig.vfs.calls == []                 # nothing to program
    assert rig.switch.lines() == []            # nor to tell the switch
    assert not rig.vf_file(p).exists()


def test_vf_config_is_what_the_port_asks() -> None:
    nic = parse_spawn({**spawn_payload_stub(), "interfaces": interfaces()}).interfaces[0]
    assert vf_config(nic) == VfConfig(mac=MAC_DIRECT, vlan=100, spoofchk=True, trust=True,
                                      min_tx_rate_mbps=100, max_tx_rate_mbps=1000)


def spawn_payload_stub() -> dict[str, Any]:
    return {"server": {"id": str(uuid.uuid4())}, "flavor": {"vcpus": 1, "ram_mb": 512},
            "image": {"name": "i", "source": "/i.qcow2"}}


# --- destroy ---------------------------------------------------------------------------------

def test_destroy_restores_exactly_what_the_vfs_had_then_unbinds(rig: Rig) -> None:
    p = spawn_payload(rig.host)
    rig.run("s", "spawn", p)
    assert rig.run("d", "destroy", destroy_payload(p)) is True
    assert rig.host.api.results["d"]["ok"] is True, rig.host.api.results["d"]
    assert not rig.host.driver.exists(domain_name(p["server"]["id"]))

    assert [(c.slot, c.config) for c in rig.vfs.ops("restore")] == [
        (DIRECT_VF, BEFORE_1), (MACVTAP_VF, BEFORE_2)]
    assert_vfs_as_before(rig)
    assert rig.vfs.domain_seen[-2:] == [("restore", False), ("restore", False)]  # after undefine
    assert not rig.vf_file(p).exists()
    assert rig.switch.lines("unbind") == BINDINGS
    assert rig.switch.restores_before_unbind == [2, 2, 2]    # VFs restored before any unbind
    j = rig.host.journal("d")
    assert j is not None and len(j.unbound) == 3


def test_agent_restart_between_spawn_and_destroy_still_restores(rig: Rig) -> None:
    p = spawn_payload(rig.host)
    rig.run("s", "spawn", p)
    # a new agent process: new runner, nothing shared in memory but the "kernel's" VF tables
    rig.host.api.add("d", "destroy", destroy_payload(p))
    assert rig.runner().run_once() is True
    assert rig.host.api.results["d"]["ok"] is True
    assert_vfs_as_before(rig)
    assert rig.vfs.state(DIRECT_VF) != effective(BEFORE_1, FALLBACK_VF)


def test_destroy_without_saved_configs_resets_the_vfs_to_defaults(rig: Rig) -> None:
    p = spawn_payload(rig.host)
    rig.run("s", "spawn", p)
    rig.vf_file(p).unlink()                   # lost (or written by an agent that kept none)
    assert rig.run("d", "destroy", destroy_payload(p)) is True
    assert [c.config for c in rig.vfs.ops("restore")] == [FALLBACK_VF, FALLBACK_VF]
    for slot in (DIRECT_VF, MACVTAP_VF):
        got = rig.vfs.state(slot)
        assert (got.mac, got.vlan, got.spoofchk, got.trust, got.min_tx_rate_mbps,
                got.max_tx_rate_mbps) == ("00:00:00:00:00:00", None, True, False, 0, 0)
    assert rig.switch.lines("unbind") == BINDINGS


def test_destroy_killed_after_the_file_went_restores_from_its_journal(rig: Rig) -> None:
    p = spawn_payload(rig.host)
    rig.run("s", "spawn", p)
    rig.host.api.add("d", "destroy", destroy_payload(p))
    rig.switch.crash_unbind = True
    with pytest.raises(Crash):
        rig.runner().run_once()
    assert not rig.vf_file(p).exists()        # gone before the switch was told
    assert rig.switch.lines("unbind") == []
    # scribble on a VF: the resumed destroy must put back the saved config, not defaults
    rig.vfs.program(DIRECT_VF, VfConfig(mac="02:11:22:33:44:55", vlan=9))
    assert rig.runner().run_once() is True
    assert rig.host.api.results["d"]["ok"] is True
    assert_vfs_as_before(rig)
    assert rig.switch.lines("unbind") == BINDINGS            # each once
    # and a third run changes nothing (the task is finished)
    before = len(rig.vfs.calls)
    assert rig.runner().run_once() is False
    assert len(rig.vfs.calls) == before


def test_a_failed_restore_fails_the_destroy_and_keeps_the_file(rig: Rig) -> None:
    p = spawn_payload(rig.host)
    rig.run("s", "spawn", p)
    rig.vfs.fail(VfAttribute.MAC, pf="ens2f0", errno=errno.EBUSY)
    assert rig.run("d", "destroy", destroy_payload(p)) is True
    res = rig.host.api.results["d"]
    assert res["ok"] is False
    assert "restoring VF 1 on PF ens2f0 failed" in res["message"]
    assert rig.vfs.state(DIRECT_VF) == BEFORE_1   # the other VF was still restored
    assert rig.vf_file(p).exists()                # a retry still knows what to put back
    assert rig.switch.lines("unbind") == []       # the switch is left as it was


# --- failures undo everything ------------------------------------------------------------------

def test_a_vf_programming_failure_fails_the_spawn_naming_the_pf_and_undoes_the_rest(
        rig: Rig) -> None:
    p = spawn_payload(rig.host)
    rig.vfs.fail(VfAttribute.SPOOFCHK, pf="ens2f0", errno=errno.EOPNOTSUPP)
    assert rig.run("s", "spawn", p) is True
    res = rig.host.api.results["s"]
    assert res["ok"] is False
    assert res["message"].startswith("cannot set spoofchk of VF 1 on PF ens2f0: the PF driver "
                                     "does not support setting a VF's spoof-check (EOPNOTSUPP)")
    assert res["message"].endswith("; rolled back vlan, mac")  # inside the VF, by program()
    # the VF programmed before the failure is restored; the failing one was never changed
    assert [c.slot for c in rig.vfs.ops("restore")] == [DIRECT_VF, MACVTAP_VF]
    assert_vfs_as_before(rig)
    # no domain, no disk, no file, nothing told to the switch (VFs come before the switch)
    name = domain_name(p["server"]["id"])
    assert not rig.host.driver.exists(name)
    assert ("define", name) not in rig.host.ops()
    assert not overlay_path(rig.host.state_dir, p["server"]["id"]).exists()
    assert not rig.vf_file(p).exists()
    assert rig.switch.lines() == []


def test_a_missing_pf_fails_the_spawn_naming_it(rig: Rig) -> None:
    nics = interfaces()
    nics[1] = {**nics[1], "pf": "ens9f0"}
    p = spawn_payload(rig.host, nics=nics)
    rig.run("s", "spawn", p)
    res = rig.host.api.results["s"]
    assert res["ok"] is False
    assert res["message"].startswith("PF ens9f0 not found")
    assert_vfs_as_before(rig)
    assert not rig.host.driver.exists(domain_name(p["server"]["id"]))


def test_a_switch_failure_restores_the_vfs_and_unbinds_what_was_bound(rig: Rig) -> None:
    p = spawn_payload(rig.host)
    rig.switch.fail_bind = 2
    rig.run("s", "spawn", p)
    res = rig.host.api.results["s"]
    assert res["ok"] is False
    assert res["message"].startswith("top-of-rack switch refused VLAN None on ens2f0")
    assert_vfs_as_before(rig)
    assert rig.switch.lines("bind") == BINDINGS[:1]
    # journalled before each call: the refused binding is unbound too (harmless), the
    # third was never made
    assert rig.switch.lines("unbind") == BINDINGS[:2]
    assert not rig.host.driver.exists(domain_name(p["server"]["id"]))
    assert not rig.vf_file(p).exists()


def test_a_domain_failure_after_programming_undoes_the_ports(rig: Rig) -> None:
    p = spawn_payload(rig.host)
    rig.host.driver.inject_failure(Operation.START, "no memory for the guest")
    rig.run("s", "spawn", p)
    res = rig.host.api.results["s"]
    assert res["ok"] is False and "no memory for the guest" in res["message"]
    assert not rig.host.driver.exists(domain_name(p["server"]["id"]))
    assert_vfs_as_before(rig)
    assert rig.switch.lines("unbind") == BINDINGS
    assert not rig.vf_file(p).exists()


def test_a_spawn_killed_after_programming_keeps_the_first_saved_config(rig: Rig) -> None:
    p = spawn_payload(rig.host)
    rig.host.api.add("s", "spawn", p)
    rig.host.driver.crash_on = Operation.DEFINE
    with pytest.raises(Crash):
        rig.runner().run_once()
    assert rig.vfs.state(DIRECT_VF).mac == MAC_DIRECT      # programmed, then the agent died
    assert rig.runner().run_once() is True                  # resumed
    assert rig.host.api.results["s"]["ok"] is True
    j = rig.host.journal("s")
    assert j is not None
    assert [v.previous for v in j.vfs] == [BEFORE_1, BEFORE_2]   # not the programmed ones
    assert rig.run("d", "destroy", destroy_payload(p)) is True
    assert_vfs_as_before(rig)


def test_a_begun_spawn_the_server_ended_is_rolled_back_with_its_ports(rig: Rig) -> None:
    p = spawn_payload(rig.host)
    rig.host.api.add("s", "spawn", p)
    rig.host.driver.crash_on = Operation.START
    with pytest.raises(Crash):
        rig.runner().run_once()
    rig.host.api.states["s"] = "expired"
    rig.runner().run_once()
    assert "s" not in rig.host.api.results               # never reported
    assert not rig.host.driver.exists(domain_name(p["server"]["id"]))
    assert_vfs_as_before(rig)
    assert rig.switch.lines("unbind") == BINDINGS
    assert not rig.vf_file(p).exists()


def test_late_success_of_an_expired_spawn_is_rolled_back_with_its_ports(rig: Rig) -> None:
    p = spawn_payload(rig.host)
    rig.host.api.add("s", "spawn", p)
    runner = rig.runner()
    runner.client = _Expiring(rig.host.api)
    runner.run_once()
    assert not rig.host.driver.exists(domain_name(p["server"]["id"]))
    assert_vfs_as_before(rig)
    assert rig.switch.lines("unbind") == BINDINGS


class _Expiring:
    """The control plane expiring the task while the agent runs it."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api

    def poll_tasks(self, host: str, wait: float = 0.0) -> list[dict[str, Any]]:
        return self.api.poll_tasks(host, wait)

    def start_task(self, task_id: str) -> dict[str, Any]:
        return self.api.start_task(task_id)

    def report_task(self, task_id: str, ok: bool, message: str | None = None,
                    domain_xml: str | None = None) -> dict[str, Any]:
        self.api.states[task_id] = "expired"
        return self.api.report_task(task_id, ok, message, domain_xml)


# --- an agent without a VF programmer --------------------------------------------------------

def test_no_vf_programmer_fails_a_vf_port_clearly_touching_nothing(rig: Rig) -> None:
    p = spawn_payload(rig.host)
    rig.run("s", "spawn", p, programmer=None)
    res = rig.host.api.results["s"]
    assert res["ok"] is False
    assert f"the agent on {HOST} has no VF programmer configured" in res["message"]
    assert "direct port p-direct" in res["message"]
    assert rig.host.driver.calls == []
    assert not overlay_path(rig.host.state_dir, p["server"]["id"]).exists()
    assert rig.switch.lines() == [] and rig.vfs.calls == []


def test_no_vf_programmer_is_fine_for_ports_without_a_vf(rig: Rig) -> None:
    nics = interfaces()
    p = spawn_payload(rig.host, nics=[nics[2], nics[3]])      # direct-physical and normal
    rig.run("s", "spawn", p, programmer=None)
    assert rig.host.api.results["s"]["ok"] is True
    assert rig.switch.lines("bind") == BINDINGS[2:]
    assert rig.run("d", "destroy", destroy_payload(p), programmer=None) is True
    assert rig.host.api.results["d"]["ok"] is True
    assert rig.switch.lines("unbind") == BINDINGS[2:]


# --- the agent's choices -------------------------------------------------------------------------

def pf(address: str, netdev: str | None, num_vfs: int | None) -> PciDevice:
    return PciDevice(PciAddress.parse(address), "8086", "1592", "020000", dev_type=DevType.PF,
                     total_vfs=8, num_vfs=num_vfs,
                     netdevs=(NetDev(netdev),) if netdev else ())


def test_fake_programmer_tables_are_the_hosts_own_pfs() -> None:
    vf = PciDevice(PciAddress.parse("0000:3b:01.0"), "8086", "1889", "020000",
                   dev_type=DevType.VF, parent_addr=PciAddress.parse("0000:3b:00.0"),
                   netdevs=(NetDev("ens1f0v0"),))
    inv = Inventory(HostInfo(), (pf("0000:3b:00.0", "ens1f0", 4), pf("0000:3b:00.1", "ens1f1", 0),
                                 pf("0000:af:00.0", None, 2), pf("0000:d8:00.0", "ens5", 16), vf))
    assert sriov_tables(inv) == {"ens1f0": 4, "ens5": 16}
    fake = make_programmer(SriovKind.FAKE, lambda: inv)
    assert isinstance(fake, RecordingVfProgrammer)
    assert len(fake.table("ens1f0")) == 4 and len(fake.table("ens5")) == 16
    with pytest.raises(errors.VfProgrammingError, match="PF ens1f1 not found"):
        fake.read(VfSlot("ens1f1", 0))
    assert isinstance(make_programmer("netlink"), NetlinkVfProgrammer)
    with pytest.raises(errors.InvalidConfig) as info:
        make_programmer("sysfs")
    assert info.value.field == "agent.sriov"


def test_vf_store_round_trip_and_unreadable_files(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    store = VfStore(tmp_path / "vfs")
    saved = (SavedVf("p", DIRECT_VF, BEFORE_2),)
    assert store.load("s1") == ()
    store.save("s1", saved)
    assert store.load("s1") == saved
    store.file("s2").write_text('{"version": 1, "vfs": [{"pf": "x"}]}')
    assert store.load("s2") == ()
    assert "unreadable" in caplog.text
    store.remove("s1")
    store.remove("s1")                       # idempotent
    assert store.load("s1") == ()
    with pytest.raises(errors.InvalidInput):
        store.file("../etc")


def test_agent_refuses_an_unknown_switch_driver(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "agent", "--server", "http://127.0.0.1:9", "--token", "t", "--host-name", "h1",
        "--state-dir", str(tmp_path), "--sysfs-root", str(tmp_path), "--switch-driver", "nope",
    ], env={"PCIPASS_CONFIG": None, "PCIPASS_STATE_DIR": None})
    assert result.exit_code == 2, result.output
    assert "unknown switch driver 'nope'" in result.output
    assert "log, noop" in result.output
