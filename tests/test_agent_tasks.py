"""Agent tasks: the pure rules, then the runner against the fake driver and a fake control plane.

The fake control plane (:class:`FakeApi`) keeps each task's state as the real one does
(queued → running → done | failed, or expired) and answers with the same shapes, so the
journal and resume rules are tested here without HTTP; ``tests/test_e2e_boot.py`` runs the
real processes.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pcipass import errors
from pcipass.agent.loop import Agent, run_agent
from pcipass.agent.ports import SavedVf, SwitchBinding
from pcipass.agent.tasks import (
    MAX_ATTEMPTS,
    AfterReport,
    Do,
    Journal,
    JournalDir,
    Phase,
    Result,
    Seen,
    Step,
    Task,
    TaskRunner,
    after_report,
    journal_from_json,
    journal_to_json,
    on_task,
    parse_task,
    pending,
    prunable,
    spawn_plan,
    teardown_plan,
)
from pcipass.host.sriov import VfConfig, VfSlot
from pcipass.pci.address import PciAddress
from pcipass.pci.device import HostInfo, NumaNode
from pcipass.pci.inventory import Inventory
from pcipass.virt.driver import Operation
from pcipass.virt.fake import Call, FakeVirtDriver
from pcipass.virt.libvirt_driver import LibvirtDriver
from pcipass.virt.nodedev import FakeNodeDevices
from pcipass.virt.overlay import QemuImgOverlays, RecordingOverlays
from pcipass.virt.payload import domain_name, from_payload, overlay_path
from pcipass.virt.xml import build_domain_xml, read_hostdevs
from test_virt_overlay import image
from test_virt_xml import TEST_URI

HOST = "gpu-1"
HOST_CPUS = {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)}
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def a(text: str) -> PciAddress:
    return PciAddress.parse(text)


# --- pure rules ----------------------------------------------------------------------------

def journal(phase: Phase = Phase.STARTED, **kw: Any) -> Journal:
    base = Journal(id="t1", host=HOST, kind="spawn", server_id=str(uuid.uuid4()), payload={},
                   phase=phase, started_at=T0, updated_at=T0)
    return replace(base, **kw)


@pytest.mark.parametrize(("j", "expected"), [
    (None, Do.RUN),
    (journal(), Do.RESUME),
    (journal(attempts=MAX_ATTEMPTS - 1), Do.RESUME),
    (journal(attempts=MAX_ATTEMPTS), Do.GIVE_UP),
    (journal(Phase.FINISHED, result=Result(True)), Do.RESEND),
    (journal(Phase.FINISHED, result=Result(False, "x"), attempts=9), Do.RESEND),
    (journal(Phase.REPORTED, result=Result(True)), Do.RESEND),
])
def test_on_task(j: Journal | None, expected: Do) -> None:
    assert on_task(j) is expected


def test_pending_is_this_hosts_unanswered_oldest_first() -> None:
    js = [journal(id="c", started_at=T0 + timedelta(seconds=2)),
          journal(Phase.FINISHED, id="b", result=Result(True)),
          journal(Phase.REPORTED, id="done", result=Result(True)),
          journal(id="other", host="gpu-2"),
          journal(id="a", started_at=T0 - timedelta(seconds=1))]
    assert [j.id for j in pending(js, HOST)] == ["a", "b", "c"]


def test_prunable_only_old_reported_journals() -> None:
    old = T0 - timedelta(days=8)
    js = [journal(Phase.REPORTED, id="old", updated_at=old, result=Result(True)),
          journal(Phase.REPORTED, id="new", updated_at=T0, result=Result(True)),
          journal(Phase.STARTED, id="begun", updated_at=old),
          journal(Phase.FINISHED, id="unsent", updated_at=old, result=Result(True))]
    assert prunable(js, T0) == ["old"]


SPAWN_STEPS = (Step.CREATE_DISK, Step.DETACH, Step.PROGRAM_VFS, Step.BIND_SWITCH, Step.DEFINE,
               Step.START)


@pytest.mark.parametrize(("seen", "spawn", "teardown"), [
    (Seen(False, False), SPAWN_STEPS, (Step.REATTACH, Step.REMOVE_DISK)),
    (Seen(True, False), SPAWN_STEPS, (Step.UNDEFINE, Step.REATTACH, Step.REMOVE_DISK)),
    (Seen(True, True), (),
     (Step.DESTROY, Step.UNDEFINE, Step.REATTACH, Step.REMOVE_DISK)),
])
def test_plans(seen: Seen, spawn: tuple[Step, ...], teardown: tuple[Step, ...]) -> None:
    assert spawn_plan(seen) == spawn
    assert teardown_plan(seen) == teardown


@pytest.mark.parametrize(("kind", "result", "reply", "expected"), [
    ("spawn", Result(True), {"accepted": True}, AfterReport.DONE),
    ("spawn", Result(True), {"accepted": False, "state": "expired"}, AfterReport.ROLL_BACK),
    ("spawn", Result(True), {"accepted": False, "state": "failed"}, AfterReport.ROLL_BACK),
    # a re-send of a result the server already took (its first reply was lost)
    ("spawn", Result(True), {"accepted": False, "state": "done"}, AfterReport.DONE),
    ("spawn", Result(True), {"accepted": False}, AfterReport.DONE),
    ("spawn", Result(False, "x"), {"accepted": False, "state": "expired"}, AfterReport.DONE),
    ("destroy", Result(True), {"accepted": False, "state": "expired"}, AfterReport.DONE),
    ("spawn", Result(True), None, AfterReport.RETRY),
    ("spawn", Result(True), {"accepted": "yes"}, AfterReport.RETRY),
    ("spawn", Result(True), [], AfterReport.RETRY),
])
def test_after_report(kind: str, result: Result, reply: Any, expected: AfterReport) -> None:
    assert after_report(kind, result, reply) is expected


def test_journal_json_round_trip() -> None:
    saved = SavedVf("p1", VfSlot("ens1f0", 3), VfConfig(
        mac="02:00:00:00:00:07", vlan=12, qos=3, vlan_proto="802.1ad", spoofchk=False,
        trust=True, link_state="disable", min_tx_rate_mbps=5, max_tx_rate_mbps=50))
    j = journal(Phase.FINISHED, payload={"server": {"id": "x"}}, attempts=2,
                detached=("0000:3b:00.0",), result=Result(False, "boom", None),
                reply={"accepted": True}, vfs=(saved,),
                bound=(SwitchBinding("p1", "ens1f0", 12, "fa:16:3e:00:00:01"),
                       SwitchBinding("p2", "ens2f0", None, "fa:16:3e:00:00:02")),
                unbound=(SwitchBinding("p2", "ens2f0", None, "fa:16:3e:00:00:02"),))
    text = json.dumps(journal_to_json(j))
    assert journal_from_json(json.loads(text)) == j
    # a journal written before ports existed still reads, with none of them
    old = journal_to_json(journal())
    for key in ("vfs", "bound", "unbound"):
        del old[key]
    assert journal_from_json(old) == journal(server_id=old["server_id"])
    with pytest.raises(ValueError):
        journal_from_json({"version": 99})


def test_parse_task() -> None:
    t = parse_task({"id": "t", "kind": "spawn", "server_id": "s", "state": "queued",
                    "payload": {"x": 1}, "created_at": "…", "deadline": None})
    assert t == Task("t", "spawn", "s", {"x": 1}, "queued")
    bad_tasks: list[Any] = [[], {"kind": "spawn", "server_id": "s"},
                            {"id": "", "kind": "k", "server_id": "s"},
                            {"id": "t", "kind": "spawn", "server_id": "s", "payload": [1]},
                            {"id": "../x", "kind": "spawn", "server_id": "s"}]
    for bad in bad_tasks:
        with pytest.raises(errors.InvalidInput):
            parse_task(bad)


# --- a fake control plane ------------------------------------------------------------------

FINAL = ("done", "failed", "expired")


@dataclass
class FakeApi:
    """The task routes' behaviour, in memory; every call recorded."""

    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    down: int = 0                 # the next N calls fail as if the server were unreachable
    lose_report_replies: int = 0  # the next N reports are taken but their reply is lost
    reports: list[tuple[str, bool, str | None]] = field(default_factory=list)
    puts: int = 0
    url: str = "http://ctl"

    def add(self, task_id: str, kind: str, payload: dict[str, Any],
            state: str = "queued") -> None:
        self.tasks[task_id] = {"id": task_id, "kind": kind,
                               "server_id": payload["server"]["id"], "payload": payload,
                               "created_at": "2024-05-01T12:00:00+00:00", "deadline": None}
        self.states[task_id] = state

    def _maybe_down(self) -> None:
        if self.down > 0:
            self.down -= 1
            raise errors.ServerUnreachable("cannot reach http://ctl: ConnectError")

    def poll_tasks(self, host: str, wait: float = 0.0) -> list[dict[str, Any]]:
        self.calls.append(("poll", host))
        self._maybe_down()
        return [{**t, "state": self.states[i]} for i, t in self.tasks.items()
                if self.states[i] in ("queued", "running")]

    def start_task(self, task_id: str) -> dict[str, Any]:
        self.calls.append(("start", task_id))
        self._maybe_down()
        state = self.states[task_id]
        if state in FINAL:
            raise errors.Conflict(f"task {task_id} is {state}", code="task_not_runnable")
        self.states[task_id] = "running"
        return {**self.tasks[task_id], "state": "running"}

    def report_task(self, task_id: str, ok: bool, message: str | None = None,
                    domain_xml: str | None = None) -> dict[str, Any]:
        self.calls.append(("report", task_id))
        self._maybe_down()
        self.reports.append((task_id, ok, message))
        state = self.states[task_id]
        if state in FINAL:
            return {"accepted": False, "state": state}
        self.states[task_id] = "done" if ok else "failed"
        self.results[task_id] = {"ok": ok, "message": message, "domain_xml": domain_xml}
        if self.lose_report_replies > 0:
            self.lose_report_replies -= 1
            raise errors.ServerUnreachable("cannot reach http://ctl: ReadTimeout")
        return {"accepted": True, "state": self.states[task_id]}

    def put_inventory(self, host: str, generation: int | None,
                      inventory: dict[str, Any]) -> dict[str, Any]:
        self.puts += 1
        return {"host": host, "generation": 1, "changed": self.puts == 1}

    def host(self, name: str) -> dict[str, Any]:
        return {"generation": 1}

    def count(self, what: str, task_id: str | None = None) -> int:
        return sum(1 for c, t in self.calls if c == what and task_id in (None, t))


