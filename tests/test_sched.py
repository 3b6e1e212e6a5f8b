"""The scheduler's rules, one shared table of named cases built with small builders.

Every case also checks that ``fit`` left its inputs exactly as it found them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from pcipass.errors import InvalidInput
from pcipass.pci.address import PciAddress
from pcipass.pci.alias import parse_aliases
from pcipass.pci.device import DevType, PciDevice
from pcipass.pci.request import pci_requests
from pcipass.records import DeviceState
from pcipass.sched import (
    BootRequest,
    DeviceView,
    Fit,
    HostView,
    NoFit,
    NoFitCode,
    NoPlacement,
    NumaCell,
    Placement,
    WeighPolicy,
    dependants,
    explain,
    fit,
    schedule,
    unit_reasons,
    units,
    weigh,
)

AVAILABLE = DeviceState.AVAILABLE
CLAIMED = DeviceState.CLAIMED
ALLOCATED = DeviceState.ALLOCATED
RESERVED = DeviceState.RESERVED
UNAVAILABLE = DeviceState.UNAVAILABLE

ALIASES = parse_aliases([
    {"name": "gpu", "vendor_id": "10de", "match": {"class_code": "03"}},
    {"name": "a100", "vendor_id": "10de", "product_id": "20b5"},
    {"name": "vf", "device_type": "type-VF", "match": {"physical_network": "physnet1"}},
    {"name": "vf2", "device_type": "type-VF", "match": {"physical_network": "physnet2"}},
    {"name": "pf", "vendor_id": "8086", "device_type": "type-PF"},
    {"name": "nic", "vendor_id": "8086"},
])


# --- builders ---------------------------------------------------------------------------------

def a(text: str) -> PciAddress:
    return PciAddress.parse(text)


def device(addr: str, *, vendor: str = "10de", product: str = "20b5", cls: str = "030200",
           group: int | None = None, numa: int | None = 0, assignable: bool = True,
           dev_type: DevType = DevType.PCI, parent: str | None = None,
           tags: dict[str, str] | None = None, driver: str | None = "vfio-pci",
           also_in_group: Iterable[str] = (), state: DeviceState = AVAILABLE,
           reserved: bool = False) -> DeviceView:
    """A device; ``host()`` fills in its group's members from the other devices."""
    return DeviceView(PciDevice(
        address=a(addr), vendor_id=vendor, product_id=product, class_code=cls,
        dev_type=dev_type, parent_addr=a(parent) if parent else None, numa_node=numa,
        iommu_group=group, iommu_group_members=tuple(a(m) for m in also_in_group),
        driver=driver, assignable=assignable, tags=tags or {},
    ), state, reserved)


def gpu(addr: str, group: int | None, *, product: str = "20b5", **kw: Any) -> DeviceView:
    return device(addr, group=group, product=product, **kw)


def audio(addr: str, group: int, **kw: Any) -> DeviceView:
    return device(addr, group=group, product="10fa", cls="040300", **kw)


def bridge(addr: str, group: int) -> DeviceView:
    return device(addr, group=group, vendor="10b5", product="8747", cls="060400",
                  assignable=False, driver="pcieport")


def nvme(addr: str, group: int) -> DeviceView:
    return device(addr, group=group, vendor="144d", product="a808", cls="010802",
                  assignable=False, driver="nvme")


def pf(addr: str, group: int, *, physnet: str = "physnet1", **kw: Any) -> DeviceView:
    return device(addr, group=group, vendor="8086", product="1592", cls="020000",
                  dev_type=DevType.PF, tags={"physical_network": physnet}, **kw)


def vf(addr: str, parent: str, group: int, *, physnet: str = "physnet1",
       tags: dict[str, str] | None = None, **kw: Any) -> DeviceView:
    return device(addr, group=group, vendor="8086", product="1889", cls="020000",
                  dev_type=DevType.VF, parent=parent,
                  tags={"physical_network": physnet, **(tags or {})}, **kw)


def cells(*spec: tuple[int, int, int, int | None]) -> tuple[NumaCell, ...]:
    return tuple(NumaCell(i, c, r, s) for i, c, r, s in spec)


TWO_CELLS = cells((0, 16, 32768, 0), (1, 16, 32768, 1))


