"""Live migration on the hosts: the agent's ``live_prepare`` (destination), ``live_migrate``
(source) and ``live_finish`` (destination) tasks, run by real :class:`TaskRunner` s over two
fake hypervisors (two state directories), each with its own VF tables and switch log; and
the same source task over the libvirt driver's recording seam.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
import pytest

from pcipass.agent.ports import SavedVf
from pcipass.host.sriov import RecordingVfProgrammer, VfConfig, VfSlot, effective
from pcipass.net.switch import NoopSwitchDriver
from pcipass.pci.address import PciAddress
from pcipass.pci.alias import Alias, AliasEntry
from pcipass.pci.device import DevType, HostInfo
from pcipass.pci.inventory import host_to_json, parse_host
from pcipass.records import (
    DeviceState,
    PortBinding,
    PortRecord,
    ServerDevice,
    ServerRecord,
    ServerStatus,
)
from pcipass.services.drain import blockers, live_aliases
from pcipass.virt.domain import DirectInterface, HostdevInterface
from pcipass.virt.driver import Operation
from pcipass.virt.fake import FakeVirtDriver
from pcipass.virt.libvirt_calls import ATTACH, DETACH, MIGRATE, RecordingDomainCalls
from pcipass.virt.libvirt_driver import LibvirtDriver
from pcipass.virt.payload import domain_name
from pcipass.virt.xml import build_domain_xml, parse_xml, read_hostdevs
from test_agent_ports import (
    BEFORE_1,
    BEFORE_2,
    DIRECT_VF,
    MAC_DIRECT,
    MAC_MACVTAP,
    MACVTAP_VF,
    Programmer,
    Rig,
    Switch,
    interfaces,
    programmed_1,
    programmed_2,
    spawn_payload,
)
from test_agent_tasks import CrashingDriver, FakeApi, Host
from test_virt_xml import TEST_URI, spec

DEST_DIRECT_VF = VfSlot("ens1f0", 5)
DEST_MACVTAP_VF = VfSlot("ens2f0", 2)
DEST_DIRECT_ADDR = "0000:5e:10.6"
DEST_MACVTAP_NETDEV = "ens2f0v2"
# What the destination's VFs hold before the move (unlike the source's, so a mix-up shows).
DEST_BEFORE = VfConfig(mac="02:00:00:00:09:09", vlan=None, spoofchk=True, trust=False,
                       link_state="auto", min_tx_rate_mbps=0, max_tx_rate_mbps=0)


class DestProgrammer(Programmer):
    def __init__(self, host: Host) -> None:
        RecordingVfProgrammer.__init__(self)
        self.add_pf("ens1f0", 8, initial=DEST_BEFORE)
        self.add_pf("ens2f0", 4, initial=DEST_BEFORE)
        self.host = host
        self.domain_seen = []


def make_host(root: Path, image: Path) -> Host:
    root.mkdir()
    return Host(root, FakeApi(), CrashingDriver(root / "state" / "virt"), image)


def dest_nics(nics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same ports bound to the destination's VFs."""
    direct, macvtap = (dict(n) for n in nics)
    direct.update(address=DEST_DIRECT_ADDR, vf_index=5, vf_netdev="ens1f0v5")
    macvtap.update(address="0000:5f:00.6", vf_index=2, vf_netdev=DEST_MACVTAP_NETDEV)
    return [direct, macvtap]


def prepare_payload(server: dict[str, Any], nics: list[dict[str, Any]]) -> dict[str, Any]:
    return {"server": server, "move": 1, "interfaces": dest_nics(nics), "devices": []}


finish_payload = prepare_payload


def migrate_payload(server: dict[str, Any], nics: list[dict[str, Any]],
                    dest_uri: str) -> dict[str, Any]:
    return {"server": server, "move": 1, "interfaces": nics, "devices": [],
            "dest_uri": dest_uri, "dest_interfaces": dest_nics(nics), "hostdevs": []}


