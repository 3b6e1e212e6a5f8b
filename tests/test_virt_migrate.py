"""Hot attach/detach and migration in the virt layer: the libvirt driver (against
``test:///default`` where libvirt supports it, a recording layer where it does not), the fake
driver handing domains between two state directories, and the live-migration plan.

libvirt 9's test driver supports neither ``attachDeviceFlags``/``detachDeviceFlags`` nor
``migrateToURI3``: the tests below show it, and show that its refusals come out as
:class:`VirtError`. If a later libvirt grows support, the attach test checks the device for
real instead.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from pcipass.errors import InvalidInput, VirtError
from pcipass.virt.domain import DirectInterface, HostdevInterface
from pcipass.virt.driver import Operation, VirtDriver
from pcipass.virt.fake import Call, FakeVirtDriver, state_dir_of
from pcipass.virt.libvirt_calls import (
    ATTACH,
    DETACH,
    MIGRATE,
    LibvirtCall,
    RecordingDomainCalls,
    libvirt_error,
)
from pcipass.virt.libvirt_driver import MIGRATE_BASE, LibvirtDriver
from pcipass.virt.migration import Blocker, plan_live_migration
from pcipass.virt.xml import (
    build_domain_xml,
    direct_interface_element,
    hostdev_elements,
    hostdev_interface_element,
    read_hostdevs,
)
from test_virt_xml import SCHEMA, TEST_URI, a, need, spec, unit

VF = HostdevInterface("fa:16:3e:00:00:01", a("0000:5e:10.2"), vlan=42)
VF_UNMANAGED = HostdevInterface("fa:16:3e:00:00:02", a("0000:5e:10.3"), managed=False)
MACVTAP = DirectInterface("fa:16:3e:00:00:03", "ens1f0v3", vlan=7)
NIC = HostdevInterface("fa:16:3e:00:00:04", a("0000:5e:10.4"))


def frag(el: etree._Element) -> str:
    return etree.tostring(el, encoding="unicode")


VF_XML = frag(hostdev_interface_element(VF))
MACVTAP_XML = frag(direct_interface_element(MACVTAP))
GPU_XML = frag(hostdev_elements(unit("0000:3b:00.0"), 1)[0])

LIVE_CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG


# -- the libvirt driver against test:///default -----------------------------------------------

@pytest.fixture
def name() -> Iterator[str]:
    n = f"mig-{uuid.uuid4().hex[:12]}"
    yield n
    with LibvirtDriver(TEST_URI) as d:
        if d.exists(n):
            d.destroy(n)
            if d.exists(n):
                d.undefine(n)


def test_test_driver_hot_plug_is_real_or_refused_as_virt_error(name: str) -> None:
    """attachDeviceFlags on test:///default: libvirt 9 refuses it, and the refusal is ours."""
    with LibvirtDriver(TEST_URI) as d:
        d.define(build_domain_xml(spec(name, disk=None)))
        d.start(name)
        try:
            d.attach_device(name, MACVTAP_XML)
        except VirtError as exc:
            assert exc.operation == "attach_device"
            assert exc.driver_code == libvirt.VIR_ERR_NO_SUPPORT
            assert f"attach_device domain {name!r}" in exc.message
            assert "virDomainAttachDeviceFlags" in exc.message
            with pytest.raises(VirtError) as info:
                d.detach_device(name, MACVTAP_XML)
            assert info.value.operation == "detach_device"
            assert info.value.driver_code == libvirt.VIR_ERR_NO_SUPPORT
        else:   # a libvirt whose test driver hot-plugs: the device is really there and goes
            assert MACVTAP.mac in d.get_xml(name)
            d.detach_device(name, MACVTAP_XML)
            assert MACVTAP.mac not in d.get_xml(name)


def test_test_driver_refuses_migration_as_virt_error(name: str) -> None:
    with LibvirtDriver(TEST_URI) as d:
        d.define(build_domain_xml(spec(name, disk=None)))
        d.start(name)
        with pytest.raises(VirtError) as info:
            d.migrate(name, "qemu+tls://dest.example/system", live=True)
        err = info.value
        assert err.operation == "migrate"
        assert err.driver_code == libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED
        assert name in err.message and "qemu+tls://dest.example/system" in err.message
        assert d.is_active(name)     # nothing moved


