"""The fake virt driver: libvirt's rules that matter, state that outlives the instance,
failures on demand, a record of calls."""

from __future__ import annotations

import json
import multiprocessing
import re
import uuid
from pathlib import Path

import pytest

from pcipass.errors import VirtError
from pcipass.virt.domain import DomainSpec, HostdevInterface
from pcipass.virt.driver import Operation, VirtDriver
from pcipass.virt.fake import Call, FakeVirtDriver
from pcipass.virt.xml import build_domain_xml, read_hostdevs
from test_virt_xml import GPU, a, spec, unit


@pytest.fixture
def fake(tmp_path: Path) -> FakeVirtDriver:
    return FakeVirtDriver(tmp_path / "virt")


def xml_for(name: str, **kw: object) -> str:
    return build_domain_xml(spec(name, **kw))


def test_is_a_virt_driver(fake: FakeVirtDriver) -> None:
    assert isinstance(fake, VirtDriver)


def test_lifecycle(fake: FakeVirtDriver) -> None:
    xml = xml_for("vm1", hostdevs=(GPU,))
    assert fake.list() == []
    assert not fake.exists("vm1")
    assert fake.define(xml) == "vm1"
    assert fake.exists("vm1") and not fake.is_active("vm1")
    assert read_hostdevs(fake.get_xml("vm1")) == read_hostdevs(xml)
    fake.start("vm1")
    assert fake.is_active("vm1")
    fake.destroy("vm1")
    fake.destroy("vm1")        # not running: nothing to do, like the libvirt driver
    assert not fake.is_active("vm1")
    fake.undefine("vm1")
    assert not fake.exists("vm1")
    assert fake.list() == []


def test_state_survives_a_new_instance(tmp_path: Path) -> None:
    first = FakeVirtDriver(tmp_path)
    first.define(xml_for("vm1"))
    first.define(xml_for("vm2", hostdevs=(unit("0000:af:00.0", managed=False),)))
    first.nodedev_detach(a("0000:af:00.0"))
    first.start("vm1")
    first.start("vm2")
    first.undefine("vm2")      # running, so it lives on as a transient domain
    again = FakeVirtDriver(tmp_path)
    assert again.list() == ["vm1", "vm2"]
    assert again.is_active("vm1") and again.is_active("vm2")
    assert again.detached == {a("0000:af:00.0")}
    again.destroy("vm2")
    assert FakeVirtDriver(tmp_path).list() == ["vm1"]


def test_names_with_odd_characters(fake: FakeVirtDriver) -> None:
    for name in ("..", "a b", "x%2Fy", "ünï"):
        assert fake.define(xml_for(name)) == name
    assert fake.list() == sorted(["..", "a b", "x%2Fy", "ünï"])
    assert {p.name for p in (fake.state_dir / "domains").iterdir()} == {
        "...xml", "a%20b.xml", "x%252Fy.xml", "%C3%BCn%C3%AF.xml"}


def test_libvirt_rules(fake: FakeVirtDriver) -> None:
    fake.define(xml_for("vm1", hostdevs=(GPU,)))
    with pytest.raises(VirtError, match="already exists with uuid"):
        fake.define(build_domain_xml(DomainSpec("vm1", uuid.uuid4(), 1, 256)))
    with pytest.raises(VirtError, match="'vm1' already exists"):
        fake.define(build_domain_xml(DomainSpec("other", spec("vm1").uuid, 1, 256)))
    fake.define(xml_for("vm1", vcpus=4))          # same name and uuid: a redefinition
    assert "<vcpu placement=\"static\">4</vcpu>" in fake.get_xml("vm1")
    fake.start("vm1")
    with pytest.raises(VirtError, match="already running") as info:
        fake.start("vm1")
    assert info.value.operation == "start"
    for op in (fake.start, fake.destroy, fake.undefine, fake.is_active, fake.get_xml):
        with pytest.raises(VirtError, match="Domain not found: no domain with matching name"):
            op("ghost")
    with pytest.raises(VirtError, match="XML error"):
        fake.define("<domain>")
    with pytest.raises(VirtError, match="XML error"):
        fake.define("<domain type='kvm'/>")


def test_define_without_uuid_gets_one(fake: FakeVirtDriver) -> None:
    fake.define("<domain type='kvm'><name>bare</name></domain>")
    assert uuid.UUID(str(fake.get_xml("bare").split("<uuid>")[1].split("</uuid>")[0]))


def test_a_device_serves_one_running_domain(fake: FakeVirtDriver) -> None:
    fake.define(xml_for("vm1", hostdevs=(GPU,)))
    fake.define(xml_for("vm2", hostdevs=(unit("0000:3b:00.1"),)))
    vf = a("0000:5e:10.2")
    fake.define(xml_for("vm3", interfaces=(HostdevInterface("fa:16:3e:00:00:01", vf),)))
    fake.define(xml_for("vm4", hostdevs=(unit("0000:5e:10.2"),)))
    fake.start("vm1")
    busy = re.escape("0000:3b:00.1 is in use by driver QEMU, domain vm1")
    with pytest.raises(VirtError, match=busy):
        fake.start("vm2")
    fake.start("vm3")
    with pytest.raises(VirtError, match="domain vm3"):
        fake.start("vm4")
    fake.destroy("vm1")
    fake.start("vm2")


