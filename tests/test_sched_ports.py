"""The scheduler with SR-IOV ports: a table of named cases, the wording, and properties.

A port's request is an ordinary PCI request (``net.port.port_request``), so these check that
physnet and trust tags, PF/VF exclusion mixed with flavor aliases, and NUMA overrides work for
ports exactly as for aliases, and that explanations name the port.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pcipass.net.port import VnicType, port_request
from pcipass.pci.alias import NumaPolicy
from pcipass.pci.device import DevType
from pcipass.pci.request import PciRequest, pci_requests
from pcipass.records import DeviceState
from pcipass.sched import (
    BootRequest,
    DeviceView,
    Fit,
    HostView,
    NoFit,
    NoFitCode,
    NoPlacement,
    Placement,
    explain,
    fit,
    schedule,
)
from pcipass.sched.fit import shortage_verdict
from pcipass.services.boot import count_verdicts, sentence
from pcipass.store.candidates import Counts
from test_sched import ALIASES, CELL1_FULL, cells, gpu, host, pf, vf
from test_sched_property import check_fit, oracle_fits, oracle_free, tiny_hosts

# --- builders -----------------------------------------------------------------------------------

DIRECT, MACVTAP, PHYSICAL = VnicType.DIRECT, VnicType.MACVTAP, VnicType.DIRECT_PHYSICAL


def port(name: str, physnet: str = "physnet2", vnic: VnicType = DIRECT, *,
         trusted: bool = False, policy: str | None = None,
         flavor: str | None = None) -> PciRequest:
    r = port_request(port_id=f"id-{name}", port_name=name, vnic_type=vnic, physnet=physnet,
                     trusted=trusted, numa_policy=NumaPolicy(policy) if policy else None,
                     flavor_policy=NumaPolicy(flavor) if flavor else None)
    assert r is not None
    return r


def boot(*ports: PciRequest, aliases: str | None = None, numa: int | None = None,
         policy: str | None = None, vcpus: int = 2, ram: int = 2048) -> BootRequest:
    specs: dict[str, str] = {}
    if aliases:
        specs["pci_passthrough:alias"] = aliases
    if policy:
        specs["hw:pci_numa_affinity_policy"] = policy
    return BootRequest(vcpus, ram, numa, (*pci_requests(specs, {}, ALIASES), *ports))


def card(bus: str, physnet: str, vfs: int = 2, *, trusted: tuple[int, ...] = (),
         numa: int | None = 0, group: int | None = None) -> list[DeviceView]:
    """A PF at ``0000:<bus>:00.0`` on ``physnet`` and its VFs at ``<bus>:01.i``, each in its
    own IOMMU group; VFs listed in ``trusted`` carry ``trusted: true``."""
    g = group if group is not None else int(bus, 16) * 10
    parent = f"0000:{bus}:00.0"
    out = [pf(parent, g, physnet=physnet, numa=numa)]
    out += [vf(f"0000:{bus}:01.{i}", parent, g + 1 + i, physnet=physnet, numa=numa,
               tags={"trusted": "true"} if i in trusted else None) for i in range(vfs)]
    return out


def key(r: PciRequest) -> str:
    return r.port_name or r.alias


@dataclass
class Case:
    name: str
    host: HostView
    req: BootRequest
    devices: dict[str, set[str]] | None = None   # port name or alias -> exactly these devices
    code: NoFitCode | None = None
    text: str | None = None
    remote: int | None = None


ONE_EACH = host(*card("af", "physnet1", trusted=(0,)), *card("b0", "physnet2", trusted=(1,)))
ONE_PF2 = host(*card("b0", "physnet2"))
TWO_PF2 = host(*card("b0", "physnet2"), *card("b1", "physnet2"))
ONLY_PHYSNET1 = host(*card("af", "physnet1", trusted=(0, 1)))

CASES = [
    # -- vnic types and physnets
    Case("direct takes a VF of its physnet", ONE_EACH, boot(port("web")),
         {"web": {"0000:b0:01.0"}}),
    Case("macvtap takes a VF too", ONE_EACH, boot(port("tap", "physnet1", MACVTAP)),
         {"tap": {"0000:af:01.0"}}),
    Case("direct-physical takes the PF", ONE_EACH, boot(port("raw", "physnet2", PHYSICAL)),
         {"raw": {"0000:b0:00.0"}}),
    Case("a physnet1 VF never serves a physnet2 port", ONLY_PHYSNET1, boot(port("web")),
         code=NoFitCode.PCI_COUNT, text="has no free VF on physnet2 for port 'web'"),
    Case("a physnet1 PF never serves a physnet2 port", ONLY_PHYSNET1,
         boot(port("raw", "physnet2", PHYSICAL)),
         code=NoFitCode.PCI_COUNT, text="has no free PF on physnet2 for port 'raw'"),
    Case("physnet tags compare lower-cased", host(*card("b0", "PhysNet2")), boot(port("web")),
         {"web": {"0000:b0:01.0"}}),
    # -- trust
    Case("trusted takes only a trusted VF", ONE_EACH, boot(port("t", trusted=True)),
         {"t": {"0000:b0:01.1"}}),
    Case("trusted finds none on its physnet", host(*card("b0", "physnet2"),
                                                   *card("af", "physnet1", trusted=(0,))),
         boot(port("t", trusted=True)), code=NoFitCode.PCI_COUNT,
         text="has no free VF on physnet2 for port 't'"),
    Case("untrusted may take a trusted VF", host(*card("b0", "physnet2", 1, trusted=(0,))),
         boot(port("web")), {"web": {"0000:b0:01.0"}}),
    Case("trusted and untrusted share out the VFs",
         host(*card("b0", "physnet2", 2, trusted=(0,))),
         boot(port("web"), port("t", trusted=True)),
         {"web": {"0000:b0:01.1"}, "t": {"0000:b0:01.0"}}),
    # -- used devices
    Case("a used VF is not free", host(*card("b0", "physnet2", 1)[:1],
                                       vf("0000:b0:01.0", "0000:b0:00.0", 11,
                                          physnet="physnet2",
                                          state=DeviceState.ALLOCATED)),
         boot(port("web")), code=NoFitCode.PCI_COUNT,
         text="has no free VF on physnet2 for port 'web'"),
    Case("two ports, one VF", host(*card("b0", "physnet2", 1)),
         boot(port("a"), port("b")), code=NoFitCode.PCI_TOGETHER,
         text="cannot give port 'a' (VF on physnet2), port 'b' (VF on physnet2) at once "
              "(PF/VF exclusion or devices wanted by two requests)"),
    Case("two ports, two VFs", ONE_PF2, boot(port("a"), port("b")),
         {"a": {"0000:b0:01.0"}, "b": {"0000:b0:01.1"}}),
    # -- PF/VF exclusion, ports and aliases mixed
    Case("a PF port and a VF port on one PF", ONE_PF2,
         boot(port("raw", vnic=PHYSICAL), port("web")), code=NoFitCode.PCI_TOGETHER),
    Case("a PF port and a VF port on two PFs", TWO_PF2,
         boot(port("raw", vnic=PHYSICAL), port("web"))),
    Case("a VF alias and a PF port on one PF", ONE_PF2,
         boot(port("raw", vnic=PHYSICAL), aliases="vf2:1"), code=NoFitCode.PCI_TOGETHER,
         text="cannot give 1 x vf2, port 'raw' (PF on physnet2) at once (PF/VF exclusion or "
              "devices wanted by two requests)"),
    Case("a VF alias and a PF port on two PFs", TWO_PF2,
         boot(port("raw", vnic=PHYSICAL), aliases="vf2:1")),
    Case("a PF alias and a VF port on one PF", host(*card("b0", "physnet2", vfs=1)),
         boot(port("web"), aliases="pf:1"), code=NoFitCode.PCI_TOGETHER),
    Case("a PF port while its VF is used", host(
        pf("0000:b0:00.0", 20, physnet="physnet2"),
        vf("0000:b0:01.0", "0000:b0:00.0", 21, physnet="physnet2",
           state=DeviceState.ALLOCATED)), boot(port("raw", vnic=PHYSICAL)),
         code=NoFitCode.PCI_COUNT, text="has no free PF on physnet2 for port 'raw'"),
    Case("a VF port while its PF is used", host(
        pf("0000:b0:00.0", 20, physnet="physnet2", state=DeviceState.ALLOCATED),
        vf("0000:b0:01.0", "0000:b0:00.0", 21, physnet="physnet2")), boot(port("web")),
         code=NoFitCode.PCI_COUNT),
    Case("ports with a GPU alias", host(gpu("0000:3b:00.0", 10), *card("b0", "physnet2")),
         boot(port("web"), aliases="gpu:1"),
         {"gpu": {"0000:3b:00.0"}, "web": {"0000:b0:01.0"}}),
    # -- NUMA: the port's policy beats the flavor's, either way
    Case("port required beats flavor preferred",
         host(*card("b0", "physnet2", numa=1), numa=CELL1_FULL),
         boot(port("web", policy="required", flavor="preferred"), numa=1),
         code=NoFitCode.PCI_NUMA,
         text="has a free VF on physnet2 for port 'web' only outside the guest's NUMA node "
              "(policy required)"),
    Case("port preferred beats flavor required",
         host(*card("b0", "physnet2", numa=1), numa=CELL1_FULL),
         boot(port("web", policy="preferred", flavor="required"), numa=1),
         {"web": {"0000:b0:01.0"}}, remote=1),
    Case("flavor required applies to a port without a policy",
         host(*card("b0", "physnet2", numa=1), numa=CELL1_FULL),
         boot(port("web", flavor="required"), numa=1), code=NoFitCode.PCI_NUMA),
    Case("the port's policy does not bend the flavor's aliases",
         host(gpu("0000:3b:00.0", 10, numa=1), *card("b0", "physnet2", numa=1),
              numa=CELL1_FULL),
         boot(port("web", policy="preferred"), aliases="gpu:1", numa=1, policy="required"),
         code=NoFitCode.PCI_NUMA,
         text="has 1 free 'gpu' device only outside the guest's NUMA node (policy required)"),
    Case("a port's NUMA miss among several requests names the port",
         host(gpu("0000:3b:00.0", 10, numa=0), *card("b0", "physnet2", numa=1),
              numa=CELL1_FULL),
         boot(port("web", policy="required"), aliases="gpu:1", numa=1),
         code=NoFitCode.PCI_NUMA,
         text="has a free VF on physnet2 for port 'web' only outside the guest's NUMA node "
              "(policy required)"),
    Case("required, local", host(*card("b0", "physnet2", numa=1), numa=cells(
        (0, 0, 0, 0), (1, 16, 32768, 1))), boot(port("web", policy="required"), numa=1),
         {"web": {"0000:b0:01.0"}}, remote=0),
    # -- IOMMU groups
    Case("VFs sharing a group give too many", host(
        pf("0000:b0:00.0", 20, physnet="physnet2"),
        vf("0000:b0:01.0", "0000:b0:00.0", 21, physnet="physnet2"),
        vf("0000:b0:01.1", "0000:b0:00.0", 21, physnet="physnet2")), boot(port("web")),
         code=NoFitCode.PCI_GROUPS,
         text="has a free VF on physnet2 for port 'web' only in IOMMU groups that hold more "
              "than 1"),
]


def _matched(f: Fit) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for x in f.assignments:
        out.setdefault(key(x.request), set()).update(str(d) for d in x.devices)
    return out


def _pf_vf_apart(h: HostView, f: Fit) -> None:
    by = {d.address: d.device for d in h.devices}
    given = {a for x in f.assignments for a in x.devices}
    for a in given:
        parent = by[a].parent_addr
        assert parent is None or parent not in given, f"{a} given with its PF {parent}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fit(case: Case) -> None:
    before = copy.deepcopy((case.host, case.req))
    verdict = fit(case.host, case.req)
    assert (case.host, case.req) == before, "fit changed its inputs"
    assert oracle_fits(case.host, case.req) is isinstance(verdict, Fit)
    if case.code is not None:
        assert isinstance(verdict, NoFit), verdict
        assert verdict.code is case.code, verdict
        if case.text is not None:
            assert verdict.text == case.text
        return
    assert isinstance(verdict, Fit), verdict
    check_fit(case.host, case.req, verdict)
    _pf_vf_apart(case.host, verdict)
    if case.devices is not None:
        assert _matched(verdict) == case.devices
    if case.remote is not None:
        assert verdict.remote == case.remote
    for x in verdict.assignments:
        if x.request.port is not None:
            assert x.request.port == f"id-{x.request.port_name}"
            assert len(x.devices) == 1


def test_the_pf_port_and_the_vf_alias_take_different_cards() -> None:
    verdict = fit(TWO_PF2, boot(port("raw", vnic=PHYSICAL), aliases="vf2:1"))
    assert isinstance(verdict, Fit)
    got = {key(x.request): x.devices for x in verdict.assignments}
    (the_pf,), (the_vf,) = got["raw"], got["vf2"]
    parent = {d.address: d.device.parent_addr for d in TWO_PF2.devices}[the_vf]
    assert parent != the_pf


# --- wording ------------------------------------------------------------------------------------

def test_explain_names_the_port() -> None:
    hosts = [replace(ONLY_PHYSNET1, name=f"h{i}") for i in range(3)]
    req = boot(port("web"))
    placed = schedule(hosts, req)
    assert isinstance(placed, NoPlacement)
    assert placed.message == ("No host can satisfy port 'web' (VF on physnet2): 3 hosts have "
                              "no free VF on physnet2 for port 'web'")
    assert "no free VF on physnet2" in placed.message
    one = explain([fit(ONLY_PHYSNET1, req)], req)
    assert one == ("No host can satisfy port 'web' (VF on physnet2): 1 host has no free VF on "
                   "physnet2 for port 'web'")


def test_explain_mixes_ports_and_aliases() -> None:
    req = boot(port("web"), aliases="gpu:2")
    hosts = [host(gpu("0000:3b:00.0", 10), gpu("0000:3c:00.0", 11), *card("af", "physnet1"),
                  name="gpus"),
             host(*card("b0", "physnet2"), name="vfs")]
    placed = schedule(hosts, req)
    assert isinstance(placed, NoPlacement)
    assert placed.message == (
        "No host can satisfy 2 x gpu, port 'web' (VF on physnet2): 1 host has no free VF on "
        "physnet2 for port 'web'; 1 host lacks 2 free 'gpu' devices")
    fits = schedule([*hosts, host(gpu("0000:3b:00.0", 10), gpu("0000:3c:00.0", 11),
                                  *card("b0", "physnet2"), name="both")], req)
    assert isinstance(fits, Placement) and fits.best.host == "both"


def test_shortage_verdict_is_the_one_wording() -> None:
    web = port("web")
    v = shortage_verdict("h1", web, "0 free")
    assert (v.code, v.text, v.plural, v.detail) == (
        NoFitCode.PCI_COUNT, "has no free VF on physnet2 for port 'web'",
        "have no free VF on physnet2 for port 'web'", "0 free")
    assert str(v) == "h1 has no free VF on physnet2 for port 'web' (0 free)"
    gpus = boot(aliases="gpu:2").pci[0]
    g = shortage_verdict("h1", gpus)
    assert (g.text, g.plural) == ("lacks 2 free 'gpu' devices", "lack 2 free 'gpu' devices")
    # fit's own PCI_COUNT verdict reads the same as the helper's.
    assert fit(ONLY_PHYSNET1, boot(web)) == shortage_verdict(ONLY_PHYSNET1.name, web, "0 free")


def test_store_counts_read_as_fit_does() -> None:
    req = boot(port("web"), aliases="gpu:2")
    counts = Counts(total=12, lack=(4, 7), vcpus=1, ram=0, passed=0)
    got = [(n, v.text, v.plural) for n, v in count_verdicts(req, counts)]
    assert got == [
        (4, "lacks 2 free 'gpu' devices", "lack 2 free 'gpu' devices"),
        (7, "has no free VF on physnet2 for port 'web'",
         "have no free VF on physnet2 for port 'web'"),
        (1, "lacks vCPUs", "lack vCPUs"),
    ]
    assert sentence(req, count_verdicts(req, counts), ()) == (
        "No host can satisfy 2 x gpu, port 'web' (VF on physnet2): 7 hosts have no free VF on "
        "physnet2 for port 'web'; 4 hosts lack 2 free 'gpu' devices; 1 host lacks vCPUs")


# --- properties ---------------------------------------------------------------------------------

@st.composite
def port_hosts(draw: st.DrawFn) -> HostView:
    """The scheduler property tests' tiny hosts plus up to two NICs, some VFs ``trusted``."""
    h = draw(tiny_hosts())
    devices = list(h.devices)
    for bus in ("a0", "b0")[:draw(st.integers(0, 2))]:
        devices += card(bus, draw(st.sampled_from(["physnet1", "physnet2"])),
                        draw(st.integers(1, 3)), numa=draw(st.sampled_from([0, 1, None])),
                        trusted=tuple(i for i in range(3) if draw(st.booleans())))
    devices = [
        replace(d, device=replace(d.device, tags={**d.device.tags, "trusted": "true"}))
        if d.device.dev_type is DevType.VF and "trusted" not in d.device.tags
        and draw(st.integers(0, 3)) == 0 else d
        for d in devices]
    return host(*devices, name=h.name, numa=h.numa, vcpus=h.free_vcpus, ram=h.free_ram_mb)