# -- the libvirt driver through the recording layer -------------------------------------------

@pytest.fixture
def recorded(name: str) -> Iterator[tuple[LibvirtDriver, RecordingDomainCalls]]:
    calls = RecordingDomainCalls()
    with LibvirtDriver(TEST_URI, calls=calls) as d:
        d.define(build_domain_xml(spec(name, disk=None)))
        yield d, calls


@pytest.mark.parametrize(("live", "config", "flags"), [
    (True, True, LIVE_CONFIG),
    (True, False, libvirt.VIR_DOMAIN_AFFECT_LIVE),
    (False, True, libvirt.VIR_DOMAIN_AFFECT_CONFIG),
])
def test_attach_and_detach_flags(recorded: tuple[LibvirtDriver, RecordingDomainCalls],
                                 name: str, live: bool, config: bool, flags: int) -> None:
    d, calls = recorded
    d.attach_device(name, VF_XML, live=live, config=config)
    d.detach_device(name, GPU_XML, live=live, config=config)
    assert calls.calls == [LibvirtCall(ATTACH, name, VF_XML, flags),
                           LibvirtCall(DETACH, name, GPU_XML, flags)]


def test_attach_needs_live_or_config(recorded: tuple[LibvirtDriver, RecordingDomainCalls],
                                     name: str) -> None:
    d, calls = recorded
    with pytest.raises(InvalidInput):
        d.attach_device(name, VF_XML, live=False, config=False)
    with pytest.raises(InvalidInput):
        d.detach_device(name, VF_XML, live=False, config=False)
    assert calls.calls == []


def test_live_migration_call(recorded: tuple[LibvirtDriver, RecordingDomainCalls],
                             name: str) -> None:
    d, calls = recorded
    d.start(name)
    dest_xml = d.get_xml(name)
    d.migrate(name, "qemu+tls://dest.example/system", live=True, xml=dest_xml)
    assert calls.calls == [LibvirtCall(
        MIGRATE, name, "qemu+tls://dest.example/system",
        libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
        | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE,
        (("destination_xml", dest_xml), ("persistent_xml", dest_xml)))]
    assert libvirt.VIR_MIGRATE_PARAM_DEST_XML == "destination_xml"
    assert libvirt.VIR_MIGRATE_PARAM_PERSIST_XML == "persistent_xml"


def test_non_live_migration_of_running_and_stopped_domains(
        recorded: tuple[LibvirtDriver, RecordingDomainCalls], name: str) -> None:
    d, calls = recorded
    d.migrate(name, "qemu+ssh://b/system", live=False)       # stopped: the definition moves
    d.start(name)
    d.migrate(name, "qemu+ssh://b/system", live=False)       # running: paused for the copy
    assert calls.calls == [
        LibvirtCall(MIGRATE, name, "qemu+ssh://b/system",
                    MIGRATE_BASE | libvirt.VIR_MIGRATE_OFFLINE),
        LibvirtCall(MIGRATE, name, "qemu+ssh://b/system", MIGRATE_BASE),
    ]
    assert not MIGRATE_BASE & libvirt.VIR_MIGRATE_LIVE


def test_live_migration_of_a_stopped_domain_is_refused(
        recorded: tuple[LibvirtDriver, RecordingDomainCalls], name: str) -> None:
    d, calls = recorded
    with pytest.raises(VirtError, match="not running") as info:
        d.migrate(name, "qemu+ssh://b/system", live=True)
    assert info.value.operation == "migrate"
    assert calls.calls == []