def host(*devices: DeviceView, name: str = "h1", numa: tuple[NumaCell, ...] = TWO_CELLS,
         vcpus: int = 32, ram: int = 65536) -> HostView:
    groups: dict[int, set[PciAddress]] = {}
    for d in devices:
        if d.device.iommu_group is not None:
            groups.setdefault(d.device.iommu_group, set()).update(
                (d.address, *d.device.iommu_group_members))
    filled = tuple(
        replace(d, device=replace(d.device, iommu_group_members=tuple(sorted(
            groups[d.device.iommu_group])))) if d.device.iommu_group is not None else d
        for d in devices)
    return HostView(name, vcpus, ram, numa, filled)


def boot(hard: str | None = "gpu:1", *, soft: str | None = None, vcpus: int = 2,
         ram: int = 2048, numa: int | None = None, policy: str | None = None) -> BootRequest:
    specs: dict[str, str] = {}
    if hard:
        specs["pci_passthrough:alias"] = hard
    if soft:
        specs["pci_passthrough:alias_preferred"] = soft
    if policy:
        specs["hw:pci_numa_affinity_policy"] = policy
    return BootRequest(vcpus, ram, numa, pci_requests(specs, {}, ALIASES))


# --- the table ----------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    host: HostView
    req: BootRequest
    devices: dict[str, set[str]] | None = None      # alias -> exactly these matched devices
    riders: set[str] = field(default_factory=set)
    cells: tuple[int, ...] | None = None
    not_granted: tuple[str, ...] = ()
    remote: int | None = None
    code: NoFitCode | None = None
    text: str | None = None


GPU_AUDIO = (gpu("0000:3b:00.0", 10), audio("0000:3b:00.1", 10))
ONE_SOCKET = cells((0, 16, 32768, 0), (1, 0, 32768, 0), (2, 16, 32768, 1))
NO_SOCKETS = cells((0, 16, 32768, None), (1, 0, 32768, None))
CELL1_FULL = cells((0, 16, 32768, 0), (1, 0, 32768, 1))