class Crash(BaseException):
    """The agent process dying at this point (nothing after it runs, no cleanup)."""


class CrashingDriver(FakeVirtDriver):
    """The fake driver, that 'kills the agent' on the named operation, once."""

    crash_on: Operation | None = None

    def _crash(self, op: Operation) -> None:
        if self.crash_on is op:
            self.crash_on = None
            raise Crash(str(op))

    def start(self, name: str) -> None:
        super().start(name)
        self._crash(Operation.START)

    def define(self, xml: str) -> str:
        out = super().define(xml)
        self._crash(Operation.DEFINE)
        return out

    def undefine(self, name: str) -> None:
        super().undefine(name)
        self._crash(Operation.UNDEFINE)


# --- builders ------------------------------------------------------------------------------

@dataclass
class Host:
    """One simulated host: its state dir, fake hypervisor, disk record and image file."""

    root: Path
    api: FakeApi
    driver: CrashingDriver
    image: Path

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def overlays(self) -> RecordingOverlays:
        return RecordingOverlays(self.state_dir / "virt" / "disks.jsonl")

    def runner(self, **kw: Any) -> TaskRunner:
        """A new runner, as after an agent restart (it shares nothing in memory)."""
        opts: dict[str, Any] = {
            "client": self.api, "host": HOST, "state_dir": self.state_dir,
            "open_driver": lambda: self.driver, "overlays": self.overlays,
            "host_cpus": lambda: HOST_CPUS, "wait": 0.0, "rand": lambda: 0.0,
        }
        opts.update(kw)
        return TaskRunner(**opts)

    def journal(self, task_id: str) -> Journal | None:
        return JournalDir(self.state_dir / "tasks").load(task_id)

    def ops(self) -> list[tuple[str, str]]:
        return [(str(c.operation), c.target) for c in self.driver.calls if c.error is None]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    image = tmp_path / "images" / "cuda.qcow2"
    image.parent.mkdir()
    image.write_bytes(b"")
    return Host(tmp_path, FakeApi(), CrashingDriver(tmp_path / "state" / "virt"), image)