@pytest.mark.parametrize(("method", "op", "call"), [
    (ATTACH, "attach_device", lambda d, n: d.attach_device(n, VF_XML)),
    (DETACH, "detach_device", lambda d, n: d.detach_device(n, VF_XML)),
    (MIGRATE, "migrate", lambda d, n: d.migrate(n, "qemu+ssh://b/system", live=True)),
])
def test_libvirt_errors_are_translated(recorded: tuple[LibvirtDriver, RecordingDomainCalls],
                                       name: str, method: str, op: str, call: object) -> None:
    d, calls = recorded
    d.start(name)
    calls.fail[method] = (libvirt.VIR_ERR_OPERATION_FAILED,
                          "operation failed: guest refused the change")
    with pytest.raises(VirtError) as info:
        call(d, name)  # type: ignore[operator]
    err = info.value
    assert err.operation == op
    assert err.driver_code == libvirt.VIR_ERR_OPERATION_FAILED
    assert name in err.message and "guest refused the change" in err.message
    assert [c.method for c in calls.calls] == [method]


def test_libvirt_error_helper_carries_code() -> None:
    exc = libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "gone")
    assert exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
    assert exc.get_error_message() == "gone"


def test_missing_domain_is_a_virt_error_before_any_call() -> None:
    calls = RecordingDomainCalls()
    with LibvirtDriver(TEST_URI, calls=calls) as d:
        for op, fn in {"attach_device": lambda: d.attach_device("nope", VF_XML),
                       "detach_device": lambda: d.detach_device("nope", VF_XML),
                       "migrate": lambda: d.migrate("nope", "qemu:///x", live=False)}.items():
            with pytest.raises(VirtError) as info:
                fn()
            assert info.value.operation == op
            assert info.value.driver_code == libvirt.VIR_ERR_NO_DOMAIN
    assert calls.calls == []


# -- the fake driver: hot attach and detach ---------------------------------------------------

@pytest.fixture
def fake(tmp_path: Path) -> FakeVirtDriver:
    return FakeVirtDriver(tmp_path / "a")


def running(fake: FakeVirtDriver, name: str, **kw: object) -> None:
    fake.define(build_domain_xml(spec(name, **kw)))
    fake.start(name)


def macs(xml: str) -> list[str]:
    return [m.get("address") or "" for m in etree.fromstring(xml.encode())
            .iterfind("devices/interface/mac")]


def test_fake_attach_and_detach_live_and_config(fake: FakeVirtDriver) -> None:
    running(fake, "vm1")
    fake.attach_device("vm1", VF_XML)
    fake.attach_device("vm1", MACVTAP_XML)
    fake.attach_device("vm1", GPU_XML)
    live = fake.get_xml("vm1")
    assert macs(live) == [VF.mac, MACVTAP.mac]
    assert {h.host for h in read_hostdevs(live, interfaces=True)} == {
        a("0000:3b:00.0"), VF.address}
    fake.destroy("vm1")                       # the definition got them too
    assert macs(fake.get_xml("vm1")) == [VF.mac, MACVTAP.mac]
    fake.start("vm1")
    fake.detach_device("vm1", VF_XML)
    # a hostdev is matched by its source address alone, an interface by its MAC alone
    fake.detach_device("vm1", "<hostdev mode='subsystem' type='pci'><source><address "
                       "domain='0x0000' bus='0x3b' slot='0x00' function='0x0'/></source>"
                       "</hostdev>")
    fake.detach_device("vm1", f"<interface type='direct'><mac address='{MACVTAP.mac.upper()}'"
                       "/></interface>")
    assert read_hostdevs(fake.get_xml("vm1"), interfaces=True) == ()
    assert macs(fake.get_xml("vm1")) == []
    assert [(c.operation, c.error) for c in fake.calls
            if c.operation in (Operation.ATTACH_DEVICE, Operation.DETACH_DEVICE)] == [
        (Operation.ATTACH_DEVICE, None)] * 3 + [(Operation.DETACH_DEVICE, None)] * 3


