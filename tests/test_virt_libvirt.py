"""The libvirt driver: lifecycle and error translation on ``test:///default``, the unmanaged
path through a fake nodedev layer, and the real QEMU driver of a private ``libvirtd``.

The ``libvirtd`` test starts Debian's daemon in session mode inside a temporary directory
(sockets, logs, pid, config, cache all there; as root it runs as ``nobody``, because a root
libvirtd always uses /run/libvirt), then asks it for the QEMU command line of generated XML
with ``virsh domxml-to-native qemu-argv``. It skips, loudly, where the daemon or QEMU is
missing or will not start, except with ``CI=true`` or ``PCIPASS_REQUIRE_LIBVIRTD=1``, where it
fails instead.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from pcipass.errors import InfrastructureError, InvalidInput, VirtError
from pcipass.pci.address import PciAddress
from pcipass.pci.device import NumaNode
from pcipass.virt.domain import DomainSpec, HostdevInterface, NumaPlacement, VirtType
from pcipass.virt.driver import DEFAULT_URI, Operation, VirtDriver, open_driver
from pcipass.virt.fake import FakeVirtDriver
from pcipass.virt.libvirt_driver import LibvirtDriver
from pcipass.virt.nodedev import FakeNodeDevices, LibvirtNodeDevices, nodedev_name
from pcipass.virt.xml import build_domain_xml
from test_virt_xml import GPU, TEST_URI, a, need, spec, unit


@pytest.fixture
def driver() -> Iterator[LibvirtDriver]:
    with LibvirtDriver(TEST_URI) as d:
        yield d


@pytest.fixture
def name(driver: LibvirtDriver) -> Iterator[str]:
    """A domain name of this test's own (test:///default is shared by the whole process)."""
    n = f"lv-{uuid.uuid4().hex[:12]}"
    yield n
    if driver.exists(n):
        driver.destroy(n)
        if driver.exists(n):
            driver.undefine(n)


def xml_for(name: str, **kw: Any) -> str:
    return build_domain_xml(spec(name, **kw))


# -- lifecycle --------------------------------------------------------------------------------

def test_define_start_destroy_undefine(driver: LibvirtDriver, name: str) -> None:
    assert not driver.exists(name)
    assert driver.define(xml_for(name, hostdevs=(GPU,))) == name
    assert driver.exists(name)
    assert name in driver.list()
    assert not driver.is_active(name)
    driver.start(name)
    assert driver.is_active(name)
    driver.destroy(name)
    assert not driver.is_active(name)
    driver.destroy(name)            # already stopped: nothing to do
    assert driver.exists(name)
    driver.undefine(name)
    assert not driver.exists(name)
    assert name not in driver.list()


def test_list_is_sorted_and_sees_other_domains(driver: LibvirtDriver, name: str) -> None:
    driver.define(xml_for(name))
    names = driver.list()
    assert names == sorted(names)
    assert {"test", name} <= set(names)   # the test driver's own domain is there too


def test_redefine_keeps_one_domain(driver: LibvirtDriver, name: str) -> None:
    driver.define(xml_for(name, vcpus=1))
    driver.define(xml_for(name, vcpus=3))
    assert "<vcpu placement='static'>3</vcpu>" in driver.get_xml(name)
    assert driver.list().count(name) == 1


def test_undefine_running_leaves_it_transient(driver: LibvirtDriver, name: str) -> None:
    driver.define(xml_for(name))
    driver.start(name)
    driver.undefine(name)
    assert driver.exists(name) and driver.is_active(name)
    driver.destroy(name)
    assert not driver.exists(name)


# -- errors: every call translates libvirt's errors -------------------------------------------

def test_start_undefined_domain_says_what_libvirt_said(driver: LibvirtDriver) -> None:
    with pytest.raises(VirtError) as info:
        driver.start("no-such-domain")
    err = info.value
    assert isinstance(err, InfrastructureError)
    assert err.code == "virt_error"
    assert err.operation == "start"
    assert err.driver_code == libvirt.VIR_ERR_NO_DOMAIN
    assert "no-such-domain" in err.message and "Domain not found" in err.message
    assert err.to_dict()["code"] == "virt_error"


def test_start_twice_is_an_error(driver: LibvirtDriver, name: str) -> None:
    driver.define(xml_for(name))
    driver.start(name)
    with pytest.raises(VirtError) as info:
        driver.start(name)
    assert info.value.operation == "start"
    assert "already running" in info.value.message