GPU = ("0000:3b:00.0", "0000:3b:00.1")
NIC = ("0000:af:00.0", "0000:af:00.1")


def spawn_payload(host: Host, server_id: str | None = None, *, unmanaged: bool = False,
                  numa: bool = True, source: str | None = None) -> dict[str, Any]:
    sid = server_id or str(uuid.uuid4())
    devices = [{"address": x, "alias": "a100", "managed": True, "unit": 0} for x in GPU]
    if unmanaged:
        devices += [{"address": x, "alias": "nic", "managed": False, "unit": 1} for x in NIC]
    return {
        "server": {"id": sid, "name": "train-1", "project": "ml"},
        "flavor": {"name": "gpu.small", "vcpus": 2, "ram_mb": 2048, "disk_gb": 10,
                   "extra_specs": {}},
        "image": {"name": "cuda", "source": source or str(host.image), "properties": {}},
        "devices": devices,
        "numa": {"cells": [{"id": 0, "host_node": 1, "vcpus": 2, "memory_mb": 2048}]}
        if numa else None,
    }


def destroy_payload(spawn: dict[str, Any]) -> dict[str, Any]:
    return {"server": spawn["server"],
            "devices": [{"address": d["address"], "managed": d["managed"]}
                        for d in spawn["devices"]]}