def test_fake_live_only_and_config_only(fake: FakeVirtDriver) -> None:
    running(fake, "vm1")
    fake.attach_device("vm1", VF_XML, config=False)
    assert macs(fake.get_xml("vm1")) == [VF.mac]
    fake.destroy("vm1")
    assert macs(fake.get_xml("vm1")) == []    # gone with the running guest
    fake.attach_device("vm1", MACVTAP_XML, live=False)
    with pytest.raises(VirtError, match="not running"):
        fake.attach_device("vm1", VF_XML)      # live asked, the domain is stopped
    fake.start("vm1")
    assert macs(fake.get_xml("vm1")) == [MACVTAP.mac]


def test_fake_transient_domain_has_no_config_to_change(fake: FakeVirtDriver) -> None:
    running(fake, "vm1")
    fake.undefine("vm1")
    with pytest.raises(VirtError, match="transient"):
        fake.attach_device("vm1", VF_XML)
    fake.attach_device("vm1", VF_XML, config=False)
    assert macs(fake.get_xml("vm1")) == [VF.mac]


def test_fake_detach_of_an_absent_device_says_so(fake: FakeVirtDriver) -> None:
    running(fake, "vm1", interfaces=(NIC,))
    with pytest.raises(VirtError) as info:
        fake.detach_device("vm1", VF_XML)
    assert info.value.operation == "detach_device"
    assert f"no interface with MAC {VF.mac}" in info.value.message
    assert "'vm1'" in info.value.message
    fake.attach_device("vm1", VF_XML, config=False)
    with pytest.raises(VirtError, match="persistent"):   # live has it, the definition not
        fake.detach_device("vm1", VF_XML)
    assert VF.mac in macs(fake.get_xml("vm1"))            # refused whole: nothing removed
    assert fake.calls[-1] == Call(Operation.DETACH_DEVICE, "vm1", fake.calls[-1].error)
    assert fake.calls[-1].error is not None


def test_fake_attach_keeps_the_one_domain_per_function_rule(fake: FakeVirtDriver) -> None:
    running(fake, "vm1", interfaces=(NIC,))
    running(fake, "vm2")
    with pytest.raises(VirtError, match="in use by driver QEMU, domain vm1"):
        fake.attach_device("vm2", frag(hostdev_interface_element(
            HostdevInterface("fa:16:3e:00:00:09", NIC.address))))
    with pytest.raises(VirtError, match="already in the running domain"):
        fake.attach_device("vm1", frag(hostdev_interface_element(NIC)))
    fake.attach_device("vm2", frag(hostdev_interface_element(
        HostdevInterface("fa:16:3e:00:00:09", NIC.address))), live=False)  # config only: fine
    assert read_hostdevs(fake.get_xml("vm2"), interfaces=True) == ()


def test_fake_attach_unmanaged_needs_detach_first(fake: FakeVirtDriver) -> None:
    running(fake, "vm1")
    xml = frag(hostdev_interface_element(VF_UNMANAGED))
    with pytest.raises(VirtError, match="nodedev detach first"):
        fake.attach_device("vm1", xml)
    fake.nodedev_detach(VF_UNMANAGED.address)
    fake.attach_device("vm1", xml)
    with pytest.raises(VirtError, match="in use"):
        fake.nodedev_reattach(VF_UNMANAGED.address)
    fake.detach_device("vm1", xml)
    fake.nodedev_reattach(VF_UNMANAGED.address)
    assert fake.detached == set()


@pytest.mark.parametrize("xml", ["<interface", "<disk type='file'/>",
                                 "<interface type='direct'/>"])
def test_fake_refuses_what_it_cannot_plug(fake: FakeVirtDriver, xml: str) -> None:
    running(fake, "vm1")
    with pytest.raises(VirtError) as info:
        fake.attach_device("vm1", xml)
    assert info.value.operation == "attach_device"
    assert macs(fake.get_xml("vm1")) == []