@pytest.mark.parametrize("xml", ["<domain>", "<domain type='kvm'><name>x</name></domain>",
                                 "<network/>"])
def test_define_bad_xml(driver: LibvirtDriver, xml: str) -> None:
    with pytest.raises(VirtError) as info:
        driver.define(xml)
    assert info.value.operation == "define"
    assert info.value.driver_code is not None


def test_define_name_clash_with_other_uuid(driver: LibvirtDriver, name: str) -> None:
    driver.define(xml_for(name))
    other = build_domain_xml(DomainSpec(name, uuid.uuid4(), 1, 256))
    with pytest.raises(VirtError, match="already exists"):
        driver.define(other)


def every_call(d: VirtDriver) -> dict[str, Callable[[], object]]:
    """Each driver method, called so that it must fail on a missing domain or device."""
    missing, addr = "missing-domain", PciAddress(0xFFFF, 0xFF, 0x1F, 7)
    return {
        "define": lambda: d.define("<domain type='kvm'><name>x</name></domain>"),
        "start": lambda: d.start(missing),
        "destroy": lambda: d.destroy(missing),
        "undefine": lambda: d.undefine(missing),
        "is_active": lambda: d.is_active(missing),
        "get_xml": lambda: d.get_xml(missing),
        "nodedev_detach": lambda: d.nodedev_detach(addr),
        "nodedev_reattach": lambda: d.nodedev_reattach(addr),
        "attach_device": lambda: d.attach_device(missing, "<interface type='direct'/>"),
        "detach_device": lambda: d.detach_device(missing, "<interface type='direct'/>"),
        "migrate": lambda: d.migrate(missing, "test:///default", live=True),
    }


def test_every_failure_is_a_virt_error(driver: LibvirtDriver) -> None:
    calls = every_call(driver)
    abstract = VirtDriver.__abstractmethods__ - {"exists", "list"}
    assert set(calls) == abstract      # the table covers the whole interface
    for op, call in calls.items():
        with pytest.raises(VirtError) as info:
            call()
        assert info.value.operation == op, op


def test_a_dead_connection_is_a_virt_error_everywhere() -> None:
    d = LibvirtDriver(TEST_URI)
    d.close()
    calls = {**every_call(d), "exists": lambda: d.exists("x"), "list": d.list}
    assert set(calls) == VirtDriver.__abstractmethods__
    for op, call in calls.items():
        with pytest.raises(VirtError, match="invalid connection"):
            call()
        assert op
    d.close()   # closing twice is harmless