CASES = [
    # -- plain and IOMMU units
    Case("one gpu", host(gpu("0000:3b:00.0", 10)), boot(), {"gpu": {"0000:3b:00.0"}}),
    Case("gpu and its audio are one unit", host(*GPU_AUDIO), boot(),
         {"gpu": {"0000:3b:00.0"}}, riders={"0000:3b:00.1"}),
    Case("units count one each", host(*GPU_AUDIO, gpu("0000:5e:00.0", 11),
                                      audio("0000:5e:00.1", 11)), boot("gpu:2"),
         {"gpu": {"0000:3b:00.0", "0000:5e:00.0"}}, riders={"0000:3b:00.1", "0000:5e:00.1"}),
    Case("two gpus in one group are not split", host(gpu("0000:3b:00.0", 10),
                                                     gpu("0000:3c:00.0", 10)), boot("gpu:1"),
         code=NoFitCode.PCI_GROUPS,
         text="has free 'gpu' devices only in IOMMU groups that hold more than 1"),
    Case("two gpus in one group go together", host(gpu("0000:3b:00.0", 10),
                                                   gpu("0000:3c:00.0", 10)), boot("gpu:2"),
         {"gpu": {"0000:3b:00.0", "0000:3c:00.0"}}),
    Case("a host nvme in the group blocks it", host(gpu("0000:3b:00.0", 10),
                                                    nvme("0000:3c:00.0", 10)), boot(),
         code=NoFitCode.PCI_COUNT, text="lacks 1 free 'gpu' device"),
    Case("an unreported member blocks the group",
         host(gpu("0000:3b:00.0", 10, also_in_group=["0000:3b:00.2"])), boot(),
         code=NoFitCode.PCI_COUNT),
    Case("a bridge in the group is left out", host(bridge("0000:3a:00.0", 10),
                                                   gpu("0000:3b:00.0", 10)), boot(),
         {"gpu": {"0000:3b:00.0"}}),
    Case("no IOMMU group", host(gpu("0000:3b:00.0", None)), boot(),
         code=NoFitCode.PCI_COUNT),
    Case("behind VMD", host(gpu("10000:01:00.0", None)), boot(),
         code=NoFitCode.PCI_COUNT),
    Case("not in the device spec", host(gpu("0000:3b:00.0", 10, assignable=False)), boot(),
         code=NoFitCode.PCI_COUNT),
    Case("only free devices", host(gpu("0000:3b:00.0", 10, state=CLAIMED),
                                   gpu("0000:3c:00.0", 11, state=ALLOCATED),
                                   gpu("0000:3d:00.0", 12, reserved=True),
                                   gpu("0000:3e:00.0", 13, state=RESERVED),
                                   gpu("0000:3f:00.0", 14)), boot(),
         {"gpu": {"0000:3f:00.0"}}),
    Case("only free devices, counted", host(gpu("0000:3b:00.0", 10, state=ALLOCATED),
                                            gpu("0000:3f:00.0", 14)), boot("gpu:2"),
         code=NoFitCode.PCI_COUNT, text="lacks 2 free 'gpu' devices"),
    Case("matching by every alternative and attribute",
         host(gpu("0000:3b:00.0", 10, product="1eb8"), gpu("0000:3c:00.0", 11)),
         boot("gpu:1, a100:1"), {"gpu": {"0000:3b:00.0"}, "a100": {"0000:3c:00.0"}}),
    # -- PF/VF exclusion
    Case("a PF is never handed to an untyped request", host(pf("0000:af:00.0", 20)),
         boot("nic:1"), code=NoFitCode.PCI_COUNT),
    Case("a PF for type-PF", host(pf("0000:af:00.0", 20),
                                  vf("0000:af:01.0", "0000:af:00.0", 21)), boot("pf:1"),
         {"pf": {"0000:af:00.0"}}),
    Case("a PF while its VF is used", host(pf("0000:af:00.0", 20),
                                           vf("0000:af:01.0", "0000:af:00.0", 21,
                                              state=ALLOCATED)), boot("pf:1"),
         code=NoFitCode.PCI_COUNT),
    Case("a VF while its PF is used", host(pf("0000:af:00.0", 20, state=ALLOCATED),
                                           vf("0000:af:01.0", "0000:af:00.0", 21)),
         boot("vf:1"), code=NoFitCode.PCI_COUNT),
    Case("a PF and its own VF at once", host(pf("0000:af:00.0", 20),
                                             vf("0000:af:01.0", "0000:af:00.0", 21)),
         boot("pf:1, vf:1"), code=NoFitCode.PCI_TOGETHER,
         text="cannot give 1 x pf, 1 x vf at once (PF/VF exclusion or devices wanted by two "
              "requests)"),
    Case("a PF and another card's VF", host(pf("0000:af:00.0", 20),
                                            vf("0000:af:01.0", "0000:af:00.0", 21),
                                            pf("0000:b0:00.0", 30, physnet="physnet2"),
                                            vf("0000:b0:01.0", "0000:b0:00.0", 31,
                                               physnet="physnet2")),
         boot("vf:1, pf:1"), {"vf": {"0000:af:01.0"}, "pf": {"0000:b0:00.0"}}),
    Case("VFs pack onto a PF already in use", host(
        pf("0000:af:00.0", 20), vf("0000:af:01.0", "0000:af:00.0", 21),
        pf("0000:b0:00.0", 30), vf("0000:b0:01.0", "0000:b0:00.0", 31, state=ALLOCATED),
        vf("0000:b0:01.1", "0000:b0:00.0", 32)), boot("vf:1"), {"vf": {"0000:b0:01.1"}}),
    Case("an unexplained unavailable VF blocks its PF", host(
        pf("0000:af:00.0", 20), vf("0000:af:01.0", "0000:af:00.0", 21, state=UNAVAILABLE)),
         boot("pf:1"), code=NoFitCode.PCI_COUNT),
    Case("a PF unavailable for its used VF leaves the other VFs", host(
        pf("0000:af:00.0", 20, state=UNAVAILABLE),
        vf("0000:af:01.0", "0000:af:00.0", 21, state=ALLOCATED),
        vf("0000:af:01.1", "0000:af:00.0", 22)), boot("vf:1"), {"vf": {"0000:af:01.1"}}),
    Case("a VF sharing its PF's group is not a VF unit", host(
        pf("0000:af:00.0", 20), vf("0000:af:01.0", "0000:af:00.0", 20)), boot("vf:1"),
         code=NoFitCode.PCI_COUNT),
    Case("...but the PF takes it along", host(
        pf("0000:af:00.0", 20), vf("0000:af:01.0", "0000:af:00.0", 20)), boot("pf:1"),
         {"pf": {"0000:af:00.0"}}, riders={"0000:af:01.0"}),
    Case("remote-managed VFs only when asked", host(
        pf("0000:af:00.0", 20),
        vf("0000:af:01.0", "0000:af:00.0", 21, tags={"remote_managed": "true"})),
         boot("vf:1"), code=NoFitCode.PCI_COUNT),
    # -- compute
    Case("lacks vCPUs", host(gpu("0000:3b:00.0", 10), vcpus=1), boot(vcpus=2),
         code=NoFitCode.VCPUS, text="lacks vCPUs"),
    Case("lacks RAM", host(gpu("0000:3b:00.0", 10), ram=1024), boot(ram=2048),
         code=NoFitCode.RAM, text="lacks RAM"),
    Case("devices are checked before compute", host(vcpus=0), boot(vcpus=2),
         code=NoFitCode.PCI_COUNT),
    # -- NUMA
    Case("no guest NUMA: not constrained", host(gpu("0000:3b:00.0", 10, numa=1),
                                                numa=CELL1_FULL),
         boot(policy="required"), {"gpu": {"0000:3b:00.0"}}, cells=()),
    Case("required, local", host(gpu("0000:3b:00.0", 10, numa=1)),
         boot(numa=1, policy="required"), {"gpu": {"0000:3b:00.0"}}, cells=(1,), remote=0),
    Case("required, only on a full node", host(gpu("0000:3b:00.0", 10, numa=1),
                                               numa=CELL1_FULL),
         boot(numa=1, policy="required"), code=NoFitCode.PCI_NUMA,
         text="has them only outside the guest's NUMA node (policy required)"),
    Case("required refuses an unknown node", host(gpu("0000:3b:00.0", 10, numa=None)),
         boot(numa=1, policy="required"), code=NoFitCode.PCI_NUMA),
    Case("legacy takes an unknown node", host(gpu("0000:3b:00.0", 10, numa=None)),
         boot(numa=1), {"gpu": {"0000:3b:00.0"}}),
    Case("legacy refuses a remote node", host(gpu("0000:3b:00.0", 10, numa=1),
                                              numa=CELL1_FULL),
         boot(numa=1), code=NoFitCode.PCI_NUMA,
         text="has them only outside the guest's NUMA node (policy legacy)"),
    Case("preferred takes a remote node", host(gpu("0000:3b:00.0", 10, numa=1),
                                               numa=CELL1_FULL),
         boot(numa=1, policy="preferred"), {"gpu": {"0000:3b:00.0"}}, cells=(0,), remote=1),
    Case("preferred picks the local node when it can",
         host(gpu("0000:3b:00.0", 10, numa=1)), boot(numa=1, policy="preferred"),
         {"gpu": {"0000:3b:00.0"}}, cells=(1,), remote=0),
    Case("preferred picks local devices", host(gpu("0000:3b:00.0", 10, numa=1),
                                               gpu("0000:5e:00.0", 11, numa=0),
                                               numa=CELL1_FULL),
         boot(numa=1, policy="preferred"), {"gpu": {"0000:5e:00.0"}}, remote=0),
    Case("socket: another node of the socket", host(gpu("0000:3b:00.0", 10, numa=1),
                                                    numa=ONE_SOCKET),
         boot(numa=1, policy="socket"), {"gpu": {"0000:3b:00.0"}}, cells=(0,)),
    Case("socket: not another socket", host(gpu("0000:3b:00.0", 10, numa=1),
                                            numa=cells((0, 0, 0, 0), (1, 0, 32768, 0),
                                                       (2, 16, 32768, 1))),
         boot(numa=1, policy="socket"), code=NoFitCode.PCI_NUMA,
         text="has them only outside the sockets of the guest's NUMA nodes (policy socket)"),
    Case("socket: no socket information means local only",
         host(gpu("0000:3b:00.0", 10, numa=1), numa=NO_SOCKETS),
         boot(numa=1, policy="socket"), code=NoFitCode.PCI_NUMA),
    Case("socket refuses an unknown node", host(gpu("0000:3b:00.0", 10, numa=None)),
         boot(numa=1, policy="socket"), code=NoFitCode.PCI_NUMA),
    Case("two guest nodes", host(gpu("0000:3b:00.0", 10), gpu("0000:5e:00.0", 11, numa=1)),
         boot("gpu:2", numa=2, vcpus=8, ram=8192, policy="required"),
         {"gpu": {"0000:3b:00.0", "0000:5e:00.0"}}, cells=(0, 1)),
    Case("too few host nodes", host(gpu("0000:3b:00.0", 10)), boot(numa=3, vcpus=6, ram=6144),
         code=NoFitCode.NUMA_NODES, text="has fewer than 3 NUMA nodes"),
    Case("no node has room", host(gpu("0000:3b:00.0", 10)), boot(numa=1, vcpus=20),
         code=NoFitCode.NUMA_RESOURCES,
         text="lacks 1 NUMA node with 20 vCPUs and 2048 MB RAM free each"),
    Case("a guest without devices avoids device nodes", host(gpu("0000:3b:00.0", 10)),
         boot(None, numa=1), cells=(1,)),
    # -- soft requests
    Case("soft granted", host(gpu("0000:3b:00.0", 10), pf("0000:af:00.0", 20),
                              vf("0000:af:01.0", "0000:af:00.0", 21)), boot(soft="vf:1"),
         {"gpu": {"0000:3b:00.0"}, "vf": {"0000:af:01.0"}}),
    Case("soft not granted", host(gpu("0000:3b:00.0", 10)), boot(soft="vf:1"),
         {"gpu": {"0000:3b:00.0"}}, not_granted=("vf",)),
    Case("only soft", host(), boot(None, soft="gpu:1"), {}, not_granted=("gpu",)),
    Case("soft does not take what hard needs", host(gpu("0000:3b:00.0", 10)),
         boot("gpu:1", soft="gpu:1"), {"gpu": {"0000:3b:00.0"}}, not_granted=("gpu",)),
]