def test_fake_injected_attach_and_detach_failures(fake: FakeVirtDriver) -> None:
    running(fake, "vm1")
    fake.inject_failure(Operation.ATTACH_DEVICE, "guest did not answer", target="vm1")
    with pytest.raises(VirtError, match="guest did not answer"):
        fake.attach_device("vm1", VF_XML)
    assert macs(fake.get_xml("vm1")) == []
    fake.attach_device("vm1", VF_XML)
    fake.inject_failure(Operation.DETACH_DEVICE, "device busy")
    with pytest.raises(VirtError, match="device busy"):
        fake.detach_device("vm1", VF_XML)
    assert macs(fake.get_xml("vm1")) == [VF.mac]
    assert [c.error for c in fake.calls if c.operation is Operation.ATTACH_DEVICE] == [
        "attach_device domain 'vm1': guest did not answer", None]


# -- the fake driver: migration between two state directories ---------------------------------

@pytest.fixture
def dest(tmp_path: Path) -> FakeVirtDriver:
    return FakeVirtDriver(tmp_path / "b")


def test_fake_uri_round_trips(fake: FakeVirtDriver, tmp_path: Path) -> None:
    assert fake.uri == f"fake://{(tmp_path / 'a').resolve()}"
    assert state_dir_of(fake.uri) == (tmp_path / "a").resolve()
    odd = FakeVirtDriver(tmp_path / "with space#1")
    assert state_dir_of(odd.uri) == odd.state_dir.resolve()
    for bad in ("test:///default", "fake://host/x", "fake:relative"):
        with pytest.raises(InvalidInput):
            state_dir_of(bad)


def test_fake_live_migration_hands_the_domain_over(fake: FakeVirtDriver,
                                                   dest: FakeVirtDriver) -> None:
    running(fake, "vm1", interfaces=(MACVTAP,))
    fake.migrate("vm1", dest.uri, live=True)
    assert not fake.exists("vm1")
    assert dest.is_active("vm1") and macs(dest.get_xml("vm1")) == [MACVTAP.mac]
    dest.destroy("vm1")
    assert dest.exists("vm1")                 # persistent on the destination
    assert fake.calls[-1] == Call(Operation.MIGRATE, "vm1")
    assert dest.calls[-2] == Call(Operation.INCOMING_MIGRATION, "vm1")


def test_fake_migration_with_new_xml_moves_the_functions(fake: FakeVirtDriver,
                                                         dest: FakeVirtDriver) -> None:
    """A migratable function moves; the source's is free again, the destination's held."""
    src_fn, dst_fn = a("0000:3b:00.0"), a("0000:af:00.0")
    running(fake, "vm1", hostdevs=(unit(str(src_fn)),))
    fake.mark_migratable(src_fn)
    plan = plan_live_migration(fake.get_xml("vm1"), migratable={src_fn})
    new_xml = plan.destination_xml(hostdevs={src_fn: dst_fn})
    running(dest, "other", hostdevs=(unit(str(dst_fn)),))
    with pytest.raises(VirtError, match="in use by driver QEMU, domain other") as info:
        fake.migrate("vm1", dest.uri, live=True, xml=new_xml)   # the destination's is taken
    assert info.value.operation == "incoming_migration"
    assert fake.is_active("vm1") and not dest.exists("vm1")
    dest.destroy("other")
    fake.migrate("vm1", dest.uri, live=True, xml=new_xml)
    assert [h.host for h in read_hostdevs(dest.get_xml("vm1"))] == [dst_fn]
    running(fake, "vm2", hostdevs=(unit(str(src_fn)),))       # the source's is free again
    with pytest.raises(VirtError, match="in use by driver QEMU, domain vm1"):
        dest.start("other")


def test_fake_refuses_to_migrate_a_passed_through_function(fake: FakeVirtDriver,
                                                           dest: FakeVirtDriver) -> None:
    running(fake, "vm1", interfaces=(VF, MACVTAP))
    with pytest.raises(VirtError, match=re.escape(f"PCI device {VF.address}")) as info:
        fake.migrate("vm1", dest.uri, live=True)
    assert info.value.operation == "migrate"
    assert dest.list() == [] and fake.is_active("vm1")
    assert Operation.INCOMING_MIGRATION not in {c.operation for c in dest.calls}
    fake.detach_device("vm1", VF_XML)        # the plan's unplug, then it goes
    fake.migrate("vm1", dest.uri, live=True)
    assert dest.is_active("vm1")