class Pair:
    """A source and a destination host, each with its own agent state, VFs and switch."""

    def __init__(self, tmp: Path) -> None:
        image = tmp / "images" / "cirros.qcow2"
        image.parent.mkdir()
        image.write_bytes(b"")
        self.src = Rig(make_host(tmp / "src", image))
        dest_host = make_host(tmp / "dest", image)
        self.dest = Rig(dest_host)
        self.dest.vfs = DestProgrammer(dest_host)
        self.dest.switch = Switch(dest_host.root / "switch.jsonl", self.dest.vfs)
        self.nics = interfaces()[:2]             # a direct and a macvtap port
        self.spawn = spawn_payload(self.src.host, nics=self.nics)
        self.server = dict(self.spawn["server"])
        self.name = domain_name(self.server["id"])

    def dest_nics(self) -> list[dict[str, Any]]:
        return dest_nics(self.nics)

    def prepare(self) -> dict[str, Any]:
        return prepare_payload(self.server, self.nics)

    def migrate(self) -> dict[str, Any]:
        return migrate_payload(self.server, self.nics, self.dest.host.driver.uri)

    def finish(self) -> dict[str, Any]:
        return finish_payload(self.server, self.nics)

    def result(self, rig: Rig, task: str) -> dict[str, Any]:
        return rig.host.api.results[task]


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    p = Pair(tmp_path)
    assert p.src.run("spawn", "spawn", p.spawn)
    assert p.result(p.src, "spawn")["ok"], p.result(p.src, "spawn")
    return p


def ops(driver: FakeVirtDriver) -> list[str]:
    return [str(c.operation) for c in driver.calls if c.error is None]


def nics_of(xml: str) -> list[tuple[str | None, str | None, str | None]]:
    """(type, MAC, source dev or VF address) of each interface."""
    out = []
    for el in parse_xml(xml).iterfind("devices/interface"):
        mac = el.find("mac")
        src = el.find("source")
        where = None
        if el.get("type") == "direct" and src is not None:
            where = src.get("dev")
        elif el.get("type") == "hostdev":
            (hd,) = read_hostdevs(f"<domain><devices>{_tostr(el)}</devices></domain>",
                                  interfaces=True)
            where = str(hd.host)
        out.append((el.get("type"), None if mac is None else mac.get("address"), where))
    return out


def _tostr(el: Any) -> str:
    from lxml import etree
    return etree.tostring(el, encoding="unicode")


# --- the whole move ----------------------------------------------------------------------

def test_prepare_migrate_finish_moves_the_guest_and_its_ports(pair: Pair) -> None:
    src, dest = pair.src, pair.dest
    assert src.vfs.state(DIRECT_VF) == effective(BEFORE_1, programmed_1())

    # destination: its VFs programmed for the ports, the switch told; no domain yet
    assert dest.run("prep", "live_prepare", pair.prepare())
    assert pair.result(dest, "prep")["ok"], pair.result(dest, "prep")
    assert [(c.slot, c.config) for c in dest.vfs.ops("program")] == [
        (DEST_DIRECT_VF, programmed_1()), (DEST_MACVTAP_VF, programmed_2())]
    assert dest.vfs.state(DEST_DIRECT_VF).mac == MAC_DIRECT
    assert [(b["pf"], b["mac"]) for b in dest.switch.lines("bind")] == [
        ("ens1f0", MAC_DIRECT), ("ens2f0", MAC_MACVTAP)]
    assert dest.host.driver.list() == []
    j = dest.host.journal("prep")
    assert j is not None and j.vfs == (SavedVf("p-direct", DEST_DIRECT_VF, DEST_BEFORE),
                                       SavedVf("p-macvtap", DEST_MACVTAP_VF, DEST_BEFORE))
    assert dest.vf_file(pair.spawn).exists()       # a later destroy there restores them

    # source: the direct NIC unplugged, the guest moved with the destination's XML, the
    # source's VFs and switch given back
    assert src.run("mig", "live_migrate", pair.migrate())
    assert pair.result(src, "mig")["ok"], pair.result(src, "mig")
    calls = ops(src.host.driver)
    assert calls[calls.index("detach_device"):] == ["detach_device", "migrate"]
    assert not src.host.driver.exists(pair.name)
    assert dest.host.driver.is_active(pair.name)
    moved = dest.host.driver.get_xml(pair.name)
    assert nics_of(moved) == [("direct", MAC_MACVTAP, DEST_MACVTAP_NETDEV)]
    assert parse_xml(moved).find("devices/interface/target") is None
    assert [(c.slot, c.config) for c in src.vfs.ops("restore")] == [
        (DIRECT_VF, BEFORE_1), (MACVTAP_VF, BEFORE_2)]
    assert src.vfs.state(DIRECT_VF) == BEFORE_1 and src.vfs.state(MACVTAP_VF) == BEFORE_2
    assert [(b["pf"], b["mac"]) for b in src.switch.lines("unbind")] == [
        ("ens1f0", MAC_DIRECT), ("ens2f0", MAC_MACVTAP)]
    assert not src.vf_file(pair.spawn).exists()

    # destination: the direct NIC plugged on the destination's VF, live and in the definition
    assert dest.run("fin", "live_finish", pair.finish())
    res = pair.result(dest, "fin")
    assert res["ok"], res
    assert ("hostdev", MAC_DIRECT, DEST_DIRECT_ADDR) in nics_of(res["domain_xml"])
    assert sorted(nics_of(dest.host.driver.get_xml(pair.name))) == sorted([
        ("direct", MAC_MACVTAP, DEST_MACVTAP_NETDEV), ("hostdev", MAC_DIRECT, DEST_DIRECT_ADDR)])
    assert ops(dest.host.driver).count("attach_device") == 1

    # a later destroy on the destination gives back what the prepare saved there
    destroy = {"server": pair.server, "devices": [], "interfaces": pair.dest_nics()}
    assert dest.run("del", "destroy", destroy)
    assert pair.result(dest, "del")["ok"], pair.result(dest, "del")
    assert dest.vfs.state(DEST_DIRECT_VF) == DEST_BEFORE
    assert dest.vfs.state(DEST_MACVTAP_VF) == DEST_BEFORE