def _matched(f: Fit) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for x in f.assignments:
        out.setdefault(x.request.alias, set()).update(str(d) for d in x.devices)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fit(case: Case) -> None:
    before = copy.deepcopy((case.host, case.req))
    verdict = fit(case.host, case.req)
    assert (case.host, case.req) == before, "fit changed its inputs"
    if case.code is not None:
        assert isinstance(verdict, NoFit), verdict
        assert verdict.code is case.code, verdict
        assert verdict.host == case.host.name
        if case.text is not None:
            assert verdict.text == case.text
        return
    assert isinstance(verdict, Fit), verdict
    if case.devices is not None:
        assert _matched(verdict) == case.devices
    assert {str(r) for x in verdict.assignments for r in x.riders} == case.riders
    if case.cells is not None:
        assert verdict.cells == case.cells
    assert tuple(r.alias for r in verdict.not_granted) == case.not_granted
    if case.remote is not None:
        assert verdict.remote == case.remote
    assert verdict.free_vcpus == case.host.free_vcpus - case.req.vcpus
    assert len(set(verdict.addresses)) == len(verdict.addresses)


def test_search_limit_is_a_value() -> None:
    h = host(*(gpu(f"0000:{0x10 + i:02x}:00.0", 10 + i, numa=i % 2) for i in range(6)))
    verdict = fit(h, boot("gpu:4, a100:3"), max_steps=3)
    assert isinstance(verdict, NoFit) and verdict.code is NoFitCode.SEARCH_LIMIT