def test_fake_one_function_one_domain_across_two_hosts(tmp_path: Path) -> None:
    """Two agents' fakes: the function a guest brings along must be free on arrival, and
    after arrival it is held there, not on the source."""
    a_, b_ = FakeVirtDriver(tmp_path / "a"), FakeVirtDriver(tmp_path / "b")
    running(a_, "vm1", interfaces=(NIC,))   # each host has a function at NIC's address
    running(b_, "vm2", interfaces=(NIC,))
    a_.mark_migratable(NIC.address)
    with pytest.raises(VirtError, match="in use by driver QEMU, domain vm2"):
        a_.migrate("vm1", b_.uri, live=True)
    assert a_.is_active("vm1") and not b_.exists("vm1")
    b_.destroy("vm2")
    a_.migrate("vm1", b_.uri, live=True)
    with pytest.raises(VirtError, match="in use by driver QEMU, domain vm1"):
        b_.start("vm2")                     # b's function now serves vm1
    running(a_, "vm3", interfaces=(NIC,))  # a's is free again
    assert a_.list() == ["vm3"]


def test_fake_non_live_and_offline_migration(fake: FakeVirtDriver,
                                             dest: FakeVirtDriver) -> None:
    fake.define(build_domain_xml(spec("stopped")))
    with pytest.raises(VirtError, match="not running"):
        fake.migrate("stopped", dest.uri, live=True)
    fake.migrate("stopped", dest.uri, live=False)
    assert dest.exists("stopped") and not dest.is_active("stopped")
    running(fake, "paused-copy")
    fake.migrate("paused-copy", dest.uri, live=False)
    assert dest.is_active("paused-copy") and fake.list() == []


def test_fake_migration_refusals(fake: FakeVirtDriver, dest: FakeVirtDriver,
                                 tmp_path: Path) -> None:
    running(fake, "vm1")
    cases = {
        "same host": fake.uri,
        "no fake hypervisor state": f"fake://{tmp_path / 'nowhere'}",
        "not a fake hypervisor URI": "qemu+ssh://b/system",
    }
    for message, uri in cases.items():
        with pytest.raises(VirtError, match=message) as info:
            fake.migrate("vm1", uri, live=True)
        assert info.value.operation == "migrate"
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(VirtError, match="Domain not found"):
        fake.migrate("nope", dest.uri, live=False)
    other = build_domain_xml(spec("vm1", uuid=uuid.uuid4()))
    with pytest.raises(VirtError, match="uuid"):
        fake.migrate("vm1", dest.uri, live=True, xml=other)
    dest.define(build_domain_xml(spec("vm1")))
    with pytest.raises(VirtError, match="already exists on the destination"):
        fake.migrate("vm1", dest.uri, live=True)
    assert fake.is_active("vm1")
    assert [c.operation for c in fake.calls].count(Operation.MIGRATE) == 6
    assert all(c.error for c in fake.calls if c.operation is Operation.MIGRATE)


@pytest.mark.parametrize("side", ["source", "destination"])
def test_fake_injected_migration_failures(fake: FakeVirtDriver, dest: FakeVirtDriver,
                                          side: str) -> None:
    running(fake, "vm1")
    if side == "source":
        fake.inject_failure(Operation.MIGRATE, "connection to destination lost")
    else:
        dest.inject_failure(Operation.INCOMING_MIGRATION, "connection to destination lost")
    with pytest.raises(VirtError, match="connection to destination lost"):
        fake.migrate("vm1", dest.uri, live=True)
    assert fake.is_active("vm1") and not dest.exists("vm1")
    assert (Operation.INCOMING_MIGRATION in {c.operation for c in dest.calls}) == (
        side == "destination")
    fake.migrate("vm1", dest.uri, live=True)     # injected once: the retry goes through
    assert dest.is_active("vm1")


