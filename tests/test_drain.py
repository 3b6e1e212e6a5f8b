"""Draining hosts: a reserved host takes no new server (narrowing and claim re-check), what
runs there keeps its devices, unreserving restores placement; the drain listing and its
live-migration verdicts; admins only. In process on SQLite and PostgreSQL, then through the
real API and CLI.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apicloud import make_token, put_host
from apiserver import ApiServer, api_server, assert_error
from apiserver import gpu as api_gpu
from cliserver import cli, env_for, failed, ok_json, ok_text
from fleet import ADMIN, catalog, gpu, inventory, member, pf, report, settings, two_gpus, vf
from pcipass.errors import Forbidden, NotFound
from pcipass.records import DeviceFilter, DeviceState, ServerRecord, ServerStatus
from pcipass.sched.fit import NoFit, NoFitCode, fit
from pcipass.sched.snapshot import BootRequest
from pcipass.services import Cloud
from pcipass.services.boot import Placer, needs
from pcipass.services.drain import DRAIN_HINT
from pcipass.store import Store
from pcipass.store.candidates import Candidate, Need
from pcipass.store.claims import NewServer

P1 = member("p1")


@pytest.fixture
def cloud(store: Store) -> Cloud:
    c = Cloud(store, settings())
    report(store, "node1", two_gpus())
    report(store, "node2", two_gpus())
    catalog(c, {"g1": {"pci_passthrough:alias": "gpu:1"}, "plain": {}})
    return c


def boot(cloud: Cloud, name: str, flavor: str = "g1", **kw: Any) -> ServerRecord:
    return cloud.create_server(P1, name=name, flavor=flavor, image="img", **kw)


def run_spawns(cloud: Cloud, host: str) -> None:
    for t in cloud.tasks.poll(ADMIN, host):
        if t.kind == "spawn":
            cloud.tasks.start(ADMIN, t.id)
            assert cloud.tasks.result(ADMIN, t.id, ok=True, message=None, domain_xml=None)


# --- placement -----------------------------------------------------------------------------

def test_a_reserved_host_gets_no_new_boots(cloud: Cloud) -> None:
    rec = cloud.reserve_host(ADMIN, "node1", True, "firmware upgrade")
    assert (rec.reserved, rec.reserved_reason) == (True, "firmware upgrade")
    assert cloud.store.get_host("node1").reserved
    assert not cloud.store.get_host("node2").reserved
    placed = [boot(cloud, f"vm{i}") for i in range(2)]
    assert [s.host for s in placed] == ["node2", "node2"]
    # no-PCI boots skip it too
    assert boot(cloud, "plain", "plain").host == "node2"
    full = boot(cloud, "vm-full")
    assert full.status is ServerStatus.ERROR and full.host is None
    assert full.fault is not None and "1 host is reserved (draining)" in full.fault, full.fault
    assert cloud.store.list_devices(
        _on("node1")).items[0].state is DeviceState.AVAILABLE


def _on(host: str) -> DeviceFilter:
    return DeviceFilter(host=host)


def test_a_boot_refused_only_because_hosts_are_reserved_says_so(cloud: Cloud) -> None:
    cloud.reserve_host(ADMIN, "node1", True)
    cloud.reserve_host(ADMIN, "node2", True, "rack move")
    s = boot(cloud, "vm")
    assert s.status is ServerStatus.ERROR
    assert s.fault is not None and s.fault.startswith("No host can satisfy")
    assert s.fault.endswith("2 hosts are reserved (draining)"), s.fault
    (failed_event,) = [e for e in cloud.server_events(P1, s.id) if e.action == "schedule"]
    assert failed_event.outcome == "failed" and failed_event.message == s.fault
    explained = cloud.explain(ADMIN, flavor="g1", image="img")
    assert not explained.fits
    assert "2 hosts are reserved (draining)" in explained.message
    assert {(v.host, v.reason) for v in explained.hosts} == {
        ("node1", "is reserved (draining)"), ("node2", "is reserved (draining)")}


def test_unreserve_restores_placement(cloud: Cloud) -> None:
    cloud.reserve_host(ADMIN, "node1", True, "x")
    cloud.reserve_host(ADMIN, "node2", True)
    assert boot(cloud, "vm-a").status is ServerStatus.ERROR
    rec = cloud.reserve_host(ADMIN, "node1", False)
    assert (rec.reserved, rec.reserved_reason) == (False, None)
    s = boot(cloud, "vm-b")
    assert (s.status, s.host) == (ServerStatus.BUILDING, "node1")


def test_running_servers_keep_their_devices(cloud: Cloud) -> None:
    s = boot(cloud, "vm")
    host = s.host
    assert host is not None
    run_spawns(cloud, host)
    before = cloud.get_server(ADMIN, s.id)
    assert before.status is ServerStatus.ACTIVE
    cloud.reserve_host(ADMIN, host, True, "drain for maintenance")
    after = cloud.get_server(ADMIN, s.id)
    assert after.status is ServerStatus.ACTIVE and after.host == host
    assert after.devices == before.devices
    assert all(d.state is DeviceState.ALLOCATED for d in after.devices)
    logged = cloud.server_events(P1, s.id)[-1]
    assert (logged.action, logged.outcome, logged.message, logged.host) == (
        "reserve_host", "done", "drain for maintenance", host)
    report = cloud.drain_host(ADMIN, host)
    assert [d.server.id for d in report.servers] == [s.id]
    # it can still be deleted; the devices come back, still not placed on
    cloud.delete_server(ADMIN, s.id)
    for t in cloud.tasks.poll(ADMIN, host):
        assert cloud.tasks.result(ADMIN, t.id, ok=True, message=None, domain_xml=None)
    assert cloud.drain_host(ADMIN, host).servers == ()
    other = "node2" if host == "node1" else "node1"
    assert {boot(cloud, f"n{i}").host for i in range(2)} == {other}


def _new_server(cloud: Cloud, name: str) -> tuple[NewServer, BootRequest, list[Need]]:
    """A boot of flavor g1 as the services prepare it (for driving the placer directly)."""
    got = cloud.store.boot_inputs("g1", "img", scope=None, project="p1")
    req = cloud._boot_request(got.flavor, got.image, cloud.aliases.combine(got.alias_entries))
    server = NewServer(id=str(uuid.uuid4()), name=name, project="p1", flavor_id=got.flavor.id,
                       flavor_name="g1", image_id=got.image.id, image_name="img",
                       vcpus=req.vcpus, ram_mb=req.ram_mb,
                       requests=tuple((r.alias, r.count, r.soft) for r in req.pci),
                       quotas=False)
    return server, req, needs(req.hard, got.kinds)


def test_a_claim_racing_the_reservation_does_not_land(cloud: Cloud) -> None:
    server, req, need = _new_server(cloud, "racer")
    page = cloud.store.candidates(need, req.vcpus, req.ram_mb, spread=False, limit=10)
    assert {c.name for c in page} == {"node1", "node2"}
    target = page[0]
    cloud.reserve_host(ADMIN, target.name, True)      # between the read and the claim
    got = cloud.store.claim(server, target.host_id, lambda v: fit(v, req))
    assert isinstance(got, NoFit) and got.code is NoFitCode.HOST_RESERVED
    assert got.host == target.name
    with pytest.raises(NotFound):
        cloud.store.get_server(server.id)
    assert all(d.owner is None for d in cloud.store.list_devices(_on(target.name)).items)


class RacingStore:
    """The store, but an admin reserves each candidate host right after the placer read
    it: every claim then meets the reservation under the host lock."""

    def __init__(self, store: Store, cloud: Cloud, victims: set[str]) -> None:
        self._store = store
        self._cloud = cloud
        self._victims = victims

    def candidates(self, *args: Any, **kw: Any) -> list[Candidate]:
        page: list[Candidate] = self._store.candidates(*args, **kw)
        for c in page:
            if c.name in self._victims:
                self._cloud.reserve_host(ADMIN, c.name, True, "race")
        return page

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.parametrize("victims", [{"node1"}, {"node1", "node2"}])
def test_the_placer_respects_a_reservation_made_after_its_read(
        cloud: Cloud, victims: set[str]) -> None:
    server, req, _need = _new_server(cloud, "racer")
    racing: Any = RacingStore(cloud.store, cloud, victims)
    placer = Placer(racing, cloud.policy, max_attempts=3, window=4)
    got = placer.place(server, req)
    if victims == {"node1"}:
        assert (got.status, got.host) == (ServerStatus.BUILDING, "node2")
    else:
        assert got.status is ServerStatus.ERROR and got.fault is not None
        # counted once each, though both were also refused under the lock
        assert got.fault.endswith("2 hosts are reserved (draining)"), got.fault
    assert all(d.owner in (None, server.id) for h in ("node1", "node2")
               for d in cloud.store.list_devices(_on(h)).items)
    assert not any(d.owner for h in victims for d in cloud.store.list_devices(_on(h)).items)


# --- the drain listing ---------------------------------------------------------------------

@pytest.fixture
def mixed(store: Store) -> Cloud:
    """One host with a plain GPU, a GPU its spec marks live-migratable, a PF with VFs on
    physnet1 and a PF on physnet1 that can be passed through whole."""
    c = Cloud(store, settings())
    report(store, "h1", inventory(
        gpu("0000:3b:00.0", group=10),
        gpu("0000:5e:00.0", group=11, product="2230", tags={"live_migratable": "true"}),
        pf("0000:86:00.0", group=20, vfs=2),
        vf("0000:86:00.1", "0000:86:00.0", group=21),
        vf("0000:86:00.2", "0000:86:00.0", group=22),
        pf("0000:af:00.0", group=30, assignable=True, vfs=0),
    ))
    catalog(c, {"g1": {"pci_passthrough:alias": "gpu:1"}, "plain": {}})
    # Live-migratable only when both the alias and the device spec say so.
    c.create_aliases(ADMIN, [{"name": "a6000-live", "vendor_id": "10de", "product_id": "2230",
                              "live_migratable": "yes"}])
    c.create_flavor(ADMIN, name="live", vcpus=2, ram_mb=2048, disk_gb=1,
                    extra_specs={"pci_passthrough:alias": "a6000-live:1"})
    c.create_network(ADMIN, name="net1", physical_network="physnet1", segmentation="vlan",
                     segmentation_id=100)
    return c


def test_the_drain_listing_says_per_server_whether_it_could_move_live(mixed: Cloud) -> None:
    gpu_vm = boot(mixed, "vm-gpu", "g1")
    live_vm = boot(mixed, "vm-live", "live")
    nics_vm = boot(mixed, "vm-nics", "plain", nics=[
        {"net_id": "net1", "vnic_type": "macvtap"}, {"net_id": "net1", "vnic_type": "direct"}])
    pf_vm = boot(mixed, "vm-pf", "plain", nics=[
        {"net_id": "net1", "vnic_type": "direct-physical"}])
    gone = boot(mixed, "vm-gone", "plain")
    for s in (gpu_vm, live_vm, nics_vm, pf_vm, gone):
        assert s.status is ServerStatus.BUILDING and s.host == "h1", s.fault
    run_spawns(mixed, "h1")
    mixed.delete_server(ADMIN, gone.id)
    for t in mixed.tasks.poll(ADMIN, "h1"):
        assert mixed.tasks.result(ADMIN, t.id, ok=True, message=None, domain_xml=None)
    mixed.reserve_host(ADMIN, "h1", True, "maintenance")

    report = mixed.drain_host(ADMIN, "h1")
    assert report.note == DRAIN_HINT and "--live-migrate" in report.note
    assert report.host.reserved and report.host.reserved_reason == "maintenance"
    by_name = {d.server.name: d for d in report.servers}
    assert list(by_name) == ["vm-gpu", "vm-live", "vm-nics", "vm-pf"]   # by name
    assert all(d.server.status is ServerStatus.ACTIVE for d in report.servers)

    assert by_name["vm-live"].live_migratable and by_name["vm-live"].blockers == ()
    assert [str(d.address) for d in by_name["vm-live"].server.devices] == ["0000:5e:00.0"]

    nics = by_name["vm-nics"]
    assert nics.live_migratable, nics.blockers
    assert sorted(p.vnic_type for p in nics.server.ports) == ["direct", "macvtap"]
    assert {str(d.address) for d in nics.server.devices} == {"0000:86:00.1", "0000:86:00.2"}

    gpu_entry = by_name["vm-gpu"]
    assert not gpu_entry.live_migratable
    (blocker,) = gpu_entry.blockers
    assert blocker.startswith("0000:3b:00.0 (alias 'gpu')") and "live_migratable" in blocker

    pf_entry = by_name["vm-pf"]
    assert not pf_entry.live_migratable
    (blocker,) = pf_entry.blockers
    assert blocker.startswith("0000:af:00.0") and "direct-physical" in blocker


def test_only_admins_drain(cloud: Cloud) -> None:
    with pytest.raises(Forbidden):
        cloud.reserve_host(P1, "node1", True)
    with pytest.raises(Forbidden):
        cloud.drain_host(P1, "node1")
    assert not cloud.store.get_host("node1").reserved
    with pytest.raises(NotFound):
        cloud.reserve_host(ADMIN, "nope", True)
    with pytest.raises(NotFound):
        cloud.drain_host(ADMIN, "nope")


# --- through the API and the CLI -------------------------------------------------------------

@pytest.fixture(scope="module")
def api1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    work = tmp_path_factory.mktemp("drain-api")
    with api_server(f"sqlite:///{work / 'pcipass.db'}", work) as srv:
        yield srv
        log = srv.log()
        assert "Traceback" not in log, log[-6000:]


def test_api_reserve_unreserve_drain_and_403_for_members(api1: ApiServer) -> None:
    with api1.client() as http:
        put_host(http, "api-h1", [api_gpu("0000:3b:00.0")])
        assert http.get("/v1/hosts/api-h1").json()["reserved"] is False
        mem = make_token(api1, role="member", project="p1")
        with api1.client(mem) as m:
            assert_error(m.post("/v1/hosts/api-h1/reserve"), 403, "forbidden")
            assert_error(m.post("/v1/hosts/api-h1/unreserve"), 403, "forbidden")
            assert_error(m.get("/v1/hosts/api-h1/drain"), 403, "forbidden")
        assert_error(http.post("/v1/hosts/nope/reserve"), 404, "not_found")

        got = http.post("/v1/hosts/api-h1/reserve", json={"reason": "bios"})
        assert got.status_code == 200, got.text
        assert (got.json()["reserved"], got.json()["reserved_reason"]) == (True, "bios")
        listed = {h["name"]: h for h in http.get("/v1/hosts").json()["hosts"]}
        assert listed["api-h1"]["reserved"] is True
        drain = http.get("/v1/hosts/api-h1/drain").json()
        assert drain["servers"] == [] and "--live-migrate" in drain["note"]
        assert drain["host"]["reserved_reason"] == "bios"
        no_body = http.post("/v1/hosts/api-h1/reserve")
        assert no_body.status_code == 200 and no_body.json()["reserved_reason"] is None
        assert_error(http.post("/v1/hosts/api-h1/reserve", json={"why": 1}), 422,
                     "invalid_input")
        back = http.post("/v1/hosts/api-h1/unreserve")
        assert back.json()["reserved"] is False and back.json()["reserved_reason"] is None


def test_cli_host_reserve_drain_list_show(api1: ApiServer) -> None:
    with api1.client() as http:
        put_host(http, "cli-h1", [api_gpu("0000:3b:00.0")])
    env = env_for(api1)
    out = ok_json(cli("host", "reserve", "cli-h1", "--reason", "swap PSU", "--json", env=env))
    assert (out["reserved"], out["reserved_reason"]) == (True, "swap PSU")
    text = ok_text(cli("host", "show", "cli-h1", env=env))
    assert "yes (draining): swap PSU" in text
    table = ok_text(cli("host", "list", env=env))
    assert "cli-h1" in table and "draining" in table
    drained = ok_text(cli("host", "drain", "cli-h1", env=env))
    assert "--live-migrate" in drained and "0 servers" in drained
    assert ok_json(cli("host", "drain", "cli-h1", "--json", env=env))["servers"] == []
    assert "reserved=no" in ok_text(cli("host", "unreserve", "cli-h1", env=env))
    member_env = env_for(api1, make_token(api1, role="member", project="p1"))
    assert "admin" in failed(cli("host", "reserve", "cli-h1", env=member_env))
    with httpx.Client(base_url=api1.url) as anon:
        assert anon.post("/v1/hosts/cli-h1/reserve").status_code == 401