def test_unmanaged_devices_must_be_detached_first(fake: FakeVirtDriver) -> None:
    gpu = unit("0000:af:00.0", "0000:af:00.1", managed=False)
    s = spec("vm1", hostdevs=(gpu,), interfaces=(
        HostdevInterface("fa:16:3e:00:00:01", a("0000:5e:10.2"), managed=False),))
    fake.define(build_domain_xml(s))
    with pytest.raises(VirtError, match="not detached"):
        fake.start("vm1")
    for addr in s.unmanaged_addresses[:-1]:
        fake.nodedev_detach(addr)
    with pytest.raises(VirtError, match=re.escape("0000:af:00.1 is not detached")):
        fake.start("vm1")
    fake.nodedev_detach(s.unmanaged_addresses[-1])
    fake.nodedev_detach(s.unmanaged_addresses[-1])        # twice: still fine
    fake.start("vm1")
    with pytest.raises(VirtError, match="in use by driver QEMU, domain vm1") as info:
        fake.nodedev_reattach(a("0000:af:00.0"))
    assert info.value.operation == "nodedev_reattach"
    fake.destroy("vm1")
    for addr in s.unmanaged_addresses:
        fake.nodedev_reattach(addr)
    fake.nodedev_reattach(a("0000:af:00.0"))              # not detached: nothing to do
    assert fake.detached == set()


def test_injected_failures(fake: FakeVirtDriver) -> None:
    fake.define(xml_for("vm1"))
    fake.define(xml_for("vm2"))
    fake.inject_failure(Operation.START, "internal error: qemu unexpectedly closed the monitor",
                        target="vm1")
    fake.start("vm2")                                      # another target: not affected
    with pytest.raises(VirtError) as info:
        fake.start("vm1")
    assert info.value.message == ("start domain 'vm1': internal error: qemu unexpectedly "
                                  "closed the monitor")
    assert info.value.operation == "start"
    assert not fake.is_active("vm1")                       # it failed before changing anything
    fake.start("vm1")                                      # once only, by default

    fake.inject_failure("destroy", times=2)
    for _ in range(2):
        with pytest.raises(VirtError, match="injected failure"):
            fake.destroy("vm1")
    fake.destroy("vm1")

    fake.inject_failure("define", "disk full", times=None)
    for _ in range(3):
        with pytest.raises(VirtError, match="disk full"):
            fake.define(xml_for("vm3"))
    fake.clear_failures()
    fake.define(xml_for("vm3"))

    fake.inject_failure(Operation.NODEDEV_DETACH, "no vfio", target="0000:af:00.0")
    refused = re.escape("nodedev_detach PCI device 0000:af:00.0: no vfio")
    with pytest.raises(VirtError, match=refused):
        fake.nodedev_detach(a("0000:af:00.0"))
    assert fake.detached == set()

    fake.inject_failure(Operation.LIST, "connection reset")
    with pytest.raises(VirtError, match="connection reset"):
        fake.list()


def test_failures_injected_from_another_instance(tmp_path: Path) -> None:
    """A test injects into the state directory an agent process uses."""
    agent = FakeVirtDriver(tmp_path)
    agent.define(xml_for("vm1"))
    FakeVirtDriver(tmp_path).inject_failure("start", "boom")
    with pytest.raises(VirtError, match="boom"):
        agent.start("vm1")
    assert json.loads((tmp_path / "failures.json").read_text()) == []


def test_calls_are_recorded_with_outcomes(tmp_path: Path) -> None:
    fake = FakeVirtDriver(tmp_path)
    fake.define(xml_for("vm1"))
    fake.inject_failure("start", "boom")
    with pytest.raises(VirtError):
        fake.start("vm1")
    fake.start("vm1")
    fake.exists("vm1")           # reads are not recorded
    fake.list()
    fake.nodedev_detach(a("10000:01:00.0"))
    fake.destroy("vm1")
    fake.undefine("vm1")
    fake.nodedev_reattach(a("10000:01:00.0"))
    expected = [
        Call(Operation.DEFINE, "vm1"),
        Call(Operation.START, "vm1", "start domain 'vm1': boom"),
        Call(Operation.START, "vm1"),
        Call(Operation.NODEDEV_DETACH, "10000:01:00.0"),
        Call(Operation.DESTROY, "vm1"),
        Call(Operation.UNDEFINE, "vm1"),
        Call(Operation.NODEDEV_REATTACH, "10000:01:00.0"),
    ]
    assert fake.calls == expected
    assert FakeVirtDriver(tmp_path).calls == expected     # on disk, for other processes


def test_a_fresh_state_dir_has_no_calls(fake: FakeVirtDriver) -> None:
    assert fake.calls == []
    assert fake.detached == set()


def _define_many(state_dir: str, worker: int) -> None:
    d = FakeVirtDriver(state_dir)
    for i in range(20):
        d.define(xml_for(f"w{worker}-{i}"))
        d.start(f"w{worker}-{i}")


def test_processes_share_a_state_dir(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_define_many, args=(str(tmp_path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    fake = FakeVirtDriver(tmp_path)
    assert len(fake.list()) == 60
    assert len(fake.calls) == 120
    assert all(fake.is_active(n) for n in fake.list())
