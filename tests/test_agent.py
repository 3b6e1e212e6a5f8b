"""The host agent: its pure decisions, then a real agent process against a real server."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

import apiserver
from apiserver import ApiServer, api_server
from pcipass.agent.loop import Agent, stop_on_signals, wait_until_stopped
from pcipass.agent.policy import (
    Accepted,
    Failed,
    LoopState,
    Refused,
    Report,
    Stale,
    Wait,
    Why,
    after_attempt,
    backoff_delay,
    next_action,
    poll_period,
    report_hash,
)
from pcipass.cli.client import ApiClient
from pcipass.host.discovery import discover
from pcipass.host.sysfs_tree import FakeDevice, FakeNetDev, FakeSriov, SysfsTree
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, PciDevice
from pcipass.pci.inventory import Inventory, inventory_to_json

T = TypeVar("T")

A, B = "hash-a", "hash-b"


def state(**kw: object) -> LoopState:
    base = LoopState(interval=60.0, poll=5.0)
    return replace(base, **kw)  # type: ignore[arg-type]


# --- backoff -----------------------------------------------------------------------------

@pytest.mark.parametrize(("failures", "rand", "expected"), [
    (0, 0.5, 0.0),
    (1, 0.0, 0.5),    # nominal 1s, lower end of the jitter window
    (1, 1.0, 1.0),
    (2, 0.0, 1.0),    # nominal 2s
    (3, 1.0, 4.0),    # nominal 4s
    (7, 1.0, 60.0),   # 64s nominal, capped at 60
    (50, 0.0, 30.0),  # never overflows, stays capped
])
def test_backoff_doubles_is_capped_and_jittered(failures: int, rand: float,
                                                expected: float) -> None:
    assert backoff_delay(failures, rand) == pytest.approx(expected)


def test_backoff_never_below_half_nor_above_nominal() -> None:
    for failures in range(1, 12):
        nominal = min(60.0, 2.0 ** (failures - 1))
        for r in (0.0, 0.25, 0.5, 0.999):
            d = backoff_delay(failures, r)
            assert nominal / 2 <= d <= nominal


def test_poll_period_is_at_most_five_seconds_and_never_above_interval() -> None:
    assert poll_period(60) == 5
    assert poll_period(2) == 2


def test_report_hash_ignores_key_order_but_not_values() -> None:
    assert report_hash({"a": 1, "b": [1, 2]}) == report_hash({"b": [1, 2], "a": 1})
    assert report_hash({"a": 1}) != report_hash({"a": 2})


# --- next_action -------------------------------------------------------------------------

def test_first_iteration_reports() -> None:
    assert next_action(state(), now=0.0, discovered=A) == Report(Why.FIRST)


def test_unchanged_waits_for_the_interval_in_poll_sized_steps() -> None:
    s = state(accepted_hash=A, last_report_at=100.0)
    assert next_action(s, 101.0, A) == Wait(5.0)
    assert next_action(s, 158.0, A) == Wait(pytest.approx(2.0))
    assert next_action(s, 160.0, A) == Report(Why.PERIODIC)


def test_a_change_reports_at_once() -> None:
    s = state(accepted_hash=A, last_report_at=100.0)
    assert next_action(s, 101.0, B) == Report(Why.CHANGED)


def test_backoff_holds_even_when_discovery_changes() -> None:
    s = state(accepted_hash=A, last_report_at=100.0, failures=3, retry_at=110.0)
    assert next_action(s, 108.0, B) == Wait(pytest.approx(2.0))
    assert next_action(s, 110.0, B) == Report(Why.CHANGED)


def test_refused_report_is_not_resent_until_changed_or_interval() -> None:
    s = state(accepted_hash=A, last_report_at=50.0, refused_hash=B, refused_at=100.0)
    assert isinstance(next_action(s, 101.0, B), Wait)
    assert isinstance(next_action(s, 159.0, B), Wait)
    assert next_action(s, 160.0, B) == Report(Why.CHANGED)
    # a different inventory is a new report: it goes at once
    assert next_action(s, 101.0, "hash-c") == Report(Why.CHANGED)


def test_refused_first_report_is_not_resent_in_a_tight_loop() -> None:
    s = after_attempt(state(), Refused("bad", "devices[0].numa_node"), now=10.0, sent=A,
                      rand=0.5)
    action = next_action(s, 10.1, A)
    assert isinstance(action, Wait) and action.seconds > 0


# --- after_attempt -----------------------------------------------------------------------

def test_accepted_keeps_generation_and_resets_failures() -> None:
    s = state(failures=4, retry_at=99.0, refused_hash=B, refused_at=1.0)
    s2 = after_attempt(s, Accepted(7), now=100.0, sent=A, rand=0.5)
    assert (s2.generation, s2.accepted_hash, s2.last_report_at) == (7, A, 100.0)
    assert (s2.failures, s2.retry_at, s2.refused_hash) == (0, None, None)


def test_failures_back_off_longer_each_time() -> None:
    s = state()
    delays = []
    for i in range(5):
        s = after_attempt(s, Failed("connection refused"), now=float(i), sent=A, rand=1.0)
        assert s.retry_at is not None
        delays.append(s.retry_at - i)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert s.failures == 5


def test_stale_keeps_the_reread_generation_and_backs_off() -> None:
    s = after_attempt(state(generation=3), Stale(9), now=0.0, sent=A, rand=1.0)
    assert s.generation == 9 and s.retry_at == 1.0


def test_refused_does_not_back_off_and_records_what_was_refused() -> None:
    s = after_attempt(state(failures=2, retry_at=5.0), Refused("x", None), now=3.0, sent=B,
                      rand=0.0)
    assert (s.failures, s.retry_at, s.refused_hash, s.refused_at) == (0, None, B, 3.0)


def test_inputs_are_not_mutated() -> None:
    s = state(generation=1)
    after_attempt(s, Accepted(2), now=1.0, sent=A, rand=0.0)
    assert s.generation == 1


# --- a real agent process against a real server ----------------------------------------------

AGENT_CMD = [sys.executable, "-c", "from pcipass.cli.main import main; main()", "agent"]
WAIT_S = 15.0


def wait_for(what: str, check: Callable[[], T | None], timeout: float = WAIT_S,
             log: Callable[[], str] | None = None) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            detail = f"\n--- agent log ---\n{log()}" if log else ""
            raise AssertionError(f"timed out waiting for {what}{detail}")
        time.sleep(0.05)


@dataclass
class AgentProc:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise AssertionError("the agent did not stop on SIGTERM") from None
        return self.proc.returncode


@contextmanager
def agent_process(url: str, token: str, host: str, root: Path, state_dir: Path,
                  *extra: str) -> Iterator[AgentProc]:
    log_path = state_dir.parent / f"agent-{host}-{time.monotonic_ns()}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCIPASS_")}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*AGENT_CMD, "--server", url, "--token", token, "--host-name", host,
             "--sysfs-root", str(root), "--state-dir", str(state_dir), *extra],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    agent = AgentProc(proc, log_path)
    try:
        yield agent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def host_devices(http: httpx.Client, host: str) -> dict[str, dict[str, Any]] | None:
    reply = http.get("/v1/devices", params={"host": host, "limit": 1000})
    if reply.status_code != 200:
        return None
    return {d["address"]: d for d in reply.json()["devices"]}


def live(devices: dict[str, dict[str, Any]] | None) -> set[str]:
    return {a for a, d in (devices or {}).items() if d["state"] != "removed"}


def make_token(server: ApiServer, host: str) -> str:
    with server.client() as http:
        reply = http.post("/v1/tokens", json={"role": "agent", "host": host})
        assert reply.status_code == 201, reply.text
        token: str = reply.json()["token"]
        return token


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    work = tmp_path_factory.mktemp("agent-server")
    with api_server(f"sqlite:///{work / 'pcipass.db'}", work) as srv:
        yield srv
        log = srv.log()
        assert "Traceback" not in log, log[-6000:]  # every error answered, none crashed


NIC_SPEC = '{"vendor_id": "8086", "product_id": "1889", "physical_network": "physnet1"}'


def small_host(root: Path) -> SysfsTree:
    """Two NUMA nodes, a GPU and an SR-IOV PF with its VFs off: quick to discover."""
    tree = SysfsTree(root)
    tree.add_numa_node(0, range(8), 16384)
    tree.add_numa_node(1, range(8, 16), 16384)
    tree.add_device(FakeDevice("0000:17:00.0", "10de", "20f1", "030200", numa_node=0,
                               iommu_group=1, driver="vfio-pci"))
    tree.add_device(FakeDevice(
        "0000:3b:00.0", "8086", "1592", "020000", numa_node=1, iommu_group=2, driver="ice",
        netdevs=(FakeNetDev("ens1f0", "b4:96:91:00:00:10"),),
        sriov=FakeSriov(total_vfs=8, vf_product_id="1889", vf_driver="iavf",
                        first_vf_offset=8),
    ))
    return tree


def test_agent_reports_then_follows_hot_plug_and_vfs(server: ApiServer, tmp_path: Path) -> None:
    tree = small_host(tmp_path / "sys-root")
    state_dir = tmp_path / "state"
    token = make_token(server, "edge-1")
    with server.client() as http, agent_process(
        server.url, token, "edge-1", tree.root, state_dir, "--interval", "60", "--poll", "0.2",
        "--device-spec", '{"vendor_id": "10de"}', "--device-spec", NIC_SPEC,
    ) as agent:
        first = wait_for("the first report", lambda: live(host_devices(http, "edge-1")),
                         log=agent.log)
        assert first == {"0000:17:00.0", "0000:3b:00.0"}
        generation = http.get("/v1/hosts/edge-1").json()["generation"]

        # hot-plug a device: reported within WAIT_S, long before the 60 s interval
        tree.add_device(FakeDevice("0000:5e:00.0", "10de", "20f1", "030200", numa_node=1,
                                   iommu_group=3, driver="vfio-pci"))
        wait_for("the hot-plugged GPU", lambda: "0000:5e:00.0" in live(
            host_devices(http, "edge-1")), log=agent.log)

        # enable VFs: they are reported, with the device spec's tag
        vfs = {str(a) for a in tree.enable_vfs("0000:3b:00.0", 4)}
        devices = wait_for("the VFs", lambda: (d := host_devices(http, "edge-1")) and
                           vfs <= live(d) and d, log=agent.log)
        assert all(devices[a]["tags"] == {"physical_network": "physnet1"} for a in vfs)
        assert all(devices[a]["assignable"] for a in vfs)

        # disable them again: gone from what the host offers
        tree.disable_vfs("0000:3b:00.0")
        wait_for("the VFs to go", lambda: not (vfs & live(host_devices(http, "edge-1"))),
                 log=agent.log)
        assert http.get("/v1/hosts/edge-1").json()["generation"] > generation

        # the state file holds the last generation the server gave back
        saved = json.loads((state_dir / "agent-edge-1.json").read_text())
        current = http.get("/v1/hosts/edge-1").json()["generation"]
        wait_for("the saved generation", lambda: json.loads(
            (state_dir / "agent-edge-1.json").read_text())["generation"] == current)
        assert saved["server"] == server.url

        assert agent.stop() == 0
    assert "stopped" in agent.log()
    assert "Traceback" not in agent.log()


def test_agent_resolves_a_stale_generation(server: ApiServer, tmp_path: Path) -> None:
    """A restart with a stale saved generation, and another writer racing a live agent."""
    tree = small_host(tmp_path / "sys-root")
    state_dir = tmp_path / "state"
    token = make_token(server, "edge-2")
    with agent_process(server.url, token, "edge-2", tree.root, state_dir, "--once") as agent:
        assert agent.proc.wait(timeout=30) == 0, agent.log()
    # the saved generation goes stale behind the agent's back
    path = state_dir / "agent-edge-2.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "generation": saved["generation"] + 40}))
    tree.add_device(FakeDevice("0000:5e:00.0", "10de", "20f1", "030200", numa_node=1,
                               iommu_group=3))
    with server.client() as http, agent_process(
        server.url, token, "edge-2", tree.root, state_dir, "--interval", "60", "--poll", "0.2",
    ) as agent:
        wait_for("the report after a 409", lambda: "0000:5e:00.0" in live(
            host_devices(http, "edge-2")), log=agent.log)
        assert "stale" in agent.log()
        # another writer (an admin) bumps the generation; the agent's next report still lands
        host = http.get("/v1/hosts/edge-2").json()
        report = inventory_to_json(discover(tree.root, hostname="edge-2"))
        reply = http.put("/v1/hosts/edge-2/inventory",
                         json={"generation": host["generation"], **report})
        assert reply.status_code == 200, reply.text
        assert reply.json()["generation"] == host["generation"] + 1
        tree.remove_device("0000:5e:00.0")
        wait_for("the report after the race", lambda: "0000:5e:00.0" not in live(
            host_devices(http, "edge-2")), log=agent.log)
        assert agent.stop() == 0


def test_agent_retries_until_the_server_is_up(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    tree = small_host(tmp_path / "sys-root")
    port = apiserver.free_port()
    token = secrets.token_urlsafe(32)
    url = f"http://127.0.0.1:{port}"
    with agent_process(url, token, "edge-3", tree.root, tmp_path / "state",
                       "--interval", "60", "--poll", "0.2") as agent:
        wait_for("two failed attempts", lambda: agent.log().count("failed") >= 2,
                 log=agent.log)
        assert agent.proc.poll() is None  # still trying
        monkeypatch.setattr(apiserver, "free_port", lambda: port)
        with api_server(f"sqlite:///{tmp_path / 'late.db'}", tmp_path / "late",
                        env={"PCIPASS_ADMIN_TOKEN": token}) as srv, \
                srv.client(token) as http:
            assert srv.url == url
            found = wait_for("the report once the server is up",
                             lambda: live(host_devices(http, "edge-3")), timeout=30,
                             log=agent.log)
            assert "0000:17:00.0" in found
            assert agent.stop() == 0
    text = agent.log()
    assert "retry in" in text and "reported edge-3" in text


def test_once_exits_1_when_the_server_is_down(tmp_path: Path) -> None:
    tree = small_host(tmp_path / "sys-root")
    with agent_process(f"http://127.0.0.1:{apiserver.free_port()}", "t", "edge-4", tree.root,
                       tmp_path / "state", "--once") as agent:
        assert agent.proc.wait(timeout=30) == 1
    assert "cannot reach" in agent.log()


def test_agent_refuses_a_bad_spec_before_starting(tmp_path: Path) -> None:
    tree = small_host(tmp_path / "sys-root")
    with agent_process("http://127.0.0.1:9", "t", "edge-5", tree.root, tmp_path / "state",
                       "--device-spec", '{"vendor_id": 10}') as agent:
        assert agent.proc.wait(timeout=30) == 2
    assert "vendor_id" in agent.log()


# --- a refused report (in-process: discovery never builds one, so it is made here) -----------

class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            self.puts += 1
        return super().handle_request(request)


def test_refused_report_is_logged_and_not_resent(server: ApiServer, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    good = discover(small_host(tmp_path / "sys-root").root, hostname="edge-6")
    orphan_vf = PciDevice(PciAddress.parse("0000:3b:01.0"), "8086", "1889", "020000",
                          dev_type=DevType.VF, parent_addr=PciAddress.parse("0000:99:00.0"))
    bad = Inventory(host=good.host, devices=(*good.devices, orphan_vf))
    current = {"inv": bad}
    transport = CountingTransport()
    client = ApiClient(server.url, make_token(server, "edge-6"), transport=transport)
    agent = Agent(client=client, host="edge-6", discover=lambda: current["inv"],
                  state_file=tmp_path / "state" / "agent-edge-6.json", interval=60, poll=0.05)
    thread = threading.Thread(target=agent.run)
    caplog.set_level(logging.INFO, logger="pcipass.agent")
    thread.start()
    try:
        wait_for("the refusal", lambda: transport.puts >= 1)
        time.sleep(1.0)  # twenty polls: none of them may resend the same report
        assert transport.puts == 1
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1
        assert "devices[" in refusals[0].getMessage() and "parent_addr" in refusals[0].getMessage()
        current["inv"] = good  # fixed: a different report goes out at once
        wait_for("the corrected report", lambda: agent.state.accepted_hash is not None)
        assert transport.puts == 2
    finally:
        agent.stop.set()
        thread.join(timeout=10)
        client.close()
    assert not thread.is_alive()


def test_ctrl_c_delivered_to_another_thread_still_stops_the_main_thread() -> None:
    """The kernel may hand SIGINT to any thread; the main thread's wait must still see the
    handler's ``stop`` (an untimed ``Event.wait`` slept through it: the demo hung on Ctrl-C)."""
    assert threading.current_thread() is threading.main_thread()
    stop = threading.Event()
    fallback = threading.Event()

    def signal_from_here() -> None:
        time.sleep(0.1)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # this thread, not main
        if not stop.wait(10):          # never leave the test hanging if the fix regresses
            fallback.set()
            stop.set()

    with stop_on_signals(stop):
        helper = threading.Thread(target=signal_from_here)
        started = time.monotonic()
        helper.start()
        wait_until_stopped(stop, poll=0.2)
        waited = time.monotonic() - started
    helper.join()
    assert not fallback.is_set()
    assert waited < 5, waited