def name_of(payload: dict[str, Any]) -> str:
    return domain_name(payload["server"]["id"])


def disk_of(host: Host, payload: dict[str, Any]) -> Path:
    return overlay_path(host.state_dir, payload["server"]["id"])


def assert_clean(host: Host, payload: dict[str, Any]) -> None:
    """Nothing of the server is left on the host."""
    assert not host.driver.exists(name_of(payload))
    assert host.driver.detached == set()
    assert not disk_of(host, payload).exists()


# --- spawn ---------------------------------------------------------------------------------

def test_spawn_defines_starts_and_reports_the_domain(host: Host) -> None:
    p = spawn_payload(host)
    host.api.add("t1", "spawn", p)
    runner = host.runner()
    assert runner.run_once() is True
    name = name_of(p)
    assert host.driver.is_active(name)
    xml = host.driver.get_xml(name)
    assert {str(h.host) for h in read_hostdevs(xml)} == set(GPU)
    assert [h.multifunction for h in read_hostdevs(xml)] == [True, False]
    assert "<vcpupin vcpu=\"0\" cpuset=\"4-7\"/>" in xml      # pinned to host node 1's CPUs
    assert disk_of(host, p).exists()
    assert host.overlays.calls[0]["backing"] == str(host.image)
    assert host.api.states["t1"] == "done"
    assert host.api.results["t1"] == {"ok": True, "message": None, "domain_xml": xml}
    j = host.journal("t1")
    assert j is not None and j.phase is Phase.REPORTED and j.result == Result(True, None, xml)
    before = list(host.driver.calls)
    assert runner.run_once() is False       # nothing listed, nothing rerun
    assert host.driver.calls == before
    assert host.api.count("report") == 1


def test_unmanaged_functions_detached_before_define_reattached_after_undefine(
        host: Host) -> None:
    p = spawn_payload(host, unmanaged=True)
    host.api.add("s", "spawn", p)
    runner = host.runner()
    runner.run_once()
    assert host.api.states["s"] == "done"
    assert host.driver.detached == {a(x) for x in NIC}
    name = name_of(p)
    live = read_hostdevs(host.driver.get_xml(name))
    assert {str(h.host) for h in live if not h.managed} == set(NIC)
    host.api.add("d", "destroy", destroy_payload(p))
    runner.run_once()
    assert host.api.states["d"] == "done"
    assert host.ops() == [
        ("nodedev_detach", NIC[0]), ("nodedev_detach", NIC[1]), ("define", name),
        ("start", name), ("destroy", name), ("undefine", name),
        ("nodedev_reattach", NIC[0]), ("nodedev_reattach", NIC[1])]
    assert_clean(host, p)


@pytest.mark.parametrize(("op", "target"), [
    (Operation.START, None), (Operation.DEFINE, None), (Operation.NODEDEV_DETACH, NIC[1])])