def test_two_way_migrations_do_not_deadlock(tmp_path: Path) -> None:
    a_, b_ = FakeVirtDriver(tmp_path / "a"), FakeVirtDriver(tmp_path / "b")
    running(a_, "x")
    running(b_, "y")
    a_.migrate("x", b_.uri, live=True)
    b_.migrate("y", a_.uri, live=True)
    b_.migrate("x", a_.uri, live=True)
    assert a_.list() == ["x", "y"] and b_.list() == []


def test_every_driver_has_the_new_calls() -> None:
    assert {"attach_device", "detach_device", "migrate"} <= VirtDriver.__abstractmethods__
    assert {str(o) for o in (Operation.ATTACH_DEVICE, Operation.DETACH_DEVICE,
                             Operation.MIGRATE)} == {"attach_device", "detach_device",
                                                     "migrate"}


# -- the live-migration plan ------------------------------------------------------------------

GPU_FN = a("0000:3b:00.0")
MIXED = build_domain_xml(spec("mixed", hostdevs=(unit("0000:3b:00.0", "0000:3b:00.1"),),
                              interfaces=(VF, MACVTAP, VF_UNMANAGED)))


def test_plan_unplugs_vfs_moves_macvtaps_and_names_blockers() -> None:
    plan = plan_live_migration(MIXED)
    assert [u.mac for u in plan.unplug] == [VF.mac, VF_UNMANAGED.mac]
    assert [u.address for u in plan.unplug] == [VF.address, VF_UNMANAGED.address]
    assert plan.macvtaps == (MACVTAP.mac,)
    assert plan.hostdevs == ()
    assert [b.device for b in plan.blockers] == ["0000:3b:00.0", "0000:3b:00.1"]
    assert "live_migratable" in plan.blockers[0].reason
    assert not plan.allowed
    with pytest.raises(InvalidInput, match=re.escape("0000:3b:00.0")):
        plan.destination_xml()


def test_plan_with_migratable_functions_is_allowed() -> None:
    plan = plan_live_migration(MIXED, migratable={GPU_FN, a("0000:3b:00.1")})
    assert plan.allowed and plan.blockers == ()
    assert plan.hostdevs == (GPU_FN, a("0000:3b:00.1"))
    partly = plan_live_migration(MIXED, migratable={GPU_FN})
    assert partly.blockers == (Blocker("0000:3b:00.1", partly.blockers[0].reason),)


def test_plan_detach_fragments_detach_in_the_fake(fake: FakeVirtDriver) -> None:
    running(fake, "mixed", interfaces=(VF, MACVTAP))
    plan = plan_live_migration(fake.get_xml("mixed"))
    assert plan.allowed
    for u in plan.unplug:
        fake.detach_device("mixed", u.xml)
    assert macs(fake.get_xml("mixed")) == [MACVTAP.mac]


def test_plan_destination_xml() -> None:
    plan = plan_live_migration(MIXED, migratable={GPU_FN, a("0000:3b:00.1")})
    xml = plan.destination_xml(macvtaps={MACVTAP.mac: "enp94s0v5"},
                               hostdevs={GPU_FN: a("0000:af:00.0"),
                                         a("0000:3b:00.1"): a("0000:af:00.1")})
    root = etree.fromstring(xml.encode())
    assert macs(xml) == [MACVTAP.mac]
    assert root.find("devices/interface/source").get("dev") == "enp94s0v5"  # type: ignore[union-attr]
    assert root.find("devices/interface/source").get("mode") == "passthrough"  # type: ignore[union-attr]
    assert [h.host for h in read_hostdevs(xml)] == [a("0000:af:00.0"), a("0000:af:00.1")]
    assert [h.guest for h in read_hostdevs(xml)] == [h.guest for h in read_hostdevs(MIXED)]
    assert root.findtext("uuid") == etree.fromstring(MIXED.encode()).findtext("uuid")
    assert read_hostdevs(MIXED)[0].host == GPU_FN                  # the input is untouched