def test_a_failed_migrate_plugs_the_nics_back_and_the_destination_is_given_back(
        pair: Pair) -> None:
    src, dest = pair.src, pair.dest
    before = sorted(nics_of(src.host.driver.get_xml(pair.name)))
    assert ("hostdev", MAC_DIRECT, "0000:5e:10.2") in before
    assert dest.run("prep", "live_prepare", pair.prepare())
    src.host.driver.inject_failure(Operation.MIGRATE, "unable to connect to server at "
                                   "'dest:49152': Connection refused")

    assert src.run("mig", "live_migrate", pair.migrate())
    res = pair.result(src, "mig")
    assert res["ok"] is False and "Connection refused" in res["message"]
    # the guest keeps running on the source with its NIC plugged again, its VFs untouched
    assert src.host.driver.is_active(pair.name)
    assert sorted(nics_of(src.host.driver.get_xml(pair.name))) == before
    assert ops(src.host.driver)[-2:] == ["detach_device", "attach_device"]
    assert src.vfs.ops("restore") == []
    assert src.vfs.state(DIRECT_VF) == effective(BEFORE_1, programmed_1())
    assert src.switch.lines("unbind") == []
    assert not dest.host.driver.exists(pair.name)

    # the control plane's clean-up of the destination: a destroy there restores its VFs
    destroy = {"server": pair.server, "devices": [], "interfaces": pair.dest_nics()}
    assert dest.run("undo", "destroy", destroy)
    assert pair.result(dest, "undo")["ok"], pair.result(dest, "undo")
    assert dest.vfs.state(DEST_DIRECT_VF) == DEST_BEFORE
    assert dest.vfs.state(DEST_MACVTAP_VF) == DEST_BEFORE
    assert [(b["pf"], b["mac"]) for b in dest.switch.lines("unbind")] == [
        ("ens1f0", MAC_DIRECT), ("ens2f0", MAC_MACVTAP)]


def test_a_failed_prepare_undoes_itself(pair: Pair) -> None:
    dest = pair.dest
    dest.switch.fail_bind = 2
    assert dest.run("prep", "live_prepare", pair.prepare())
    res = pair.result(dest, "prep")
    assert res["ok"] is False and "refused VLAN" in res["message"]
    assert dest.vfs.state(DEST_DIRECT_VF) == DEST_BEFORE
    assert dest.vfs.state(DEST_MACVTAP_VF) == DEST_BEFORE
    # every binding journalled before its call is undone, the refused one included
    assert [(b["pf"], b["mac"]) for b in dest.switch.lines("unbind")] == [
        ("ens1f0", MAC_DIRECT), ("ens2f0", MAC_MACVTAP)]
    assert not dest.vf_file(pair.spawn).exists()