def test_spawn_failure_cleans_up_and_reports_the_drivers_message(
        host: Host, op: Operation, target: str | None) -> None:
    p = spawn_payload(host, unmanaged=True)
    host.driver.inject_failure(op, "internal error: qemu unexpectedly closed the monitor",
                               target=target)
    host.api.add("t1", "spawn", p)
    host.runner().run_once()
    assert host.api.states["t1"] == "failed"
    message = host.api.results["t1"]["message"]
    assert f"{op}" in message and "qemu unexpectedly closed the monitor" in message
    assert host.api.results["t1"]["domain_xml"] is None
    assert_clean(host, p)
    reattached = {c.target for c in host.driver.calls if c.operation is
                  Operation.NODEDEV_REATTACH and c.error is None}
    assert reattached == set(NIC)       # everything the spawn may have detached went back


def test_missing_image_is_a_failure_that_leaves_nothing(host: Host) -> None:
    p = spawn_payload(host, source="/nonexistent/images/cuda.qcow2", unmanaged=True)
    host.api.add("t1", "spawn", p)
    host.runner().run_once()
    assert host.api.states["t1"] == "failed"
    assert "image source /nonexistent/images/cuda.qcow2 does not exist" in \
        host.api.results["t1"]["message"]
    assert_clean(host, p)
    assert not any(c.operation is Operation.DEFINE for c in host.driver.calls)


def test_invalid_payload_fails_naming_the_field_without_touching_the_host(host: Host) -> None:
    p = spawn_payload(host)
    p["numa"]["cells"][0]["host_node"] = 7
    host.api.add("t1", "spawn", p)
    host.runner().run_once()
    assert host.api.states["t1"] == "failed"
    assert "host NUMA node 7" in host.api.results["t1"]["message"]
    assert host.driver.calls == []


def test_unknown_kind_fails(host: Host) -> None:
    host.api.add("t1", "resize", {"server": {"id": str(uuid.uuid4())}})
    host.runner().run_once()
    assert host.api.states["t1"] == "failed"
    assert "cannot run 'resize' tasks" in host.api.results["t1"]["message"]


def test_a_task_the_server_will_not_start_is_not_run(host: Host) -> None:
    p = spawn_payload(host)
    host.api.add("t1", "spawn", p, state="queued")
    real_start = host.api.start_task

    def refuse(task_id: str) -> dict[str, Any]:
        host.api.states[task_id] = "expired"
        return real_start(task_id)

    host.api.start_task = refuse  # type: ignore[method-assign]
    host.runner().run_once()
    assert host.driver.calls == [] and host.journal("t1") is None
    assert host.api.count("report") == 0


# --- journal and restarts ------------------------------------------------------------------

def test_finished_task_is_not_rerun_but_its_result_is_resent(host: Host) -> None:
    p = spawn_payload(host)
    host.api.add("t1", "spawn", p)
    host.api.down = 0
    runner = host.runner()
    real_report = host.api.report_task

    def unreachable(*args: Any, **kw: Any) -> dict[str, Any]:
        raise errors.ServerUnreachable("cannot reach http://ctl: ConnectError")

    host.api.report_task = unreachable  # type: ignore[method-assign]
    with pytest.raises(errors.ServerUnreachable):
        runner.run_once()
    j = host.journal("t1")
    assert j is not None and j.phase is Phase.FINISHED and j.result is not None and j.result.ok
    host.api.report_task = real_report  # type: ignore[method-assign]
    defines = host.ops().count(("define", name_of(p)))
    host.runner().run_once()                              # a restarted agent
    assert host.ops().count(("define", name_of(p))) == defines == 1
    assert host.api.states["t1"] == "done"
    assert host.api.results["t1"]["domain_xml"] == host.driver.get_xml(name_of(p))
    assert host.journal("t1").phase is Phase.REPORTED  # type: ignore[union-attr]


def test_a_lost_reply_then_a_resend_keeps_the_domain(host: Host) -> None:
    """The server took the result but its reply was lost: the re-send is refused as already
    done, and the running domain stays."""
    p = spawn_payload(host)
    host.api.add("t1", "spawn", p)
    host.api.lose_report_replies = 1
    with pytest.raises(errors.ServerUnreachable):
        host.runner().run_once()
    host.runner().run_once()
    assert host.api.count("report", "t1") == 2
    assert host.api.states["t1"] == "done"
    assert host.driver.is_active(name_of(p))