@pytest.mark.parametrize(("kw", "field"), [
    ({"macvtaps": {}}, "interfaces"),
    ({"macvtaps": {MACVTAP.mac: "x", "fa:16:3e:99:99:99": "y"}}, "interfaces"),
    ({"macvtaps": {MACVTAP.mac: "x"}, "hostdevs": {GPU_FN: GPU_FN}}, "hostdevs"),
])
def test_plan_destination_xml_needs_exactly_the_plans_devices(kw: dict[str, object],
                                                               field: str) -> None:
    plan = plan_live_migration(MIXED, migratable={GPU_FN, a("0000:3b:00.1")})
    with pytest.raises(InvalidInput) as info:
        plan.destination_xml(**kw)  # type: ignore[arg-type]
    assert info.value.field == field


def test_plan_replug_fragments() -> None:
    plan = plan_live_migration(MIXED)
    there = {VF.mac: HostdevInterface(VF.mac, a("0000:af:10.1"), vlan=42),
             VF_UNMANAGED.mac: HostdevInterface(VF_UNMANAGED.mac, a("0000:af:10.2"),
                                                managed=False)}
    fragments = plan.replug(there)
    assert [read_hostdevs(f"<domain><devices>{f}</devices></domain>", interfaces=True)[0].host
            for f in fragments] == [a("0000:af:10.1"), a("0000:af:10.2")]
    assert "<tag id=\"42\"/>" in fragments[0]
    with pytest.raises(InvalidInput, match="no destination VF"):
        plan.replug({VF.mac: there[VF.mac]})
    with pytest.raises(InvalidInput, match="carries MAC"):
        plan.replug({VF.mac: there[VF.mac], VF_UNMANAGED.mac: there[VF.mac]})


def test_plan_without_passthrough_is_trivially_allowed() -> None:
    plan = plan_live_migration(build_domain_xml(spec("plain")))
    assert plan.allowed and plan.unplug == () and plan.macvtaps == ()
    assert plan.replug({}) == ()
    with pytest.raises(InvalidInput):
        plan_live_migration("<domain")


# -- every attach fragment validates against libvirt's schema ---------------------------------

@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    if not SCHEMA.exists():
        need(f"libvirt's schema {SCHEMA} is missing (install libvirt-daemon)")
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def in_minimal_domain(fragment: str) -> etree._Element:
    root = etree.fromstring(b"<domain type='kvm'><name>d</name><memory>262144</memory>"
                            b"<os><type>hvm</type></os><devices/></domain>")
    root.find("devices").append(etree.fromstring(fragment.encode()))  # type: ignore[union-attr]
    return root


def attach_fragments() -> dict[str, str]:
    plan = plan_live_migration(MIXED)
    replug = plan.replug({VF.mac: HostdevInterface(VF.mac, a("0000:af:10.1"), vlan=4094),
                          VF_UNMANAGED.mac: HostdevInterface(VF_UNMANAGED.mac,
                                                             a("0000:af:10.2"), managed=False)})
    return {
        "vf": VF_XML, "vf-unmanaged": frag(hostdev_interface_element(VF_UNMANAGED)),
        "macvtap": MACVTAP_XML,
        "macvtap-novlan": frag(direct_interface_element(
            DirectInterface("fa:16:3e:00:00:05", "ens1f0v4"))),
        "hostdev": GPU_XML, "hostdev-vmd": frag(hostdev_elements(unit("10000:01:00.0"), 2)[0]),
        "replug-0": replug[0], "replug-1": replug[1],
        "unplug-0": plan.unplug[0].xml, "unplug-1": plan.unplug[1].xml,
    }


@pytest.mark.parametrize("case", sorted(attach_fragments()))
def test_attach_fragments_validate(schema: etree.RelaxNG, case: str) -> None:
    doc = in_minimal_domain(attach_fragments()[case])
    assert schema.validate(doc), f"{schema.error_log}\n{etree.tostring(doc).decode()}"


def test_the_fragment_check_has_teeth(schema: etree.RelaxNG) -> None:
    broken = VF_XML.replace("type=\"pci\"", "type=\"sideways\"")
    assert broken != VF_XML
    assert not schema.validate(in_minimal_domain(broken))