def test_prepare_without_a_vf_programmer_touches_nothing(pair: Pair) -> None:
    dest = pair.dest
    assert dest.run("prep", "live_prepare", pair.prepare(), programmer=None)
    res = pair.result(dest, "prep")
    assert res["ok"] is False and "no VF programmer" in res["message"]
    assert dest.vfs.calls == [] and dest.switch.lines() == []


def test_a_migrate_resumed_after_the_guest_left_only_releases_the_source(pair: Pair) -> None:
    """The agent died after the migrate call: the resumed task finds no domain here and
    finishes the source's clean-up."""
    src, dest = pair.src, pair.dest
    assert dest.run("prep", "live_prepare", pair.prepare())

    class Dies(Exception):
        pass

    real = src.host.driver.migrate

    def migrate_then_die(*a: Any, **kw: Any) -> None:
        real(*a, **kw)
        raise KeyboardInterrupt("agent killed")

    src.host.driver.migrate = migrate_then_die  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        src.run("mig", "live_migrate", pair.migrate())
    del src.host.driver.migrate
    assert dest.host.driver.is_active(pair.name)
    assert src.vfs.ops("restore") == []

    assert src.runner().run_once()               # the restarted agent resumes the task
    res = pair.result(src, "mig")
    assert res["ok"], res
    assert src.vfs.state(DIRECT_VF) == BEFORE_1 and src.vfs.state(MACVTAP_VF) == BEFORE_2
    assert ops(src.host.driver).count("migrate") == 1


def test_a_blocking_hostdev_refuses_before_anything_is_unplugged(pair: Pair) -> None:
    src = pair.src
    gpu = ('<hostdev mode="subsystem" type="pci" managed="yes"><source><address '
           'domain="0x0000" bus="0x3b" slot="0x00" function="0x0"/></source></hostdev>')
    src.host.driver.attach_device(pair.name, gpu)
    assert src.run("mig", "live_migrate", pair.migrate())
    res = pair.result(src, "mig")
    assert res["ok"] is False and "0000:3b:00.0" in res["message"]
    assert "detach_device" not in ops(src.host.driver)
    assert src.host.driver.is_active(pair.name)


def test_finish_is_idempotent(pair: Pair) -> None:
    src, dest = pair.src, pair.dest
    assert dest.run("prep", "live_prepare", pair.prepare())
    assert src.run("mig", "live_migrate", pair.migrate())
    assert dest.run("fin", "live_finish", pair.finish())
    dest.host.api.add("fin2", "live_finish", pair.finish())
    assert dest.runner().run_once()
    assert pair.result(dest, "fin2")["ok"]
    assert ops(dest.host.driver).count("attach_device") == 1


# --- host info -------------------------------------------------------------------------------

def test_host_info_carries_the_migration_uri() -> None:
    info = HostInfo(hostname="n1", cpus=4, memory_mb=1024, migration_uri="qemu+tcp://n1/system")
    assert host_to_json(info)["migration_uri"] == "qemu+tcp://n1/system"
    assert parse_host(host_to_json(info)) == info
    assert "migration_uri" not in host_to_json(HostInfo(hostname="n1"))
    assert parse_host({"hostname": "n1"}).migration_uri is None


def test_agent_migration_uri_defaults(tmp_path: Path) -> None:
    from pcipass.cli.agent import migration_uri
    from pcipass.virt.driver import DriverKind
    fake = FakeVirtDriver(tmp_path / "virt")
    assert migration_uri(DriverKind.FAKE, tmp_path, "n1") == fake.uri
    assert migration_uri(DriverKind.LIBVIRT, tmp_path, "n1") == "qemu+tcp://n1/system"
    assert migration_uri(DriverKind.LIBVIRT, tmp_path, "n1",
                         "qemu+tls://n1.example/system") == "qemu+tls://n1.example/system"


# --- the libvirt driver's recording seam -------------------------------------------------------