@pytest.mark.parametrize("crash_on", [Operation.DEFINE, Operation.START])
def test_started_spawn_resumes_idempotently(host: Host, crash_on: Operation) -> None:
    """Killed after define (domain defined, not running) or after start (running, not
    reported): the restarted agent finishes the spawn without a second domain or start."""
    p = spawn_payload(host, unmanaged=True)
    host.api.add("t1", "spawn", p)
    host.driver.crash_on = crash_on
    with pytest.raises(Crash):
        host.runner().run_once()
    j = host.journal("t1")
    assert j is not None and j.phase is Phase.STARTED and j.attempts == 1
    assert host.api.states["t1"] == "running"
    host.runner().run_once()
    name = name_of(p)
    assert host.api.states["t1"] == "done"
    assert host.driver.is_active(name)
    assert host.ops().count(("start", name)) == 1
    assert host.journal("t1").attempts == 2  # type: ignore[union-attr]
    assert host.api.count("start", "t1") == 2   # the resume asked the server first
    assert host.api.count("report", "t1") == 1


def test_started_spawn_resumes_when_nothing_was_done(host: Host) -> None:
    p = spawn_payload(host)
    host.api.add("t1", "spawn", p, state="running")
    JournalDir(host.state_dir / "tasks").save(Journal(
        "t1", HOST, "spawn", p["server"]["id"], p, Phase.STARTED, T0, T0))
    host.runner().run_once()
    assert host.api.states["t1"] == "done"
    assert host.driver.is_active(name_of(p))


def test_started_spawn_the_server_ended_is_rolled_back_not_reported(host: Host) -> None:
    p = spawn_payload(host, unmanaged=True)
    host.api.add("t1", "spawn", p)
    host.driver.crash_on = Operation.START
    with pytest.raises(Crash):
        host.runner().run_once()
    host.api.states["t1"] = "expired"                   # the deadline passed meanwhile
    assert host.runner().run_once() is True
    assert_clean(host, p)
    assert host.api.count("report") == 0
    j = host.journal("t1")
    assert j is not None and j.phase is Phase.REPORTED and j.result is not None
    assert not j.result.ok and "task_not_runnable" not in (j.result.message or "x")


def test_a_task_interrupted_too_often_gives_up(host: Host) -> None:
    p = spawn_payload(host, unmanaged=True)
    host.api.add("t1", "spawn", p)
    for _ in range(MAX_ATTEMPTS):
        host.driver.crash_on = Operation.START
        with pytest.raises(Crash):
            host.runner().run_once()
        host.driver.destroy(name_of(p))     # as if the host rebooted under the agent
    host.runner().run_once()
    assert host.api.states["t1"] == "failed"
    assert f"interrupted {MAX_ATTEMPTS} times" in host.api.results["t1"]["message"]
    assert_clean(host, p)


def test_late_success_of_an_expired_spawn_is_rolled_back(host: Host) -> None:
    p = spawn_payload(host, unmanaged=True)
    host.api.add("t1", "spawn", p)
    real_report = host.api.report_task

    def expired_first(task_id: str, ok: bool, message: str | None = None,
                      domain_xml: str | None = None) -> dict[str, Any]:
        host.api.states[task_id] = "expired"
        return real_report(task_id, ok, message, domain_xml)

    host.api.report_task = expired_first  # type: ignore[method-assign]
    host.runner().run_once()
    assert host.api.reports == [("t1", True, None)]
    assert_clean(host, p)
    assert host.journal("t1").reply == {"accepted": False, "state": "expired"}  # type: ignore[union-attr]


def test_unreadable_journal_counts_as_interrupted(host: Host) -> None:
    p = spawn_payload(host)
    host.api.add("t1", "spawn", p, state="running")
    jdir = host.state_dir / "tasks"
    jdir.mkdir(parents=True)
    (jdir / "t1.json").write_text("{ half a journ")
    host.driver.define(build_domain_xml(from_payload(p, host_cpus=HOST_CPUS,
                                                     state_dir=host.state_dir)))
    host.runner().run_once()
    assert host.api.states["t1"] == "failed"
    assert "interrupted" in host.api.results["t1"]["message"]
    assert_clean(host, p)


def test_other_hosts_journals_are_left_alone(host: Host) -> None:
    p = spawn_payload(host)
    JournalDir(host.state_dir / "tasks").save(Journal(
        "theirs", "gpu-2", "spawn", p["server"]["id"], p, Phase.STARTED, T0, T0))
    host.runner().run_once()
    assert host.api.calls == [("poll", HOST)]
    assert host.journal("theirs").phase is Phase.STARTED  # type: ignore[union-attr]


