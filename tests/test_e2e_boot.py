"""The whole boot and delete, end to end, with real processes and the fake hypervisor.

A real control plane (``python -m pcipass.server`` on SQLite), real agents (``pcipass agent
--driver fake``) on simulated GPU servers (:func:`pcipass.host.profiles.build_host`), the real
client (:class:`ApiClient`). The test reaches into a host only where an operator or a fault
would: the fake hypervisor's state directory (to look at domains, inject a driver error, or
hold its lock so an agent is caught mid-task) and the agent process (SIGTERM, SIGKILL).

Every test ends with the fleet's invariants: no server left BUILDING or DELETING, every claimed
or allocated device owned by an ACTIVE server and every ACTIVE server's devices allocated.
"""

from __future__ import annotations

import fcntl
import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from apiserver import ApiServer, api_server
from pcipass import errors
from pcipass.agent.tasks import AfterReport, Kind, Result, after_report
from pcipass.cli.client import JSON, ApiClient, fault_message, server_record
from pcipass.host.profiles import build_host, suggested_aliases, suggested_device_spec
from pcipass.records import DeviceState, ServerRecord, ServerStatus
from pcipass.virt.domain import format_cpuset
from pcipass.virt.driver import Operation
from pcipass.virt.fake import FakeVirtDriver
from pcipass.virt.payload import domain_name, overlay_path
from pcipass.virt.xml import read_hostdevs
from test_agent import AgentProc, agent_process

T = TypeVar("T")

PROFILE = "gpu-server"
WAIT_S = 30.0
FAST = ["--interval", "60", "--poll", "1", "--task-wait", "2", "--driver", "fake"]
SETTLED = (ServerStatus.ACTIVE, ServerStatus.ERROR, ServerStatus.DELETED)


def wait_for(what: str, check: Callable[[], T | None], *, timeout: float = WAIT_S,
             logs: Callable[[], str] | None = None) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            detail = f"\n--- logs ---\n{logs()[-6000:]}" if logs else ""
            raise AssertionError(f"timed out waiting for {what}{detail}")
        time.sleep(0.1)


# --- the world -----------------------------------------------------------------------------

@dataclass
class SimHost:
    """A simulated host: its sysfs tree, its agent's state dir and token, its agent."""

    name: str
    root: Path
    state_dir: Path
    token: str
    agent: AgentProc | None = None
    past_logs: list[str] = field(default_factory=list)

    @property
    def driver(self) -> FakeVirtDriver:
        return FakeVirtDriver(self.state_dir / "virt")

    def logs(self) -> str:
        current = self.agent.log() if self.agent is not None else ""
        return "\n".join([*self.past_logs, current])

    def journals(self) -> list[JSON]:
        return [json.loads(p.read_text()) for p in sorted((self.state_dir / "tasks").glob(
            "*.json"))] if (self.state_dir / "tasks").is_dir() else []

    def successful(self, op: Operation, target: str) -> int:
        return sum(1 for c in self.driver.calls
                   if c.operation is op and c.target == target and c.error is None)


@dataclass
class World:
    api: ApiServer
    admin: ApiClient
    tmp: Path
    image: Path
    hosts: dict[str, SimHost] = field(default_factory=dict)
    _agents: list[Any] = field(default_factory=list)

    def add_host(self, name: str, *, index: int = 0) -> SimHost:
        root = self.tmp / "hosts" / name
        build_host(root, PROFILE, index=index)
        token = str(self.admin.create_token("agent", host=name)["token"])
        host = SimHost(name, root, self.tmp / "state" / name, token)
        host.state_dir.mkdir(parents=True)
        self.hosts[name] = host
        return host

    def start_agent(self, host: SimHost, *extra: str) -> AgentProc:
        assert host.agent is None or host.agent.proc.poll() is not None
        if host.agent is not None:
            host.past_logs.append(host.agent.log())
        cm = agent_process(self.api.url, host.token, host.name, host.root, host.state_dir,
                           "--device-spec", json.dumps(suggested_device_spec(PROFILE)),
                           *FAST, *extra)
        host.agent = cm.__enter__()
        self._agents.append(cm)
        return host.agent

    def stop_agent(self, host: SimHost) -> None:
        assert host.agent is not None
        assert host.agent.stop() == 0, host.logs()

    def kill_agent(self, host: SimHost) -> None:
        assert host.agent is not None
        host.agent.proc.send_signal(signal.SIGKILL)
        host.agent.proc.wait(timeout=10)

    def reported(self, host: SimHost) -> JSON:
        def seen() -> JSON | None:
            try:
                got = self.admin.host(host.name)
            except errors.NotFound:
                return None
            return got if got.get("devices", {}).get("total") else None
        return wait_for(f"{host.name}'s first report", seen, logs=host.logs)

    def close(self) -> None:
        for cm in reversed(self._agents):
            cm.__exit__(None, None, None)
        self.admin.close()