def test_boot_request_validation() -> None:
    with pytest.raises(InvalidInput):
        BootRequest(3, 1024, 2)
    with pytest.raises(InvalidInput):
        BootRequest(2, 1024, 0)
    with pytest.raises(InvalidInput):
        BootRequest(-1, 1024)


def test_describe() -> None:
    assert boot("gpu:2, vf:1").describe() == "2 x gpu, 1 x vf"
    assert boot(None, vcpus=4, ram=8192, numa=2).describe() == \
        "4 vCPUs and 8192 MB RAM on 2 NUMA nodes"


# --- units and reasons ----------------------------------------------------------------------------

REASON_HOST = host(
    gpu("0000:3b:00.0", 10), audio("0000:3b:00.1", 10),
    gpu("0000:5e:00.0", 11, state=ALLOCATED), audio("0000:5e:00.1", 11, state=UNAVAILABLE),
    gpu("0000:86:00.0", 12), nvme("0000:86:00.1", 12),
    gpu("0000:87:00.0", 13, also_in_group=["0000:87:00.1"]),
    bridge("0000:88:00.0", 14), gpu("0000:89:00.0", 14),
    gpu("0000:8a:00.0", None),
    gpu("10000:01:00.0", None),
    gpu("0000:8b:00.0", 15, assignable=False, driver="nouveau"),
    gpu("0000:8c:00.0", 16, reserved=True), audio("0000:8c:00.1", 16),
    pf("0000:af:00.0", 20), vf("0000:af:01.0", "0000:af:00.0", 21, state=CLAIMED),
    vf("0000:af:01.1", "0000:af:00.0", 22),
    pf("0000:b0:00.0", 30, state=ALLOCATED), vf("0000:b0:01.0", "0000:b0:00.0", 31),
)