def test_old_reported_journals_are_pruned(host: Host) -> None:
    jd = JournalDir(host.state_dir / "tasks")
    old = T0 - timedelta(days=30)
    jd.save(journal(Phase.REPORTED, id="old", updated_at=old, result=Result(True)))
    jd.save(journal(Phase.REPORTED, id="new", updated_at=T0, result=Result(True)))
    host.runner(clock=lambda: T0).run_once()
    assert sorted(j.id for j in jd.all()) == ["new"]


def test_journal_files_are_replaced_whole(host: Host) -> None:
    p = spawn_payload(host)
    host.api.add("t1", "spawn", p)
    host.runner().run_once()
    files = sorted(x.name for x in (host.state_dir / "tasks").iterdir())
    assert files == ["t1.json"]          # no temporary file left behind
    raw = json.loads((host.state_dir / "tasks" / "t1.json").read_text())
    assert raw["version"] == 1 and raw["phase"] == "reported" and raw["kind"] == "spawn"
    assert raw["host"] == HOST and raw["payload"] == p and raw["result"]["ok"] is True


# --- destroy -------------------------------------------------------------------------------

def test_destroy_removes_everything(host: Host) -> None:
    p = spawn_payload(host)
    host.api.add("s", "spawn", p)
    host.api.add("d", "destroy", destroy_payload(p))
    host.runner().run_once()
    assert host.api.states == {"s": "done", "d": "done"}
    assert host.api.results["d"] == {"ok": True, "message": None, "domain_xml": None}
    assert_clean(host, p)
    assert host.overlays.calls[-1]["operation"] == "remove_disk"


def test_destroy_of_a_domain_already_gone_succeeds(host: Host) -> None:
    p = spawn_payload(host, unmanaged=True)
    for x in NIC:                             # left detached by an earlier run
        host.driver.nodedev_detach(a(x))
    host.api.add("d", "destroy", destroy_payload(p))
    host.runner().run_once()
    assert host.api.states["d"] == "done"
    assert_clean(host, p)


def test_destroy_failure_keeps_the_devices_and_says_why(host: Host) -> None:
    p = spawn_payload(host, unmanaged=True)
    host.api.add("s", "spawn", p)
    host.runner().run_once()
    host.driver.inject_failure(Operation.DESTROY, "Failed to terminate process: Device busy")
    host.api.add("d", "destroy", destroy_payload(p))
    host.runner().run_once()
    assert host.api.states["d"] == "failed"
    assert "Device busy" in host.api.results["d"]["message"]
    assert host.driver.is_active(name_of(p))
    assert host.driver.detached == {a(x) for x in NIC}   # nothing handed back early


def test_destroy_reattaches_what_the_domain_holds_unmanaged(host: Host) -> None:
    """The destroy payload says managed per function; the domain knows the unit's truth."""
    p = spawn_payload(host)
    p["devices"][1]["managed"] = False          # the unit becomes unmanaged as a whole
    host.api.add("s", "spawn", p)
    host.runner().run_once()
    assert host.driver.detached == {a(x) for x in GPU}
    d = destroy_payload(p)
    for dev in d["devices"]:
        dev["managed"] = True                   # and the destroy payload forgets it
    host.api.add("d", "destroy", d)
    host.runner().run_once()
    assert host.api.states["d"] == "done"
    assert_clean(host, p)


def test_destroy_killed_after_undefine_reattaches_on_resume(host: Host) -> None:
    p = spawn_payload(host, unmanaged=True)
    host.api.add("s", "spawn", p)
    host.runner().run_once()
    d = destroy_payload(p)
    for dev in d["devices"]:
        dev["managed"] = True      # only the journal (from the domain XML) knows the truth
    host.api.add("d", "destroy", d)
    host.driver.crash_on = Operation.UNDEFINE
    with pytest.raises(Crash):
        host.runner().run_once()
    assert not host.driver.exists(name_of(p))
    assert host.driver.detached == {a(x) for x in NIC}
    host.runner().run_once()
    assert host.api.states["d"] == "done"
    assert_clean(host, p)


# --- the loop ------------------------------------------------------------------------------

