"""Hosts whose agent went silent: marked down by the sweep, skipped by the narrowing and the
claim, named in the refusal and the explanation, back up on the next poll or report. In
process on SQLite and PostgreSQL (the store's clock moved by the test), then through a real
server whose sweep thread marks a host down.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from apicloud import boot as api_boot
from apicloud import make_flavor, make_image, make_token, put_host
from apiserver import ApiServer, api_server
from apiserver import gpu as api_gpu
from cliserver import cli, env_for, ok_text
from fleet import ADMIN, Clock, catalog, member, report, settings, two_gpus
from pcipass.records import ServerRecord, ServerStatus
from pcipass.sched.fit import NoFit, NoFitCode, fit
from pcipass.services import Cloud
from pcipass.services.boot import needs
from pcipass.store import Store
from pcipass.store.claims import NewServer

P1 = member("p1")
AFTER = 120.0
DOWN = "is down (its agent has gone silent)"


@pytest.fixture
def world(clocked: tuple[Store, Clock]) -> tuple[Cloud, Clock]:
    store, clock = clocked
    c = Cloud(store, settings())
    report(store, "node1", two_gpus())
    report(store, "node2", two_gpus())
    catalog(c, {"g1": {"pci_passthrough:alias": "gpu:1"}, "plain": {}})
    return c, clock


def boot(cloud: Cloud, name: str, flavor: str = "g1") -> ServerRecord:
    return cloud.create_server(P1, name=name, flavor=flavor, image="img")


def test_a_silent_agents_host_is_marked_down_skipped_and_back_on_its_next_poll(
        world: tuple[Cloud, Clock]) -> None:
    cloud, clock = world
    cloud.tasks.poll(ADMIN, "node1")          # node1 has an agent; node2 never polled
    clock.advance(AFTER - 1)
    assert cloud.store.mark_hosts_down(AFTER) == []
    clock.advance(2)
    assert cloud.store.mark_hosts_down(AFTER) == ["node1"]
    assert cloud.store.mark_hosts_down(AFTER) == []           # marked once
    assert cloud.store.get_host("node1").down
    assert not cloud.store.get_host("node2").down             # no agent: never judged down
    placed = [boot(cloud, f"vm{i}") for i in range(2)]
    assert [s.host for s in placed] == ["node2", "node2"]
    assert boot(cloud, "plain", "plain").host == "node2"      # no-PCI boots skip it too
    refused = boot(cloud, "vm-full")
    assert refused.status is ServerStatus.ERROR and refused.fault is not None
    assert refused.fault.startswith("No host can satisfy"), refused.fault
    assert f"1 host {DOWN}" in refused.fault, refused.fault
    explained = cloud.explain(ADMIN, flavor="g1", image="img")
    assert f"1 host {DOWN}" in explained.message
    assert ("node1", DOWN) in {(v.host, v.reason) for v in explained.hosts}
    # The agent polls again: the host is up and takes boots.
    cloud.tasks.poll(ADMIN, "node1")
    assert not cloud.store.get_host("node1").down
    back = boot(cloud, "vm-back")
    assert (back.status, back.host) == (ServerStatus.BUILDING, "node1")


def test_a_report_says_the_agent_is_alive_too(world: tuple[Cloud, Clock]) -> None:
    cloud, clock = world
    cloud.tasks.poll(ADMIN, "node1")
    clock.advance(100)
    generation = cloud.store.get_host("node1").generation
    cloud.store.report_inventory("node1", generation, two_gpus(), now=clock())
    clock.advance(AFTER - 10)         # 210 s after the poll, 110 s after the report
    assert cloud.store.mark_hosts_down(AFTER) == []
    clock.advance(20)
    assert cloud.store.mark_hosts_down(AFTER) == ["node1"]
    cloud.store.report_inventory("node1", generation, two_gpus(), now=clock())
    assert not cloud.store.get_host("node1").down


def test_running_servers_keep_their_devices_on_a_down_host(world: tuple[Cloud, Clock]) -> None:
    cloud, clock = world
    s = boot(cloud, "vm")
    assert s.host is not None
    cloud.tasks.poll(ADMIN, s.host)
    held = cloud.get_server(ADMIN, s.id).devices
    clock.advance(AFTER + 1)
    assert cloud.store.mark_hosts_down(AFTER) == [s.host]
    after = cloud.get_server(ADMIN, s.id)
    assert after.host == s.host and after.devices == held


def test_a_claim_racing_the_host_going_down_does_not_land(world: tuple[Cloud, Clock]) -> None:
    cloud, clock = world
    got = cloud.store.boot_inputs("g1", "img", scope=None, project="p1")
    req = cloud._boot_request(got.flavor, got.image, cloud.aliases.combine(got.alias_entries))
    server = NewServer(id=str(uuid.uuid4()), name="racer", project="p1",
                       flavor_id=got.flavor.id, flavor_name="g1", image_id=got.image.id,
                       image_name="img", vcpus=req.vcpus, ram_mb=req.ram_mb,
                       requests=tuple((r.alias, r.count, r.soft) for r in req.pci),
                       quotas=False)
    page = cloud.store.candidates(needs(req.hard, got.kinds), req.vcpus, req.ram_mb,
                                  spread=False, limit=10)
    target = page[0]
    cloud.tasks.poll(ADMIN, target.name)
    clock.advance(AFTER + 1)
    assert cloud.store.mark_hosts_down(AFTER) == [target.name]  # between read and claim
    verdict = cloud.store.claim(server, target.host_id, lambda v: fit(v, req))
    assert isinstance(verdict, NoFit) and verdict.code is NoFitCode.HOST_DOWN
    assert str(verdict) == f"{target.name} {DOWN}"


# --- through a real server: its sweep thread marks the host down ----------------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    work = tmp_path_factory.mktemp("liveness-api")
    with api_server(f"sqlite:///{work / 'pcipass.db'}", work,
                    env={"PCIPASS_SCHEDULER_HOST_DOWN_AFTER": "1"}) as srv:
        yield srv
        log = srv.log()
        assert "Traceback" not in log, log[-6000:]


def wait_for(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_the_server_marks_a_silent_host_down_and_its_poll_brings_it_back(
        api: ApiServer) -> None:
    with api.client() as http:
        put_host(http, "live-h1", [api_gpu("0000:3b:00.0")])
        assert http.post("/v1/aliases", json={"name": "live-gpu", "vendor_id": "10de"}
                         ).status_code == 201
        make_flavor(http, "live-g1", pci="live-gpu:1")
        make_image(http, "live-img")
        agent = make_token(api, role="agent", host="live-h1")
        with api.client(agent) as host_agent:
            def poll() -> None:
                reply = host_agent.get("/v1/hosts/live-h1/tasks", params={"wait": 0})
                assert reply.status_code == 200, reply.text

            poll()
            assert http.get("/v1/hosts/live-h1").json()["down"] is False
            # Silent for over a second: the sweep (every 2 s) marks it down.
            assert wait_for(lambda: http.get("/v1/hosts/live-h1").json()["down"])
            refused = api_boot(http, "live-vm1", "live-g1", "live-img")
            assert refused["status"] == "ERROR"
            assert f"1 host {DOWN}" in refused["fault"]["message"], refused["fault"]
            listed = {h["name"]: h for h in http.get("/v1/hosts").json()["hosts"]}
            assert listed["live-h1"]["down"] is True
            shown = ok_text(cli("host", "show", "live-h1", env=env_for(api)))
            assert "down (silent)" in shown, shown
            poll()
            assert http.get("/v1/hosts/live-h1").json()["down"] is False
            placed = api_boot(http, "live-vm2", "live-g1", "live-img")
            assert (placed["status"], placed["host"]) == ("BUILDING", "live-h1"), placed