def make_catalog(admin: ApiClient, image_source: Path) -> None:
    admin.create_aliases(suggested_aliases(PROFILE))
    admin.create_flavor(name="a100.numa", vcpus=4, ram_mb=4096, disk_gb=10, extra_specs={
        "pci_passthrough:alias": "a100:1", "hw:numa_nodes": "1",
        "hw:pci_numa_affinity_policy": "required"})
    admin.create_flavor(name="a6000", vcpus=2, ram_mb=2048, disk_gb=10,
                        extra_specs={"pci_passthrough:alias": "a6000:1"})
    admin.create_image(name="cuda", source=str(image_source),
                       properties={"hw_pci_supported_aliases": "a100,a6000"})
    admin.create_image(name="lost", source="/nonexistent/images/lost.qcow2",
                       properties={"hw_pci_supported_aliases": "a100,a6000"})


@contextmanager
def world(tmp: Path, env: dict[str, str] | None = None) -> Iterator[World]:
    image = tmp / "images" / "cuda.qcow2"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"")
    with api_server(f"sqlite:///{tmp / 'pcipass.db'}", tmp / "server", env=env) as api:
        w = World(api, ApiClient(api.url, api.admin_token), tmp, image)
        try:
            make_catalog(w.admin, image)
            yield w
        finally:
            w.close()
        log = api.log()
        assert "Traceback" not in log, log[-6000:]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One control plane and one GPU server with its agent running, for the module."""
    with world(tmp_path_factory.mktemp("e2e")) as w:
        host = w.add_host("gpu-1")
        w.start_agent(host)
        w.reported(host)
        yield w
        if host.agent is not None and host.agent.proc.poll() is None:
            w.stop_agent(host)
        assert "Traceback" not in host.logs(), host.logs()[-6000:]


@pytest.fixture
def gpu1(cloud: World) -> Iterator[SimHost]:
    host = cloud.hosts["gpu-1"]
    yield host
    host.driver.clear_failures()
    assert_fleet_consistent(cloud.admin)


# --- servers -------------------------------------------------------------------------------

def boot(admin: ApiClient, flavor: str, image: str = "cuda") -> JSON:
    return admin.create_server(name=f"vm-{uuid.uuid4().hex[:6]}", flavor=flavor, image=image)


def settle(admin: ApiClient, server: JSON, host: SimHost | None = None,
           until: tuple[ServerStatus, ...] = SETTLED) -> ServerRecord:
    def done() -> ServerRecord | None:
        rec = server_record(admin.server(str(server["id"])))
        return rec if rec.status in until else None
    return wait_for(f"server {server['name']} to become {'/'.join(until)}", done,
                    logs=host.logs if host else None)


def all_servers(admin: ApiClient) -> list[ServerRecord]:
    live = admin.servers().items
    gone = admin.servers([("status", ServerStatus.DELETED.value)]).items
    return [server_record(s) for s in (*live, *gone)]


def assert_fleet_consistent(admin: ApiClient) -> None:
    """No server stuck; devices held exactly by ACTIVE servers, and allocated to them."""
    servers = all_servers(admin)
    stuck = [(s.name, s.status.value) for s in servers if s.status not in SETTLED]
    assert not stuck, stuck
    active = {s.id: s for s in servers if s.status is ServerStatus.ACTIVE}
    held: dict[str, set[str]] = {}
    for d in admin.devices().items:
        if d["state"] in (DeviceState.CLAIMED.value, DeviceState.ALLOCATED.value):
            assert d["owner"] in active, d
            assert d["state"] == DeviceState.ALLOCATED.value, d
            held.setdefault(d["owner"], set()).add(d["address"])
    for sid, s in active.items():
        assert {str(x.address) for x in s.devices} == held.get(sid, set()), s
        assert all(x.state is DeviceState.ALLOCATED for x in s.devices), s


def device_states(admin: ApiClient, host: str, addresses: set[str]) -> dict[str, str]:
    return {a: str(admin.device(host, a)["state"]) for a in sorted(addresses)}


def addresses(s: ServerRecord) -> set[str]:
    return {str(d.address) for d in s.devices}


# --- boot and delete -----------------------------------------------------------------------

def test_boot_maps_devices_into_a_running_domain_and_delete_gives_them_back(
        cloud: World, gpu1: SimHost) -> None:
    admin = cloud.admin
    created = boot(admin, "a6000")
    assert created["status"] == ServerStatus.BUILDING.value
    s = settle(admin, created, gpu1)
    assert s.status is ServerStatus.ACTIVE, s.fault
    assert s.host == "gpu-1"
    held = addresses(s)
    assert len(held) == 2                           # the A6000 and its audio function
    assert set(device_states(admin, "gpu-1", held).values()) == {"allocated"}

    name = domain_name(s.id)
    driver = gpu1.driver
    assert driver.is_active(name)
    hostdevs = read_hostdevs(driver.get_xml(name))
    assert {str(h.host) for h in hostdevs} == held
    assert sorted((h.guest.function, h.multifunction) for h in hostdevs  # type: ignore[union-attr]
                  ) == [(0, True), (1, False)]      # one guest slot, as on the host
    assert len({h.guest.slot_address for h in hostdevs}) == 1  # type: ignore[union-attr]
    assert overlay_path(gpu1.state_dir, s.id).exists()
    xml = admin.server_domain_xml(s.id)
    assert {str(h.host) for h in read_hostdevs(xml)} == held
    assert name in xml

    deleting = admin.delete_server(s.id)
    assert deleting["status"] in (ServerStatus.DELETING.value, ServerStatus.DELETED.value)
    gone = settle(admin, deleting, gpu1, until=(ServerStatus.DELETED, ServerStatus.ERROR))
    assert gone.status is ServerStatus.DELETED, gone.fault
    assert set(device_states(admin, "gpu-1", held).values()) == {"available"}
    assert not driver.exists(name)
    assert not overlay_path(gpu1.state_dir, s.id).exists()
    assert gpu1.successful(Operation.START, name) == 1


def test_numa_guest_is_pinned_to_its_devices_node(cloud: World, gpu1: SimHost) -> None:
    admin = cloud.admin
    s = settle(admin, boot(admin, "a100.numa"), gpu1)
    assert s.status is ServerStatus.ACTIVE, s.fault
    (gpu,) = s.devices
    assert s.numa_cells == (gpu.numa_node,)
    host = admin.host("gpu-1")
    cpus = next(n["cpus"] for n in host["numa_nodes"] if n["id"] == gpu.numa_node)
    xml = gpu1.driver.get_xml(domain_name(s.id))
    assert f'<memnode cellid="0" mode="strict" nodeset="{gpu.numa_node}"/>' in xml
    pins = {p.split('cpuset="')[1].split('"')[0] for p in xml.split("<vcpupin")[1:]}
    assert pins == {format_cpuset(cpus)}        # every vCPU on the node's CPUs, as discovered
    assert xml.count("<vcpupin") == 4
    settle(admin, admin.delete_server(s.id), gpu1, until=(ServerStatus.DELETED,))


# --- failures ------------------------------------------------------------------------------

def test_driver_error_fails_the_boot_frees_the_claims_and_leaves_no_domain(
        cloud: World, gpu1: SimHost) -> None:
    admin = cloud.admin
    gpu1.driver.inject_failure(Operation.START, "internal error: qemu unexpectedly closed "
                               "the monitor: vfio 0000:4b:00.0: group 3 is not viable")
    created = boot(admin, "a6000")
    claimed = addresses(server_record(created))
    assert len(claimed) == 2
    s = settle(admin, created, gpu1)
    assert s.status is ServerStatus.ERROR
    assert s.fault is not None and "qemu unexpectedly closed the monitor" in s.fault
    assert set(device_states(admin, "gpu-1", claimed).values()) == {"available"}
    assert not gpu1.driver.exists(domain_name(s.id))
    assert not overlay_path(gpu1.state_dir, s.id).exists()
    assert gpu1.driver.detached == set()


def test_missing_image_fails_the_boot(cloud: World, gpu1: SimHost) -> None:
    created = boot(cloud.admin, "a6000", image="lost")
    claimed = addresses(server_record(created))
    s = settle(cloud.admin, created, gpu1)
    assert s.status is ServerStatus.ERROR
    assert set(device_states(cloud.admin, "gpu-1", claimed).values()) == {"available"}
    assert s.fault is not None
    assert "image source /nonexistent/images/lost.qcow2 does not exist" in s.fault
    assert not gpu1.driver.exists(domain_name(s.id))


@contextmanager
def hypervisor_lock(host: SimHost) -> Iterator[None]:
    """Hold the fake hypervisor's lock: the agent's next driver call waits for it."""
    lock = host.state_dir / "virt" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def test_agent_killed_mid_task_completes_it_exactly_once(cloud: World,
                                                         gpu1: SimHost) -> None:
    admin = cloud.admin
    with hypervisor_lock(gpu1):
        created = boot(admin, "a6000")
        sid = str(created["id"])

        def begun() -> JSON | None:
            return next((j for j in gpu1.journals() if j["server_id"] == sid
                         and j["phase"] == "started"), None)
        journal = wait_for("the agent to begin the spawn", begun, logs=gpu1.logs)
        cloud.kill_agent(gpu1)                       # SIGKILL, holding nothing back
    assert server_record(admin.server(sid)).status is ServerStatus.BUILDING
    cloud.start_agent(gpu1)
    s = settle(admin, created, gpu1)
    assert s.status is ServerStatus.ACTIVE, s.fault
    name = domain_name(sid)
    assert gpu1.successful(Operation.DEFINE, name) == 1
    assert gpu1.successful(Operation.START, name) == 1
    after = wait_for("the journal to record the reply", lambda: next(
        (j for j in gpu1.journals() if j["id"] == journal["id"] and j["phase"] == "reported"),
        None), logs=gpu1.logs)
    assert after["attempts"] == 2 and after["reply"] == {"accepted": True, "state": "done"}
    assert after["result"]["ok"] is True
    assert "resuming task" in gpu1.logs()
    settle(admin, admin.delete_server(sid), gpu1, until=(ServerStatus.DELETED,))
    assert gpu1.successful(Operation.START, name) == 1


def test_delete_while_the_host_is_down_then_force(cloud: World, gpu1: SimHost) -> None:
    """DELETING until the host confirms; --force marks it DELETED at once, but the devices
    come back only when the agent has destroyed the domain."""
    admin = cloud.admin
    s = settle(admin, boot(admin, "a6000"), gpu1)
    assert s.status is ServerStatus.ACTIVE, s.fault
    held = addresses(s)
    cloud.stop_agent(gpu1)
    deleting = admin.delete_server(s.id)
    assert deleting["status"] == ServerStatus.DELETING.value
    assert set(device_states(admin, "gpu-1", held).values()) == {"allocated"}
    forced = admin.delete_server(s.id, force=True)
    assert forced["status"] == ServerStatus.DELETED.value
    assert set(device_states(admin, "gpu-1", held).values()) == {"allocated"}
    assert gpu1.driver.is_active(domain_name(s.id))  # the host has not been told yet
    cloud.start_agent(gpu1)
    wait_for("the devices to come back", lambda: set(device_states(
        admin, "gpu-1", held).values()) == {"available"}, logs=gpu1.logs)
    assert not gpu1.driver.exists(domain_name(s.id))
    assert server_record(admin.server(s.id)).status is ServerStatus.DELETED


# --- a task no agent runs in time ----------------------------------------------------------

def test_task_timeout_fails_the_boot_and_a_late_result_is_refused(tmp_path: Path) -> None:
    with world(tmp_path, env={"PCIPASS_TASKS_TIMEOUT": "2"}) as w:
        host = w.add_host("gpu-9", index=1)
        once = w.start_agent(host, "--once")
        assert once.proc.wait(timeout=60) == 0, host.logs()
        created = boot(w.admin, "a6000")
        assert created["status"] == ServerStatus.BUILDING.value
        claimed = addresses(server_record(created))
        assert set(device_states(w.admin, "gpu-9", claimed).values()) == {"claimed"}
        with ApiClient(w.api.url, host.token) as agent_api:
            (task,) = agent_api.poll_tasks("gpu-9", 0)
            assert task["kind"] == "spawn" and task["server_id"] == created["id"]
            s = settle(w.admin, created)
            assert s.status is ServerStatus.ERROR
            assert "timed out" in (fault_message(w.admin.server(s.id)) or "")
            assert set(device_states(w.admin, "gpu-9", claimed).values()) == {"available"}
            assert agent_api.poll_tasks("gpu-9", 0) == []
            with pytest.raises(errors.Conflict) as refused:
                agent_api.start_task(task["id"])
            assert refused.value.code == "task_not_runnable"
            late = agent_api.report_task(task["id"], True, None, "<domain/>")
            assert late == {"accepted": False, "state": "expired"}
            assert after_report(Kind.SPAWN, Result(True), late) is AfterReport.ROLL_BACK
        assert server_record(w.admin.server(s.id)).status is ServerStatus.ERROR
        assert_fleet_consistent(w.admin)

        # an agent that starts now never runs the expired task
        w.start_agent(host)
        wait_for("the task loop", lambda: "task loop for gpu-9 started" in host.logs(),
                 logs=host.logs)
        time.sleep(3.0)          # a poll or two
        assert host.driver.list() == []
        assert host.journals() == []
        w.stop_agent(host)
        assert_fleet_consistent(w.admin)
        assert "Traceback" not in host.logs(), host.logs()[-6000:]