def wait_for(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def threads() -> Iterator[list[threading.Thread]]:
    started: list[threading.Thread] = []
    yield started
    for t in started:
        t.join(timeout=10)
        assert not t.is_alive()


def test_loop_waits_for_the_driver_and_the_server(host: Host,
                                                  threads: list[threading.Thread]) -> None:
    opened: list[int] = []

    def open_driver() -> FakeVirtDriver:
        opened.append(1)
        if len(opened) < 3:
            raise errors.VirtError("connect qemu:///system: Failed to connect socket",
                                   operation="connect")
        return host.driver

    p = spawn_payload(host)
    host.api.add("t1", "spawn", p)
    host.api.down = 2
    runner = host.runner(open_driver=open_driver, backoff_base=0.01)
    t = threading.Thread(target=runner.run)
    threads.append(t)
    t.start()
    wait_for("the spawn", lambda: host.api.states["t1"] == "done")
    runner.stop.set()
    t.join(timeout=10)
    assert not t.is_alive()
    assert len(opened) == 3
    assert host.driver.is_active(name_of(p))


def test_run_agent_runs_both_loops_and_stops_cleanly(host: Host,
                                                     threads: list[threading.Thread]) -> None:
    inv = Inventory(HostInfo(HOST, 8, 16384, (NumaNode(0, (0, 1, 2, 3), 8192),
                                              NumaNode(1, (4, 5, 6, 7), 8192))), ())
    agent = Agent(client=host.api, host=HOST, discover=lambda: inv,  # type: ignore[arg-type]
                  state_file=host.state_dir / f"agent-{HOST}.json", interval=60, poll=0.05)
    runner = host.runner(host_cpus=lambda: {n.id: n.cpus for n in inv.host.numa_nodes})
    p = spawn_payload(host)
    host.api.add("t1", "spawn", p)
    t = threading.Thread(target=run_agent, args=(agent, runner))
    threads.append(t)
    t.start()
    wait_for("the spawn", lambda: host.api.states["t1"] == "done")
    wait_for("the inventory report", lambda: host.api.puts >= 1)
    agent.stop.set()
    t.join(timeout=10)   # well inside the 60 s report interval: the stop cut it short
    assert not t.is_alive()
    assert runner.stop is agent.stop
    assert host.driver.is_active(name_of(p))


def test_driver_calls_are_what_the_fake_records(host: Host) -> None:
    """The fake records failed calls too; the runner's cleanup tries each step once."""
    p = spawn_payload(host)
    host.driver.inject_failure(Operation.START, "boom")
    host.api.add("t1", "spawn", p)
    host.runner().run_once()
    name = name_of(p)
    assert [c for c in host.driver.calls if c.operation is Operation.START] == [
        Call(Operation.START, name, f"start domain '{name}': boom")]
    assert host.ops() == [("define", name), ("undefine", name)]


# --- the same runner on libvirt (test:///default) ------------------------------------------

def test_runner_spawns_and_destroys_through_libvirt(host: Host) -> None:
    """libvirt's test driver with qemu-img overlays; nodedev calls through a fake layer
    (test:///default cannot detach anything)."""
    source = image(host.root, "qcow2")
    nodedevs = FakeNodeDevices()
    p = spawn_payload(host, unmanaged=True, source=str(source))
    host.api.add("s", "spawn", p)
    name = name_of(p)
    with LibvirtDriver(TEST_URI, nodedevs=nodedevs) as lv:
        runner = host.runner(open_driver=lambda: lv, overlays=QemuImgOverlays())
        runner.run_once()
        assert host.api.states["s"] == "done", host.api.results["s"]
        assert lv.is_active(name)
        assert nodedevs.detached == {a(x) for x in NIC}
        live = read_hostdevs(host.api.results["s"]["domain_xml"])
        assert {str(h.host) for h in live} == {*GPU, *NIC}
        assert disk_of(host, p).exists()
        host.api.add("d", "destroy", destroy_payload(p))
        runner.run_once()
        assert host.api.states["d"] == "done", host.api.results["d"]
        assert not lv.exists(name)
    assert nodedevs.detached == set()
    assert not disk_of(host, p).exists()
    assert [op for op, _ in nodedevs.calls] == [Operation.NODEDEV_DETACH] * 2 + [
        Operation.NODEDEV_REATTACH] * 2