def test_libvirt_sees_detach_then_migrate_then_attach_on_the_destination(
        tmp_path: Path) -> None:
    sid = str(uuid.uuid4())
    name = domain_name(sid)
    server = {"id": sid, "name": "web-1", "project": "web"}
    nics = interfaces()[:2]
    src_calls, dest_calls = RecordingDomainCalls(), RecordingDomainCalls()
    xml = build_domain_xml(spec(name, uuid=uuid.UUID(sid), disk=None, interfaces=(
        HostdevInterface(MAC_DIRECT, PciAddress.parse("0000:5e:10.2"), 100),
        DirectInterface(MAC_MACVTAP, "ens2f0v1"))))
    image = tmp_path / "img"
    image.write_bytes(b"")
    vfs = RecordingVfProgrammer({"ens1f0": 8, "ens2f0": 4})
    dest_uri = "qemu+tcp://dest.example/system"
    try:
        with LibvirtDriver(TEST_URI, calls=src_calls) as src_driver, \
                LibvirtDriver(TEST_URI, calls=dest_calls) as dest_driver:
            src_driver.define(xml)
            src_driver.start(name)
            src = Host(tmp_path / "src", FakeApi(), src_driver, image)  # type: ignore[arg-type]
            dest = Host(tmp_path / "dst", FakeApi(), dest_driver, image)  # type: ignore[arg-type]
            src.api.add("mig", "live_migrate", migrate_payload(server, nics, dest_uri))
            assert src.runner(programmer=vfs, switch=NoopSwitchDriver()).run_once()
            assert src.api.results["mig"]["ok"], src.api.results["mig"]
            # (the recording seam moved nothing: the test driver's domain is the "destination")
            dest.api.add("fin", "live_finish", finish_payload(server, nics))
            assert dest.runner(programmer=vfs, switch=NoopSwitchDriver()).run_once()
            assert dest.api.results["fin"]["ok"], dest.api.results["fin"]
    finally:
        with LibvirtDriver(TEST_URI) as d:
            if d.exists(name):
                d.destroy(name)
                if d.exists(name):
                    d.undefine(name)

    assert [c.method for c in src_calls.calls] == [DETACH, MIGRATE]
    detach, migrate = src_calls.calls
    assert MAC_DIRECT in detach.target and detach.flags == libvirt.VIR_DOMAIN_AFFECT_LIVE
    assert migrate.target == dest_uri and migrate.flags & libvirt.VIR_MIGRATE_LIVE
    dest_xml = dict(migrate.params)["destination_xml"]
    assert nics_of(dest_xml) == [("direct", MAC_MACVTAP, DEST_MACVTAP_NETDEV)]
    assert [c.method for c in dest_calls.calls] == [ATTACH]
    (plugged,) = nics_of(f"<domain><devices>{dest_calls.calls[0].target}</devices></domain>")
    assert plugged == ("hostdev", MAC_DIRECT, DEST_DIRECT_ADDR)


# --- the verdict (services.drain.blockers, the one place) -------------------------------------

T = datetime(2024, 5, 1, tzinfo=UTC)


def held(address: str, alias: str | None, dev_type: DevType = DevType.PCI) -> ServerDevice:
    return ServerDevice(PciAddress.parse(address), alias, DeviceState.ALLOCATED, "10de",
                        "2230", dev_type, 0)


def port(address: str, vnic: str) -> PortRecord:
    return PortRecord(id=f"p-{vnic}", name=None, project="p", network_id="n", network="net1",
                      physical_network="physnet1", segmentation_id=100, vnic_type=vnic,
                      mac="fa:16:3e:00:00:09", trusted=False, spoofchk=True,
                      max_tx_rate_mbps=None, min_tx_rate_mbps=None, numa_affinity_policy=None,
                      server_id="s", auto_delete=True, status="ACTIVE",
                      binding=PortBinding("h1", PciAddress.parse(address), "ens1f0", 1, None),
                      created_at=T)


def server(devices: list[ServerDevice], ports: list[PortRecord]) -> ServerRecord:
    return ServerRecord(id="s", name="vm", project="p", status=ServerStatus.ACTIVE,
                        flavor="f", image="i", host="h1", devices=tuple(devices),
                        not_granted=(), fault=None, numa_cells=(), created_at=T, updated_at=T,
                        ports=tuple(ports))


LIVE_ALIAS = {"vgpu": Alias("vgpu", (AliasEntry("vgpu", live_migratable=True),)),
              "gpu": Alias("gpu", (AliasEntry("gpu"),))}