@pytest.mark.parametrize(("addr", "text"), [
    ("0000:5e:00.0", "is allocated to a server"),
    ("0000:5e:00.1", "goes with 0000:5e:00.0 (IOMMU group 11), which is allocated to a server"),
    ("0000:86:00.0", "shares IOMMU group 12 with 0000:86:00.1 (class 010802, bound to host "
                     "driver 'nvme'), which the device spec does not select"),
    ("0000:86:00.1", "is not selected by the host's device spec"),
    ("0000:87:00.0", "shares IOMMU group 13 with 0000:87:00.1, which the host did not report"),
    ("0000:88:00.0", "is a PCI bridge or port"),
    ("0000:8a:00.0", "has no IOMMU group (the host's IOMMU is off or absent)"),
    ("10000:01:00.0", "behind an Intel VMD controller"),
    ("0000:8b:00.0", "is not selected by the host's device spec"),
    ("0000:8c:00.0", "is reserved"),
    ("0000:8c:00.1", "goes with 0000:8c:00.0 (IOMMU group 16), which is reserved"),
    ("0000:af:00.0", "is a PF and its VF 0000:af:01.0 is in use"),
    ("0000:af:01.0", "is claimed for a server being built"),
    ("0000:b0:01.0", "is a VF and its PF 0000:b0:00.0 is in use"),
])
def test_unit_reasons(addr: str, text: str) -> None:
    assert text in unit_reasons(REASON_HOST.devices)[a(addr)]


def test_usable_devices_have_no_reason() -> None:
    reasons = unit_reasons(REASON_HOST.devices)
    for usable in ("0000:3b:00.0", "0000:3b:00.1", "0000:89:00.0", "0000:af:01.1"):
        assert a(usable) not in reasons


def test_units() -> None:
    got = {u.group: [str(x) for x in u.addresses] for u in units(REASON_HOST.devices)}
    assert got[10] == ["0000:3b:00.0", "0000:3b:00.1"]
    assert got[14] == ["0000:89:00.0"]                 # the bridge is left out
    assert 12 not in got and 13 not in got             # blocked groups are no units
    assert got[11] == ["0000:5e:00.0", "0000:5e:00.1"]  # units regardless of state


def test_dependants() -> None:
    deps = {str(x) for x in dependants(REASON_HOST.devices)}
    assert deps == {
        "0000:5e:00.1",   # rides with an allocated GPU
        "0000:8c:00.1",   # goes with a reserved GPU
        "0000:af:00.0",   # PF of a claimed VF
        "0000:b0:01.0",   # VF of an allocated PF
    }


def test_a_rider_vf_blocks_its_pf() -> None:
    # A VF sharing a group with a used GPU is held by that guest too: its PF must wait.
    h = host(gpu("0000:3b:00.0", 10, state=ALLOCATED),
             vf("0000:3b:00.1", "0000:af:00.0", 10, state=UNAVAILABLE), pf("0000:af:00.0", 20))
    assert {str(x) for x in dependants(h.devices)} == {"0000:3b:00.1", "0000:af:00.0"}
    assert unit_reasons(h.devices)[a("0000:af:00.0")] == \
        "is a PF and its VF 0000:3b:00.1 is in use"
    verdict = fit(h, boot("pf:1"))
    assert isinstance(verdict, NoFit) and verdict.code is NoFitCode.PCI_COUNT