def test_connect_failure() -> None:
    with pytest.raises(VirtError) as info:
        LibvirtDriver("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    assert info.value.operation == "connect"
    assert "/nonexistent/libvirt-sock" in info.value.message


def test_libvirt_does_not_print_errors(driver: LibvirtDriver,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(VirtError):
        driver.start("no-such-domain")
    assert "libvirt" not in capfd.readouterr().err


# -- nodedev: unmanaged devices ---------------------------------------------------------------

def test_nodedev_name() -> None:
    assert nodedev_name(a("0000:3b:00.1")) == "pci_0000_3b_00_1"
    assert nodedev_name(a("10000:01:1f.7")) == "pci_10000_01_1f_7"


def test_test_driver_has_no_pci_nodedevs(driver: LibvirtDriver) -> None:
    """Why the unmanaged path needs a fake: test:///default cannot detach anything."""
    conn = libvirt.open(TEST_URI)
    try:
        nodedevs = LibvirtNodeDevices(conn)
        with pytest.raises(VirtError) as info:
            nodedevs.detach(a("0000:3b:00.0"))
        assert info.value.operation == "nodedev_detach"
        assert "pci_0000_3b_00_0" in info.value.message
        with pytest.raises(VirtError) as info:
            nodedevs.reattach(a("0000:3b:00.0"))
        assert info.value.operation == "nodedev_reattach"
    finally:
        conn.close()


def test_unmanaged_path_with_fake_nodedevs(name: str) -> None:
    """What the agent does for an unmanaged unit: detach, define, start; then destroy,
    undefine, re-attach."""
    gpu = unit("0000:af:00.0", "0000:af:00.1", managed=False)
    vf = HostdevInterface("fa:16:3e:00:00:01", a("0000:5e:10.2"), managed=False)
    s = spec(name, hostdevs=(GPU, gpu), interfaces=(vf,))
    nodedevs = FakeNodeDevices.of([*GPU.addresses, *gpu.addresses, vf.address])
    with LibvirtDriver(TEST_URI, nodedevs=nodedevs) as d:
        for addr in s.unmanaged_addresses:
            d.nodedev_detach(addr)
        assert nodedevs.detached == {*gpu.addresses, vf.address}
        d.define(build_domain_xml(s))
        d.start(name)
        d.destroy(name)
        d.undefine(name)
        for addr in s.unmanaged_addresses:
            d.nodedev_reattach(addr)
    assert nodedevs.detached == set()
    assert nodedevs.calls == [
        *[(Operation.NODEDEV_DETACH, x) for x in s.unmanaged_addresses],
        *[(Operation.NODEDEV_REATTACH, x) for x in s.unmanaged_addresses],
    ]


def test_fake_nodedevs_fail_like_libvirt() -> None:
    nodedevs = FakeNodeDevices.of([a("0000:af:00.0")])
    with LibvirtDriver(TEST_URI, nodedevs=nodedevs) as d:
        with pytest.raises(VirtError, match="pci_0000_af_00_1"):
            d.nodedev_detach(a("0000:af:00.1"))
        nodedevs.fail[Operation.NODEDEV_DETACH] = "vfio-pci is not loaded"
        with pytest.raises(VirtError, match="vfio-pci is not loaded") as info:
            d.nodedev_detach(a("0000:af:00.0"))
        assert info.value.operation == "nodedev_detach"
    assert nodedevs.detached == set()


# -- choosing a driver ------------------------------------------------------------------------

def test_open_driver(tmp_path: Path) -> None:
    fake = open_driver("fake", state_dir=tmp_path)
    assert isinstance(fake, FakeVirtDriver)
    assert fake.state_dir == tmp_path / "virt"
    with open_driver("libvirt", uri=TEST_URI) as real:
        assert isinstance(real, LibvirtDriver)
        assert "test" in real.list()
    assert DEFAULT_URI == "qemu:///system"
    with pytest.raises(InvalidInput) as info:
        open_driver("xen")
    assert info.value.field == "driver"
    with pytest.raises(InvalidInput):
        open_driver("fake")


# -- a real libvirtd and its QEMU driver ------------------------------------------------------

@dataclass(frozen=True)
class Libvirtd:
    uri: str
    workdir: Path
    env: dict[str, str]
    user: int | None

    def virsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["virsh", "-c", self.uri, *args], env=self.env, user=self.user,
                              group=self.user, capture_output=True, text=True, timeout=120,
                              check=False)


def _log_tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-15:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[Libvirtd]:
    for tool in ("libvirtd", "virsh", "qemu-system-x86_64"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            need(f"{tool} is not installed (apt-get install libvirt-daemon-system "
                 "libvirt-clients qemu-system-x86)")
    daemon = shutil.which("libvirtd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    assert daemon is not None
    work = Path(tempfile.mkdtemp(prefix="pcipass-libvirtd-"))
    user: int | None = None
    if os.geteuid() == 0:
        user = pwd.getpwnam("nobody").pw_uid
    dirs = {k: work / k for k in ("sock", "run", "config", "cache", "data", "home")}
    for d in (work, *dirs.values()):
        d.mkdir(exist_ok=True)
        d.chmod(0o700)
        if user is not None:
            os.chown(d, user, user)
    log = work / "libvirtd.log"
    conf = work / "libvirtd.conf"
    conf.write_text(f'unix_sock_dir = "{dirs["sock"]}"\n'
                    f'log_outputs = "2:file:{log}"\n')
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin",
           "HOME": str(dirs["home"]), "XDG_RUNTIME_DIR": str(dirs["run"]),
           "XDG_CONFIG_HOME": str(dirs["config"]), "XDG_CACHE_HOME": str(dirs["cache"]),
           "XDG_DATA_HOME": str(dirs["data"]), "LC_ALL": "C"}
    sock = dirs["sock"] / "libvirt-sock"
    with (work / "stdout").open("w") as out:
        proc = subprocess.Popen([daemon, "--config", str(conf), "--pid-file",
                                 str(work / "libvirtd.pid")],
                                env=env, user=user, group=user, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                need(f"libvirtd did not start (exit {proc.poll()}): "
                     f"{_log_tail(work / 'stdout')}\n{_log_tail(log)}")
            time.sleep(0.05)
        yield Libvirtd(f"qemu+unix:///session?socket={sock}", work, env, user)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def qemu_devices(argv: str) -> list[dict[str, Any]]:
    """The ``-device`` options of a QEMU command line, JSON or ``key=value`` style."""
    words = shlex.split(argv)
    out: list[dict[str, Any]] = []
    for flag, value in itertools.pairwise(words):
        if flag != "-device":
            continue
        if value.startswith("{"):
            out.append(json.loads(value))
        else:
            driver, *rest = value.split(",")
            out.append({"driver": driver, **dict(kv.split("=", 1) for kv in rest if "=" in kv)})
    return out


def _qemu_host(addr: PciAddress) -> str:
    return f"{addr.domain:04x}:{addr.bus:02x}:{addr.slot:02x}.{addr.function:x}"


# The daemon runs without /dev/kvm, so these guests are TCG (type 'qemu'); NUMA uses host
# node 0, the one node every machine has. Interfaces are left out: domxml-to-native turns them
# into tap devices, which an unprivileged daemon may not create.
NATIVE = {
    "managed": spec(hostdevs=(unit("0000:5e:00.0"),)),
    "multifunction": spec(hostdevs=(GPU,)),
    "unmanaged": spec(hostdevs=(unit("0000:af:00.0", "0000:af:00.1", managed=False),)),
    "vmd": spec(hostdevs=(unit("10000:01:00.0"), unit("1abcd:02:00.0", "1abcd:02:00.3"))),
    "numa": spec(vcpus=2, memory_mb=1024, hostdevs=(GPU, unit("0000:d8:00.0")),
                 numa=NumaPlacement.even(2, 1024, [NumaNode(0, (0,))])),
    "renumbered": spec(hostdevs=(unit("0000:3b:00.1", "0000:3b:00.2"),
                                 unit("0000:3b:00.0", "0000:3c:00.0", managed=False))),
}


@pytest.mark.parametrize("case", sorted(NATIVE))
def test_qemu_argv_has_vfio_for_every_hostdev(libvirtd: Libvirtd, case: str) -> None:
    s = NATIVE[case]
    s = DomainSpec(s.name, s.uuid, s.vcpus, s.memory_mb, disk=s.disk, hostdevs=s.hostdevs,
                   numa=s.numa, virt_type=VirtType.QEMU)
    xml_file = libvirtd.workdir / f"{case}.xml"
    xml_file.write_text(build_domain_xml(s))
    xml_file.chmod(0o644)
    r = libvirtd.virsh("domxml-to-native", "qemu-argv", "--xml", str(xml_file))
    assert r.returncode == 0, f"{r.stderr}\n{_log_tail(libvirtd.workdir / 'libvirtd.log')}"
    devices = qemu_devices(r.stdout)
    vfio = [d for d in devices if d["driver"] == "vfio-pci"]
    assert sorted(d["host"] for d in vfio) == sorted(
        _qemu_host(x) for u in s.hostdevs for x in u.addresses)
    ports = {d["id"]: d for d in devices if d["driver"] == "pcie-root-port"}
    for u in s.hostdevs:   # a unit: one root port, its functions as the builder numbered them
        mine = {d["host"]: d for d in vfio if d["host"] in {_qemu_host(x) for x in u.addresses}}
        assert len({d["bus"] for d in mine.values()}) == 1
        assert next(iter(mine.values()))["bus"] in ports
        for host, fn in u.guest_functions():
            dev = mine[_qemu_host(host)]
            assert str(dev.get("addr")) == ("0x0" if fn == 0 else f"0x0.0x{fn}")
            multi = dev.get("multifunction") in (True, "on")
            assert multi == (fn == 0 and len(u.addresses) > 1)
    if s.numa is not None:
        assert "-numa" in r.stdout and '"host-nodes":[0]' in r.stdout


def test_libvirtd_refuses_what_it_must(libvirtd: Libvirtd) -> None:
    """The same path reports libvirt's refusal: NUMA memory bound to a node that is absent."""
    s = DomainSpec("bad", uuid.uuid4(), 1, 256, virt_type=VirtType.QEMU, hostdevs=(GPU,),
                   numa=NumaPlacement.even(1, 256, [NumaNode(4095, (0,))]))
    xml_file = libvirtd.workdir / "bad.xml"
    xml_file.write_text(build_domain_xml(s))
    xml_file.chmod(0o644)
    r = libvirtd.virsh("domxml-to-native", "qemu-argv", "--xml", str(xml_file))
    assert r.returncode != 0
    assert "4095" in r.stderr