YES = {"live_migratable": "yes"}


@pytest.mark.parametrize(("devices", "ports", "tags", "expected"), [
    # VFs of macvtap and direct ports move (unplugged and plugged again for direct)
    ([held("0000:5e:10.1", "port:p-direct", DevType.VF),
      held("0000:5e:10.2", "port:p-macvtap", DevType.VF)],
     [port("0000:5e:10.1", "direct"), port("0000:5e:10.2", "macvtap")], {}, []),
    # a PF passed through whole for a direct-physical port does not
    ([held("0000:86:00.0", "port:p-direct-physical", DevType.PF)],
     [port("0000:86:00.0", "direct-physical")], {}, ["0000:86:00.0: port"]),
    # a plain GPU: its spec does not say live_migratable
    ([held("0000:3b:00.0", "gpu")], [], {},
     ["0000:3b:00.0 (alias 'gpu'): passed through, and its device spec"]),
    # spec yes, alias silent: the alias must agree
    ([held("0000:3b:00.0", "gpu")], [], {"0000:3b:00.0": YES},
     ["0000:3b:00.0 (alias 'gpu'): passed through, and its alias"]),
    # spec yes and alias yes: it moves
    ([held("0000:3b:00.0", "vgpu")], [], {"0000:3b:00.0": YES}, []),
    # a group mate handed out with a device is named as one
    ([held("0000:3b:00.1", None)], [], {}, ["0000:3b:00.1 (an IOMMU group mate)"]),
])
def test_the_live_migration_verdict(devices: list[ServerDevice], ports: list[PortRecord],
                                    tags: dict[str, dict[str, str]],
                                    expected: list[str]) -> None:
    found = blockers(server(devices, ports),
                     {PciAddress.parse(a): t for a, t in tags.items()},
                     live_aliases(LIVE_ALIAS))
    assert len(found) == len(expected), found
    for got, prefix in zip(found, expected, strict=True):
        assert got.startswith(prefix), got


def test_live_aliases_need_every_entry_to_say_yes() -> None:
    mixed = Alias("mixed", (AliasEntry("mixed", live_migratable=True), AliasEntry("mixed")))
    assert live_aliases({**LIVE_ALIAS, "mixed": mixed}) == frozenset({"vgpu"})


def test_a_migratable_function_moves_onto_the_destinations(tmp_path: Path) -> None:
    """A function whose host driver can migrate it (VFIO migration) stays plugged: the
    destination's XML names the destination's function instead."""
    p = Pair(tmp_path)
    p.spawn["devices"] = [{"address": "0000:3b:00.0", "alias": "vgpu", "managed": True,
                           "unit": 0}]
    assert p.src.run("spawn", "spawn", p.spawn)
    assert p.result(p.src, "spawn")["ok"], p.result(p.src, "spawn")
    p.src.host.driver.mark_migratable(PciAddress.parse("0000:3b:00.0"))
    assert p.dest.run("prep", "live_prepare", {
        **p.prepare(), "devices": [{"address": "0000:3c:00.0", "managed": True}]})
    payload = {**p.migrate(), "devices": [{"address": "0000:3b:00.0", "managed": True}],
               "hostdevs": [{"source": "0000:3b:00.0", "dest": "0000:3c:00.0"}]}
    assert p.src.run("mig", "live_migrate", payload)
    assert p.result(p.src, "mig")["ok"], p.result(p.src, "mig")
    moved = p.dest.host.driver.get_xml(p.name)
    assert [str(h.host) for h in read_hostdevs(moved)] == ["0000:3c:00.0"]
    # without the pairing the plan refuses before anything is unplugged
    (tmp_path / "again").mkdir()
    q = Pair(tmp_path / "again")
    q.spawn["devices"] = p.spawn["devices"]
    assert q.src.run("spawn", "spawn", q.spawn)
    q.src.host.driver.mark_migratable(PciAddress.parse("0000:3b:00.0"))
    assert q.src.run("mig", "live_migrate", {**q.migrate(), "hostdevs": []})
    res = q.result(q.src, "mig")
    assert res["ok"] is False and "0000:3b:00.0" in res["message"]
    assert "detach_device" not in ops(q.src.host.driver)