@st.composite
def port_boots(draw: st.DrawFn, near: HostView | None = None) -> BootRequest:
    """Up to three ports of any SR-IOV vnic type and physnet, mixed with flavor aliases;
    with ``near``, mostly ports that host has a free function for."""
    kinds = [(vnic, net, trusted) for vnic in (DIRECT, MACVTAP, PHYSICAL)
             for net in ("physnet1", "physnet2") for trusted in (False, True)]
    if near is not None and draw(st.integers(0, 4)):
        free = [m.device for u in oracle_free(near) for m in u]
        kinds = [k for k in kinds if any(port("x", k[1], k[0], trusted=k[2]).matches(d)
                                         for d in free)] or kinds
    ports = []
    for i in range(draw(st.sampled_from([1, 1, 2, 3]))):
        vnic, net, trusted = draw(st.sampled_from(kinds))
        ports.append(port(
            f"p{i}", net, vnic, trusted=trusted,
            policy=draw(st.sampled_from([None, None, "required", "preferred", "legacy"])),
            flavor=draw(st.sampled_from([None, "required", "preferred"]))))
    aliases = draw(st.sampled_from([None, None, None, "vf:1", "vf2:1", "pf:1", "gpu:1",
                                    "vf:1, pf:1"]))
    numa = draw(st.sampled_from([None, None, 1]))
    return boot(*ports, aliases=aliases, numa=numa)


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.data())
def test_every_port_gets_one_device_of_its_kind(data: st.DataObject) -> None:
    h = data.draw(port_hosts(), label="host")
    req = data.draw(port_boots(near=h), label="boot")
    before = copy.deepcopy((h, req))
    verdict = fit(h, req)
    assert (h, req) == before
    assert isinstance(verdict, Fit) is oracle_fits(h, req), verdict
    event("fit" if isinstance(verdict, Fit) else f"no fit: {verdict.code.value}")
    if not isinstance(verdict, Fit):
        return
    check_fit(h, req, verdict)
    _pf_vf_apart(h, verdict)
    by = {d.address: d.device for d in h.devices}
    given_ports = [x for x in verdict.assignments if x.request.port is not None]
    assert sorted(x.request.port or "" for x in given_ports) == sorted(
        r.port or "" for r in req.pci if r.port is not None)
    for x in given_ports:
        r = x.request
        assert len(x.devices) == 1
        dev = by[x.devices[0]]
        assert dev.dev_type is r.dev_type
        physnet = (r.label or "").split(" on ", 1)[1]
        assert dev.tags["physical_network"].lower() == physnet.lower()
        if r.alternatives[0].match and any(c.key == "trusted" for c in r.alternatives[0].match):
            assert dev.tags.get("trusted") == "true"
    # No PF is handed out together with any of its VFs, riders included, unless the VF
    # shares the PF's IOMMU group and so goes along with it as one unit.
    out = set(verdict.addresses)
    unit_of = {a: u.key for x in verdict.assignments for u in x.units for a in u.addresses}
    for a in out:
        parent = by[a].parent_addr
        if parent is not None and parent in out:
            assert unit_of[a] == unit_of[parent], f"PF {parent} out with its VF {a}"


@PROPERTY
@given(st.lists(port_hosts(), min_size=1, max_size=3), port_boots())
def test_explanations_name_unmet_ports(hosts: list[HostView], req: BootRequest) -> None:
    fleet = [replace(h, name=f"h{i}") for i, h in enumerate(hosts)]
    placed = schedule(fleet, req)
    if isinstance(placed, Placement):
        return
    for v in placed.verdicts:
        if v.code is NoFitCode.PCI_COUNT and "port" in v.text:
            assert v.text.startswith("has no free ")
            assert v.plural.startswith("have no free ")
            assert v.text.split(" for port ")[1] in placed.message