def test_dependants_release_stale_unavailable() -> None:
    h = host(pf("0000:af:00.0", 20, state=UNAVAILABLE), vf("0000:af:01.0", "0000:af:00.0", 21))
    assert dependants(h.devices) == frozenset()
    assert unit_reasons(h.devices)[a("0000:af:00.0")] == "is marked unavailable"


# --- weighing, explaining, scheduling ------------------------------------------------------------

def _gpus(name: str, n: int, **kw: Any) -> HostView:
    return host(*(gpu(f"0000:{0x10 + i:02x}:00.0", 10 + i) for i in range(n)), name=name,
                **kw)


def test_pack_and_spread() -> None:
    fits = [fit(_gpus(n, k), boot()) for n, k in (("many", 4), ("few", 1), ("some", 2))]
    assert all(isinstance(f, Fit) for f in fits)
    ok = [f for f in fits if isinstance(f, Fit)]
    assert [f.host for f in weigh(ok)] == ["few", "some", "many"]
    assert [f.host for f in weigh(ok, WeighPolicy.SPREAD)] == ["many", "some", "few"]


def test_boots_without_devices_keep_off_device_hosts() -> None:
    hosts = [_gpus("gpus", 2, ram=4096), _gpus("plain", 0, ram=65536)]
    for policy in WeighPolicy:
        placed = schedule(hosts, boot(None), policy)
        assert isinstance(placed, Placement) and placed.best.host == "plain"


def test_soft_granted_ranks_first() -> None:
    with_vf = host(gpu("0000:3b:00.0", 10), gpu("0000:3c:00.0", 11), pf("0000:af:00.0", 20),
                   vf("0000:af:01.0", "0000:af:00.0", 21), name="with-vf")
    without = host(gpu("0000:3b:00.0", 10), name="without")
    placed = schedule([without, with_vf], boot(soft="vf:1"))
    assert isinstance(placed, Placement)
    assert [f.host for f in placed.ranked] == ["with-vf", "without"]


def test_local_ranks_first() -> None:
    local = host(gpu("0000:3b:00.0", 10, numa=0), name="local", numa=CELL1_FULL)
    remote = host(gpu("0000:3b:00.0", 10, numa=1), name="remote", numa=CELL1_FULL)
    placed = schedule([remote, local], boot(numa=1, policy="preferred"))
    assert isinstance(placed, Placement) and placed.best.host == "local"


def test_explain_counts_hosts_per_reason() -> None:
    hosts = [_gpus(f"empty{i}", 0) for i in range(14)]
    hosts += [host(gpu("0000:3b:00.0", 10, numa=1), gpu("0000:3c:00.0", 11, numa=1),
                   name=f"far{i}", numa=CELL1_FULL) for i in range(3)]
    hosts += [_gpus(f"small{i}", 2, ram=1024) for i in range(2)]
    req = boot("gpu:2", numa=1, policy="required")
    placed = schedule(hosts, req)
    assert isinstance(placed, NoPlacement)
    assert placed.message == (
        "No host can satisfy 2 x gpu: 14 hosts lack 2 free 'gpu' devices; 3 hosts have them "
        "only outside the guest's NUMA node (policy required); 2 hosts lack RAM")
    assert len(placed.verdicts) == 19


def test_explain_singular_some_fit_and_none() -> None:
    req = boot()
    one_miss = [fit(_gpus("a", 0), req)]
    assert explain(one_miss, req) == "No host can satisfy 1 x gpu: 1 host lacks 1 free 'gpu' device"
    mixed = [fit(_gpus("a", 1), req), *one_miss]
    assert explain(mixed, req) == "1 host can satisfy 1 x gpu; 1 host lacks 1 free 'gpu' device"
    assert explain([], req) == "No host can satisfy 1 x gpu: there are no hosts"
    placed = schedule([], req)
    assert isinstance(placed, NoPlacement) and placed.verdicts == ()


def test_schedule_inputs_untouched() -> None:
    hosts = [REASON_HOST, _gpus("b", 3)]
    req = boot("gpu:1, vf:1")
    before = copy.deepcopy((hosts, req))
    schedule(hosts, req)
    assert (hosts, req) == before
