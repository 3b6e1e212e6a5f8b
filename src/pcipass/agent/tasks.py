"""The control plane's tasks on this host: each run at most once, across agent restarts.

The agent long-polls ``GET /v1/hosts/{host}/tasks``, tells the server it starts a task
(``POST /v1/tasks/{id}/start``; a 409 means it must not), runs it and reports the outcome
(``POST /v1/tasks/{id}/result``). A journal in the state directory, one file per task written
whole or not at all, carries what a restarted agent needs::

    STATE/tasks/<id>.json   {"version": 1, "id", "host", "kind", "server_id", "payload",
                             "phase": "started" | "finished" | "reported", "attempts": n,
                             "detached": [address, ...], "vfs": [saved VF, ...],
                             "bound": [switch binding, ...], "unbound": [...],
                             "result": null | {"ok", "message", "domain_xml"},
                             "reply": null | {...}, "started_at", "updated_at"}

``vfs`` are what each port's VF had before this host programmed it (a spawn saves each one
before programming it, here and in ``STATE/vfs/<server_id>.json`` for the destroy task; a
destroy copies that file in before restoring), ``bound`` the switch bindings a spawn made
(recorded before each call), ``unbound`` those already undone (so a resumed release does not
repeat them). See :mod:`pcipass.agent.ports`.

The rules (pure functions below; :class:`TaskRunner` is the thin shell that performs them):

- a task with no journal is started on the server, journalled ``started`` and run;
- a ``started`` task is run again from the top (every step checks what is already done: a
  spawn whose domain is defined or running finishes without redoing it), after the server
  confirms it may still run; a task the server no longer lets run is rolled back (a spawn's
  domain, devices and disk are cleaned up) and never reported; after :data:`MAX_ATTEMPTS`
  interrupted runs it fails instead of looping;
- a ``finished`` task is never run again: its stored result is re-sent;
- a spawn reported ok that the server answers ``accepted: false`` because the task expired
  (the reply's ``state`` says ``expired``) is rolled back: the server has freed its devices;
  without a ``state`` the domain is left alone (a refused re-send of a result the server
  already took looks the same) and a warning logged;
- any spawn failure cleans up (destroy, undefine, re-attach unmanaged functions, remove the
  overlay, restore the VFs it programmed, unbind the switch) and reports the driver's (or the
  PF's) message; a destroy of a domain already gone succeeds;
- a spawn with a ``direct`` or ``macvtap`` port on an agent without a VF programmer fails
  before touching anything; a destroy restores every VF of the server (from what the spawn
  saved, else :data:`~pcipass.agent.ports.FALLBACK_VF`) once the domain is gone, removes the
  server's VF file, then unbinds the switch. Restoring and unbinding are idempotent, so a
  release interrupted by a restart is simply run again.
- a live migration (:mod:`pcipass.store.live`) is three tasks on two hosts, each reusing the
  steps above: ``live_prepare`` on the destination programs the ports' VFs (saved as a spawn
  saves them, so a later destroy there restores them) and binds its switch, undoing itself
  on failure; ``live_migrate`` on the source hot-unplugs each ``direct`` port's interface,
  migrates the running domain with the destination's XML (:mod:`pcipass.virt.migration`),
  then restores the source's VFs and unbinds its switch (a failure up to the migrate call
  plugs the interfaces back; resumed after the domain left, it only releases the source);
  ``live_finish`` on the destination plugs the ``direct`` ports on its VFs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from pcipass import errors
from pcipass.agent.policy import BACKOFF_BASE_S, backoff_delay
from pcipass.agent.ports import (
    FALLBACK_VF,
    VFS_DIR,
    SavedVf,
    SwitchBinding,
    VfStore,
    binding_from_json,
    binding_to_json,
    saved_from_json,
    saved_to_json,
    switch_bindings,
    vf_config,
    vf_slot,
)
from pcipass.host.sriov import VfProgrammer
from pcipass.net.port import VnicType
from pcipass.net.switch import NoopSwitchDriver, SwitchDriver
from pcipass.pci.address import PciAddress
from pcipass.virt.baremetal import BareMetalDriver
from pcipass.virt.domain import DomainSpec, VirtType
from pcipass.virt.driver import VirtDriver
from pcipass.virt.migration import plan_live_migration
from pcipass.virt.overlay import DiskOverlays
from pcipass.virt.payload import (
    DEFAULT_NORMAL_NETWORK,
    ChangePayload,
    DestroyPayload,
    LivePayload,
    PayloadInterface,
    SpawnPayload,
    change_fragments,
    domain_name,
    domain_spec,
    overlay_path,
    parse_change,
    parse_destroy,
    parse_live,
    parse_spawn,
    plugged_keys,
    unmanaged_addresses,
)
from pcipass.virt.xml import build_domain_xml, read_hostdevs

log = logging.getLogger("pcipass.agent.tasks")

JSON = dict[str, Any]

JOURNAL_VERSION = 1
MAX_ATTEMPTS = 3          # runs of one task this host begins before it gives up
DEFAULT_WAIT_S = 25.0     # long-poll wait
RETENTION = timedelta(days=7)  # how long reported journals are kept
IDLE_S = 1.0              # pause when a poll brought nothing new (a server that keeps listing)
BACKOFF_CAP_S = 30.0


# --- values -------------------------------------------------------------------------------

class Kind(StrEnum):
    SPAWN = "spawn"
    DESTROY = "destroy"
    ATTACH = "attach"    # hot-plug devices or a port into a running server
    DETACH = "detach"    # hot-unplug them
    LIVE_PREPARE = "live_prepare"  # destination: program the ports' VFs, bind the switch
    LIVE_MIGRATE = "live_migrate"  # source: unplug VF NICs, migrate, release the source VFs
    LIVE_FINISH = "live_finish"    # destination: plug the VF NICs on the destination's VFs
    MIGRATE_OUT = "migrate_out"    # a move's source: stop the domain, let its ports go, keep it
    RESTART = "restart"            # a move's source again: take the ports back, start it


class Phase(StrEnum):
    STARTED = "started"      # begun here; no outcome yet
    FINISHED = "finished"    # outcome stored, not yet delivered to the server
    REPORTED = "reported"    # the server answered the report (or the task was dropped)


@dataclass(frozen=True, slots=True)
class Task:
    """A task as the server lists it."""

    id: str
    kind: str
    server_id: str
    payload: JSON
    state: str = "queued"


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool
    message: str | None = None
    domain_xml: str | None = None


@dataclass(frozen=True, slots=True)
class Journal:
    id: str
    host: str
    kind: str
    server_id: str
    payload: JSON
    phase: Phase
    started_at: datetime
    updated_at: datetime
    attempts: int = 1
    detached: tuple[str, ...] = ()
    result: Result | None = None
    reply: JSON | None = None
    vfs: tuple[SavedVf, ...] = ()
    bound: tuple[SwitchBinding, ...] = ()
    unbound: tuple[SwitchBinding, ...] = ()


def parse_task(obj: Any) -> Task:
    """A listed task; :class:`~pcipass.errors.InvalidInput` when the server sent garbage."""
    if not isinstance(obj, Mapping):
        raise errors.InvalidInput("a listed task is not an object", field="tasks")
    try:
        tid, kind, server = obj["id"], obj["kind"], obj["server_id"]
    except KeyError as exc:
        raise errors.InvalidInput(f"a listed task has no {exc.args[0]}",
                                  field=f"tasks.{exc.args[0]}") from None
    payload = obj.get("payload") or {}
    if not all(isinstance(v, str) and v for v in (tid, kind, server)) \
            or not isinstance(payload, Mapping):
        raise errors.InvalidInput(f"listed task {tid!r} is malformed", field="tasks")
    if "/" in tid or tid.startswith(".") or "\0" in tid:
        raise errors.InvalidInput(f"listed task id {tid!r} cannot name a journal file",
                                  field="tasks.id")
    return Task(tid, kind, server, dict(payload), str(obj.get("state") or "queued"))


# --- decisions ----------------------------------------------------------------------------

class Do(StrEnum):
    RUN = "run"          # new here: start on the server, journal, run
    RESUME = "resume"    # begun before a restart: confirm with the server, run again
    GIVE_UP = "give_up"  # begun too often: clean up and report a failure
    RESEND = "resend"    # finished: send the stored result again, never rerun


def on_task(journal: Journal | None, *, max_attempts: int = MAX_ATTEMPTS) -> Do:
    if journal is None:
        return Do.RUN
    if journal.result is not None:
        return Do.RESEND
    if journal.attempts >= max_attempts:
        return Do.GIVE_UP
    return Do.RESUME


def pending(journals: Iterable[Journal], host: str) -> list[Journal]:
    """This host's journals the server has not yet answered for, oldest first."""
    return sorted((j for j in journals if j.host == host and j.phase is not Phase.REPORTED),
                  key=lambda j: (j.started_at, j.id))


def prunable(journals: Iterable[Journal], now: datetime,
             retention: timedelta = RETENTION) -> list[str]:
    """Reported journals old enough to forget (the server lists none of them any more)."""
    return [j.id for j in journals
            if j.phase is Phase.REPORTED and now - j.updated_at > retention]


class Step(StrEnum):
    CREATE_DISK = "create_disk"
    DETACH = "detach"
    PROGRAM_VFS = "program_vfs"
    BIND_SWITCH = "bind_switch"
    DEFINE = "define"
    START = "start"
    DESTROY = "destroy"
    UNDEFINE = "undefine"
    REATTACH = "reattach"
    REMOVE_DISK = "remove_disk"


@dataclass(frozen=True, slots=True)
class Seen:
    """What the hypervisor holds of the domain now."""

    exists: bool
    active: bool


def spawn_plan(seen: Seen) -> tuple[Step, ...]:
    """What is left of a spawn. A running domain is done (its disk and detached functions
    came before it); anything less is redone from the disk on, each step being idempotent:
    the disk is kept when present, detaching a detached function, programming a VF as it
    already is, binding a port again and redefining the same domain change nothing."""
    if seen.active:
        return ()
    return (Step.CREATE_DISK, Step.DETACH, Step.PROGRAM_VFS, Step.BIND_SWITCH, Step.DEFINE,
            Step.START)


def teardown_plan(seen: Seen) -> tuple[Step, ...]:
    """Undo a domain: power off, forget, give the functions back, drop the disk."""
    steps = [Step.DESTROY] if seen.active else []
    if seen.exists:
        steps.append(Step.UNDEFINE)
    return (*steps, Step.REATTACH, Step.REMOVE_DISK)


class AfterReport(StrEnum):
    DONE = "done"            # the server took the result, or there is nothing to undo
    ROLL_BACK = "roll_back"  # a spawn the server gave up on meanwhile: undo it here
    RETRY = "retry"          # the reply makes no sense; keep the result for the next try


def after_report(kind: str, result: Result, reply: Any) -> AfterReport:
    """What a report's reply asks of the agent.

    ``accepted: false`` on a successful spawn means the control plane had already failed the
    task (its deadline passed) and freed the devices, so the running domain must go. The
    reply's ``state`` guards the other reason a result is refused, a re-send after the first
    one was taken but its reply lost: then the task is ``done`` and the domain must stay.
    """
    if not isinstance(reply, Mapping) or not isinstance(reply.get("accepted"), bool):
        return AfterReport.RETRY
    if reply["accepted"] or kind != Kind.SPAWN or not result.ok:
        return AfterReport.DONE
    return AfterReport.ROLL_BACK if reply.get("state") in ("expired", "failed") \
        else AfterReport.DONE


# --- the journal --------------------------------------------------------------------------

def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def journal_to_json(j: Journal) -> JSON:
    return {
        "version": JOURNAL_VERSION, "id": j.id, "host": j.host, "kind": j.kind,
        "server_id": j.server_id, "payload": j.payload, "phase": j.phase.value,
        "attempts": j.attempts, "detached": list(j.detached),
        "vfs": [saved_to_json(v) for v in j.vfs],
        "bound": [binding_to_json(b) for b in j.bound],
        "unbound": [binding_to_json(b) for b in j.unbound],
        "result": None if j.result is None else {
            "ok": j.result.ok, "message": j.result.message, "domain_xml": j.result.domain_xml},
        "reply": j.reply, "started_at": _iso(j.started_at), "updated_at": _iso(j.updated_at),
    }


def journal_from_json(obj: Any) -> Journal:
    """A journal file's content; ValueError/KeyError/TypeError when it is not one."""
    if not isinstance(obj, Mapping) or obj.get("version") != JOURNAL_VERSION:
        raise ValueError("not a version-1 task journal")
    res = obj.get("result")
    return Journal(
        id=str(obj["id"]), host=str(obj["host"]), kind=str(obj["kind"]),
        server_id=str(obj["server_id"]), payload=dict(obj.get("payload") or {}),
        phase=Phase(obj["phase"]), attempts=int(obj.get("attempts") or 1),
        detached=tuple(str(a) for a in obj.get("detached") or ()),
        vfs=tuple(saved_from_json(v) for v in obj.get("vfs") or ()),
        bound=tuple(binding_from_json(b) for b in obj.get("bound") or ()),
        unbound=tuple(binding_from_json(b) for b in obj.get("unbound") or ()),
        result=None if res is None else Result(bool(res["ok"]), res.get("message"),
                                                res.get("domain_xml")),
        reply=obj.get("reply"),
        started_at=datetime.fromisoformat(obj["started_at"]),
        updated_at=datetime.fromisoformat(obj["updated_at"]),
    )


class JournalDir:
    """``STATE/tasks``: one JSON file per task, replaced atomically and synced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _file(self, task_id: str) -> Path:
        if not task_id or "/" in task_id or task_id.startswith("."):
            raise errors.InvalidInput(f"task id {task_id!r} cannot name a file", field="id")
        return self.path / f"{task_id}.json"

    def load(self, task_id: str) -> Journal | None:
        path = self._file(task_id)
        try:
            return journal_from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A task this host cannot account for must not run twice: treat it as begun.
            log.error("task journal %s is unreadable (%s); the task counts as interrupted",
                      path, exc)
            return None if not path.exists() else _unreadable(task_id)

    def save(self, j: Journal) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        path = self._file(j.id)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{j.id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(journal_to_json(j), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def all(self) -> list[Journal]:
        if not self.path.is_dir():
            return []
        out = []
        for p in sorted(self.path.glob("*.json")):
            j = self.load(p.stem)
            if j is not None and j.kind != "?":
                out.append(j)
        return out

    def remove(self, task_id: str) -> None:
        self._file(task_id).unlink(missing_ok=True)


def _unreadable(task_id: str) -> Journal:
    """Stands in for a journal that exists but cannot be read: begun, payload unknown."""
    now = datetime.now(UTC)
    return Journal(task_id, "", "?", "", {}, Phase.STARTED, now, now, attempts=MAX_ATTEMPTS)


# --- the shell ----------------------------------------------------------------------------

class TaskApi(Protocol):
    """The calls the runner makes (:class:`pcipass.cli.client.ApiClient` has them)."""

    def poll_tasks(self, host: str, wait: float = 0.0) -> list[JSON]: ...

    def start_task(self, task_id: str) -> JSON: ...

    def report_task(self, task_id: str, ok: bool, message: str | None = None,
                    domain_xml: str | None = None) -> JSON: ...

    def put_move_disk(self, move_id: str, disk: Path) -> None: ...

    def get_move_disk(self, move_id: str, target: Path) -> None: ...


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, errors.PcipassError) else f"{type(exc).__name__}: {exc}"


@dataclass
class TaskRunner:
    """Polls, runs and reports this host's tasks until ``stop`` is set.

    ``open_driver`` is called when a driver is first needed and again after it failed to
    open, so a host whose libvirtd is down keeps reporting inventory and picks tasks up once
    libvirt answers. ``host_cpus`` gives each NUMA node's CPUs (from discovery).

    ``programmer`` sets the VFs of ``direct`` and ``macvtap`` ports (None: this agent has
    none, and a spawn with such a port fails saying so); ``switch`` is told about every
    SR-IOV port; ``normal_network`` is the libvirt network ``normal`` ports are plugged into.
    """

    client: TaskApi
    host: str
    state_dir: Path
    open_driver: Callable[[], VirtDriver]
    overlays: DiskOverlays
    host_cpus: Callable[[], Mapping[int, Sequence[int]]]
    wait: float = DEFAULT_WAIT_S
    virt_type: VirtType = VirtType.KVM
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    rand: Callable[[], float] = random.random
    max_attempts: int = MAX_ATTEMPTS
    backoff_base: float = BACKOFF_BASE_S
    busy: bool = False          # inside a task (the loop's shutdown waits for it)
    programmer: VfProgrammer | None = None
    switch: SwitchDriver = field(default_factory=NoopSwitchDriver)
    normal_network: str = DEFAULT_NORMAL_NETWORK

    def __post_init__(self) -> None:
        self.journals = JournalDir(self.state_dir / "tasks")
        self.vf_store = VfStore(self.state_dir / VFS_DIR)
        self.driver: VirtDriver | None = None
        self._unsettled: set[str] | None = None   # journals not REPORTED; None: scan the dir
        self._pruned_at: datetime | None = None

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        """Poll and run until stopped; failures back off, never end the loop."""
        failures = 0
        log.info("task loop for %s started (long-poll %.0fs)", self.host, self.wait)
        while not self.stop.is_set():
            try:
                progressed = self.run_once()
                failures = 0
                if not progressed:
                    self.stop.wait(IDLE_S)
            except Exception as exc:  # the loop must outlive any failure
                if self.stop.is_set():
                    break
                failures += 1
                delay = backoff_delay(failures, self.rand(), base=self.backoff_base,
                                      cap=BACKOFF_CAP_S)
                if isinstance(exc, errors.PcipassError):
                    log.warning("task loop: %s; retry in %.1fs", exc.message, delay)
                else:
                    log.exception("task loop failed; retry in %.1fs", delay)
                self.stop.wait(delay)
        self.close()
        log.info("task loop for %s stopped", self.host)

    def close(self) -> None:
        if self.driver is not None:
            self.driver.close()
            self.driver = None

    def ensure_driver(self) -> VirtDriver:
        if self.driver is None:
            self.driver = self.open_driver()
        return self.driver

    def run_once(self) -> bool:
        """Finish what earlier runs left, then one poll and its tasks. True when something
        changed (a task ran, resumed or got its result delivered)."""
        self.ensure_driver()
        progressed = self.recover()
        if self.stop.is_set():
            return progressed
        listed = self.client.poll_tasks(self.host, self.wait)
        for obj in listed:
            if self.stop.is_set():
                break
            try:
                task = parse_task(obj)
            except errors.InvalidInput as exc:
                log.error("ignoring a task the server listed: %s", exc.message)
                continue
            progressed = self.handle(task) or progressed
        self.prune()
        return progressed

    def recover(self) -> bool:
        """Journals the server has not answered for: re-send results, resume runs. The whole
        directory is read once (after a restart); then only what this process left open."""
        if self._unsettled is None:
            todo = pending(self.journals.all(), self.host)
            self._unsettled = {j.id for j in todo}
        else:
            loaded = (self.journals.load(t) for t in sorted(self._unsettled))
            todo = pending((j for j in loaded if j is not None), self.host)
        progressed = False
        for j in todo:
            if self.stop.is_set():
                break
            task = Task(j.id, j.kind, j.server_id, j.payload, "running")
            progressed = self.handle(task) or progressed
        return progressed

    def prune(self, every: timedelta = timedelta(hours=1)) -> None:
        now = self.clock()
        if self._pruned_at is not None and now - self._pruned_at < every:
            return
        self._pruned_at = now
        for tid in prunable(self.journals.all(), now):
            self.journals.remove(tid)

    # -- one task -------------------------------------------------------------------------

    def handle(self, task: Task) -> bool:
        """Do what :func:`on_task` decides for ``task``; True when something changed."""
        journal = self.journals.load(task.id)
        if journal is not None and journal.kind == "?":
            journal = replace(journal, host=self.host, kind=task.kind,
                              server_id=task.server_id, payload=task.payload)
        decision = on_task(journal, max_attempts=self.max_attempts)
        if decision is Do.RESEND:
            assert journal is not None
            if journal.phase is Phase.REPORTED and journal.reply is not None \
                    and journal.reply.get("accepted"):
                return False  # delivered and taken; the server will stop listing it
            return self.report(journal)
        self.busy = True
        try:
            if decision is Do.RUN:
                return self._run_new(task)
            assert journal is not None
            if not self._may_run(journal):
                return True
            if decision is Do.GIVE_UP:
                log.error("task %s (%s of server %s) was interrupted %d times; giving up",
                          task.id, task.kind, task.server_id, journal.attempts)
                result = self._give_up(journal)
            else:
                log.info("resuming task %s (%s of server %s), attempt %d", task.id, task.kind,
                         task.server_id, journal.attempts + 1)
                journal, result = self._execute(
                    self._save(replace(journal, attempts=journal.attempts + 1)))
            return self.report(self._finish(journal, result))
        finally:
            self.busy = False

    def _run_new(self, task: Task) -> bool:
        try:
            self.client.start_task(task.id)
        except errors.Conflict as exc:
            log.info("task %s is not runnable any more: %s", task.id, exc.message)
            return False
        now = self.clock()
        journal = self._save(Journal(task.id, self.host, task.kind, task.server_id,
                                     task.payload, Phase.STARTED, now, now))
        log.info("running task %s: %s of server %s", task.id, task.kind, task.server_id)
        return self.report(self._finish(*self._execute(journal)))

    def _may_run(self, journal: Journal) -> bool:
        """Ask the server whether a begun task still runs; roll it back here when not."""
        try:
            self.client.start_task(journal.id)
        except errors.Conflict as exc:
            log.warning("task %s was begun here but the server ended it (%s); undoing it",
                        journal.id, exc.message)
            if journal.kind == Kind.SPAWN:
                self._roll_back(journal)
            elif journal.kind == Kind.ATTACH:
                self._undo_attach(journal)
            elif journal.kind == Kind.LIVE_PREPARE:
                self._undo_prepare(journal)
            self._save(replace(journal, phase=Phase.REPORTED, result=Result(
                False, f"not runnable any more: {exc.message}"), updated_at=self.clock()))
            return False
        return True

    def _execute(self, journal: Journal) -> tuple[Journal, Result]:
        """Run the task; the journal as it now stands (a run records the functions it
        detaches before detaching them) and the outcome."""
        try:
            if isinstance(self.ensure_driver(), BareMetalDriver):
                return self._machine(journal)
            if journal.kind == Kind.SPAWN:
                return self._spawn(journal)
            if journal.kind == Kind.DESTROY:
                return self._destroy(journal)
            if journal.kind == Kind.ATTACH:
                return self._attach(journal)
            if journal.kind == Kind.DETACH:
                return self._detach(journal)
            if journal.kind == Kind.MIGRATE_OUT:
                return self._migrate_out(journal)
            if journal.kind == Kind.RESTART:
                return self._restart(journal)
            if journal.kind == Kind.LIVE_PREPARE:
                return self._live_prepare(journal)
            if journal.kind == Kind.LIVE_MIGRATE:
                return self._live_migrate(journal)
            if journal.kind == Kind.LIVE_FINISH:
                return self._live_finish(journal)
            return journal, Result(False, f"this agent cannot run {journal.kind!r} tasks")
        except Exception as exc:  # a bug must still end the task, not loop it
            if not isinstance(exc, errors.PcipassError):
                log.exception("task %s failed unexpectedly", journal.id)
            return self.journals.load(journal.id) or journal, Result(False, _message(exc))

    def _give_up(self, journal: Journal) -> Result:
        if journal.kind == Kind.SPAWN:
            self._roll_back(journal)
        elif journal.kind == Kind.ATTACH:
            self._undo_attach(journal)
        elif journal.kind == Kind.LIVE_PREPARE:
            self._undo_prepare(journal)
        elif journal.kind == Kind.LIVE_MIGRATE:
            name = domain_name(journal.server_id)
            if self.ensure_driver().exists(name):     # still here: give its NICs back
                try:
                    self._replug(name, parse_live(journal.payload, migrate=True).replug())
                except errors.PcipassError as exc:
                    log.error("giving up task %s: %s", journal.id, exc.message)
            else:                                     # it left: finish the source's part
                return self._execute(journal)[1]
        return Result(False, f"the agent on {self.host} was interrupted {journal.attempts} "
                             f"times while running this {journal.kind}; gave up")

    def _finish(self, journal: Journal, result: Result) -> Journal:
        return self._save(replace(journal, phase=Phase.FINISHED, result=result,
                                  updated_at=self.clock()))

    def _save(self, journal: Journal) -> Journal:
        self.journals.save(journal)
        if self._unsettled is not None:
            if journal.phase is Phase.REPORTED:
                self._unsettled.discard(journal.id)
            else:
                self._unsettled.add(journal.id)
        return journal

    def report(self, journal: Journal) -> bool:
        """Deliver the stored result and act on the reply. Transport failures propagate (the
        loop backs off; the journal keeps the result for the next try)."""
        result = journal.result
        assert result is not None
        reply = self.client.report_task(journal.id, result.ok, result.message,
                                        result.domain_xml)
        then = after_report(journal.kind, result, reply)
        if then is AfterReport.RETRY:
            raise errors.InfrastructureError(f"the server's reply to task {journal.id}'s result "
                                             f"makes no sense: {reply!r}")
        if then is AfterReport.ROLL_BACK:
            log.warning("server refused the result of task %s (%s); undoing the spawn",
                        journal.id, reply.get("state"))
            self._roll_back(journal)
        elif not reply["accepted"] and journal.kind == Kind.SPAWN and result.ok \
                and "state" not in reply:
            log.warning("server refused the result of task %s without saying why; the "
                        "domain of server %s is left running", journal.id, journal.server_id)
        level = logging.INFO if result.ok else logging.WARNING
        log.log(level, "task %s (%s of server %s): %s%s", journal.id, journal.kind,
                journal.server_id, "ok" if result.ok else f"failed: {result.message}",
                "" if reply.get("accepted") else " (not accepted)")
        self._save(replace(journal, phase=Phase.REPORTED, reply=dict(reply),
                           updated_at=self.clock()))
        return True

    # -- spawn and destroy ----------------------------------------------------------------

    def _spec(self, journal: Journal) -> tuple[SpawnPayload, DomainSpec]:
        p = parse_spawn(journal.payload)
        spec = domain_spec(p, host_cpus=self.host_cpus(), state_dir=self.state_dir,
                           virt_type=self.virt_type, normal_network=self.normal_network)
        return p, spec

    def _seen(self, name: str) -> Seen:
        driver = self.ensure_driver()
        exists = driver.exists(name)
        return Seen(exists, exists and driver.is_active(name))

    def _spawn(self, journal: Journal) -> tuple[Journal, Result]:
        p, spec = self._spec(journal)   # invalid payload: fails before touching anything
        vf_ports = [nic for nic in p.interfaces if nic.is_vf]
        if vf_ports and self.programmer is None:
            return journal, Result(False, (
                f"the agent on {self.host} has no VF programmer configured (start it with "
                f"--sriov netlink, or --sriov fake for a simulated host); "
                f"{vf_ports[0].describe()} needs its VF programmed"))
        driver = self.ensure_driver()
        detach = tuple(str(a) for a in spec.unmanaged_addresses)
        if set(detach) - set(journal.detached):
            journal = self._save(replace(journal, detached=tuple(
                sorted({*journal.detached, *detach})), updated_at=self.clock()))
        try:
            for step in spawn_plan(self._seen(spec.name)):
                if step is Step.CREATE_DISK and spec.disk is not None:
                    overlay = Path(spec.disk.overlay)
                    if p.disk_from_move is not None and not overlay.exists():
                        # What the source handed over; none (404) fails the spawn, and the
                        # server goes back to its source with its disk, never a blank one.
                        self.client.get_move_disk(str(p.disk_from_move), overlay)
                    self.overlays.create(spec.disk, size_gb=p.disk_gb)
                elif step is Step.DETACH:
                    for a in spec.unmanaged_addresses:
                        driver.nodedev_detach(a)
                elif step is Step.PROGRAM_VFS:
                    journal = self._program_vfs(journal, p.interfaces)
                elif step is Step.BIND_SWITCH:
                    journal = self._bind_switch(journal, p.interfaces)
                elif step is Step.DEFINE:
                    driver.define(build_domain_xml(spec))
                elif step is Step.START:
                    driver.start(spec.name)
            return journal, Result(True, None, driver.get_xml(spec.name))
        except Exception as exc:  # whatever broke, the host must not keep half a guest
            log.warning("spawn of server %s failed: %s; cleaning up", journal.server_id,
                        _message(exc))
            journal = self.journals.load(journal.id) or journal
            problems = self._teardown(spec.name, _addresses(journal.detached),
                                      spec.disk.overlay if spec.disk and not _keeps_disk(journal)
                                      else None, strict=False)
            journal, released = self._release_ports(journal, journal.vfs, journal.bound,
                                                    strict=False)
            problems += released
            extra = f" (cleanup: {'; '.join(problems)})" if problems else ""
            return journal, Result(False, _message(exc) + extra)

    def _program_vfs(self, journal: Journal, interfaces: Sequence[PayloadInterface]
                     ) -> Journal:
        """Program each ``direct``/``macvtap`` port's VF. What a VF has is read and saved (in
        the journal and the server's VF file) before it is first programmed, so an agent
        killed in between still knows what to put back; a resumed spawn keeps the first
        saved config and programs again (a no-op for a VF already programmed)."""
        nics = [nic for nic in interfaces if nic.is_vf]
        if not nics:
            return journal
        programmer = self.programmer
        assert programmer is not None   # checked before anything was touched
        saved = {v.slot: v for v in journal.vfs}
        for nic in nics:
            slot = vf_slot(nic)
            if slot not in saved:
                saved[slot] = SavedVf(nic.port, slot, programmer.read(slot))
                journal = self._save(replace(journal, vfs=tuple(saved.values()),
                                             updated_at=self.clock()))
                self.vf_store.add(_server_key(journal.server_id), journal.vfs)
            programmer.program(slot, vf_config(nic))
        return journal

    def _bind_switch(self, journal: Journal, interfaces: Sequence[PayloadInterface]
                     ) -> Journal:
        """Tell the switch about each SR-IOV port, journalled first so a rollback unbinds
        even a call the agent died in."""
        for b in switch_bindings(interfaces):
            if b not in journal.bound:
                journal = self._save(replace(journal, bound=(*journal.bound, b),
                                             updated_at=self.clock()))
            self.switch.bind(self.host, b.pf, b.vlan, b.mac)
        return journal

    def _release_ports(self, journal: Journal, vfs: Sequence[SavedVf],
                       bindings: Sequence[SwitchBinding], *,
                       strict: bool) -> tuple[Journal, list[str]]:
        """Restore ``vfs``, forget the server's VF file, then unbind ``bindings`` not yet
        unbound. A VF that cannot be restored keeps the file (and, ``strict``, stops before
        the switch is touched); an unbind that fails is left for the next try."""
        problems: list[str] = []
        for v in vfs:
            if self.programmer is None:
                problems.append(f"the agent on {self.host} has no VF programmer configured; "
                                f"{v.slot} keeps port {v.port}'s settings")
                continue
            try:
                self.programmer.restore(v.slot, v.previous)
            except errors.PcipassError as exc:
                problems.append(exc.message)
        if problems and strict:
            return journal, problems
        if not problems:
            try:
                self.vf_store.forget(_server_key(journal.server_id), [v.slot for v in vfs])
            except (OSError, errors.PcipassError) as exc:
                log.warning("cannot remove the VF file of server %s: %s", journal.server_id,
                            exc)
        for b in bindings:
            if b in journal.unbound:
                continue
            try:
                self.switch.unbind(self.host, b.pf, b.vlan, b.mac)
            except errors.PcipassError as exc:
                problems.append(f"switch unbind of port {b.port} on PF {b.pf}: {exc.message}")
                if strict:
                    return journal, problems
                continue
            journal = self._save(replace(journal, unbound=(*journal.unbound, b),
                                         updated_at=self.clock()))
        return journal, problems

    def _machine(self, journal: Journal) -> tuple[Journal, Result]:
        """A bare-metal host's task: a spawn powers the machine on with the server's devices
        (no domain XML, disk overlay, VF or switch: the machine is the server's whole), a
        destroy powers it off. Both are idempotent; a spawn that fails powers it off again.
        Nothing else runs on bare metal."""
        driver = self.ensure_driver()
        assert isinstance(driver, BareMetalDriver)
        if journal.kind == Kind.SPAWN:
            p = parse_spawn(journal.payload)   # invalid payload: fails before touching it
            name = domain_name(p.server.id)
            try:
                driver.power_on(name, tuple(d.address for d in p.devices))
            except errors.PcipassError as exc:
                problems = self._power_off(name)
                extra = f" (cleanup: {'; '.join(problems)})" if problems else ""
                return journal, Result(False, exc.message + extra)
            return journal, Result(True)
        if journal.kind == Kind.DESTROY:
            problems = self._power_off(domain_name(parse_destroy(journal.payload).server.id))
            return journal, Result(not problems, "; ".join(problems) or None)
        return journal, Result(False, f"{self.host} is a bare-metal host: a {journal.kind} "
                                      "task needs a hypervisor")

    def _power_off(self, name: str) -> list[str]:
        try:
            self.ensure_driver().destroy(name)
        except errors.PcipassError as exc:
            return [exc.message]
        return []

    def _roll_back(self, journal: Journal) -> None:
        """Undo a spawn whatever it got to (best effort, logged)."""
        name = domain_name(journal.server_id)
        if isinstance(self.ensure_driver(), BareMetalDriver):
            for p in self._power_off(name):
                log.error("rolling back task %s: %s", journal.id, p)
            return
        problems = self._teardown(name, _addresses(journal.detached),
                                  None if _keeps_disk(journal) else
                                  overlay_path(self.state_dir, journal.server_id), strict=False)
        _, released = self._release_ports(journal, journal.vfs, journal.bound, strict=False)
        for p in problems + released:
            log.error("rolling back task %s: %s", journal.id, p)

    def _saved_vfs(self, journal: Journal, p: DestroyPayload) -> Journal:
        """What to put back, kept in this journal from here on: the server's VF file goes
        before the switch is unbound, and a resumed release must still know. A move's step
        gives back only the ports it lists (the file may hold the other side's too)."""
        if journal.vfs:
            return journal
        saved = {v.slot: v for v in self.vf_store.load(_server_key(journal.server_id))}
        listed = {vf_slot(nic): nic for nic in p.interfaces
                  if nic.is_vf and nic.pf is not None and nic.vf_index is not None}
        if p.move is not None:
            saved = {slot: v for slot, v in saved.items() if slot in listed}
        for slot, nic in listed.items():
            saved.setdefault(slot, SavedVf(nic.port, slot, FALLBACK_VF))
        if saved:
            journal = self._save(replace(journal, vfs=tuple(saved.values()),
                                         updated_at=self.clock()))
        return journal

    def _destroy(self, journal: Journal) -> tuple[Journal, Result]:
        p = parse_destroy(journal.payload)
        driver = self.ensure_driver()
        name = domain_name(p.server.id)
        journal = self._saved_vfs(journal, p)
        reattach = {str(d.address) for d in p.devices if not d.managed} | set(journal.detached)
        if driver.exists(name) and not p.keep_domain:
            # The domain knows which functions it holds unmanaged, whatever the payload says.
            reattach |= {str(h.host) for h in read_hostdevs(driver.get_xml(name),
                                                           interfaces=True) if not h.managed}
        if reattach - set(journal.detached):
            journal = self._save(replace(journal, detached=tuple(sorted(reattach)),
                                         updated_at=self.clock()))
        problems = self._teardown(name, _addresses(journal.detached),
                                  None if p.keep_disk else overlay_path(self.state_dir,
                                                                        p.server.id),
                                  strict=True, keep_domain=p.keep_domain)
        if problems:
            return journal, Result(False, "; ".join(problems))
        journal, problems = self._release_ports(journal, journal.vfs,
                                                switch_bindings(p.interfaces), strict=True)
        if problems:
            return journal, Result(False, "; ".join(problems))
        return journal, Result(True)

    # -- a move's source (resize, cold migration; see pcipass.store.moves) ------------------

    def _migrate_out(self, journal: Journal) -> tuple[Journal, Result]:
        """Stop the domain and let its ports go (VFs restored, switch unbound), keeping its
        definition, its disk and its unmanaged functions detached for a revert; for another
        host, hand the stopped disk over last (a failure then leaves what a revert expects).
        Each step is idempotent."""
        p = parse_destroy(journal.payload)
        driver = self.ensure_driver()
        name = domain_name(p.server.id)
        journal = self._saved_vfs(journal, p)
        if self._seen(name).active:
            driver.destroy(name)
        journal, problems = self._release_ports(journal, journal.vfs,
                                                switch_bindings(p.interfaces), strict=True)
        if problems:
            return journal, Result(False, "; ".join(problems))
        disk = overlay_path(self.state_dir, p.server.id)
        if p.hand_off_disk and p.move is not None:
            if not disk.exists():     # never move a server onto a blank disk
                return journal, Result(False, f"host {self.host} has no disk for server "
                                              f"{p.server.id} at {disk} to hand over")
            try:
                self.client.put_move_disk(str(p.move), disk)
            except errors.PcipassError as exc:
                return journal, Result(False, f"host {self.host} could not hand the disk of "
                                              f"server {p.server.id} over: {exc.message}")
        return journal, Result(True, None, driver.get_xml(name) if driver.exists(name)
                               else None)

    def _restart(self, journal: Journal) -> tuple[Journal, Result]:
        """Start the kept domain again (defined from the payload's XML if this host lost it):
        its unmanaged functions detached, its ports' VFs programmed, the switch bound. Each
        step is idempotent."""
        p = parse_destroy(journal.payload)
        refused = self._no_programmer(p.interfaces)
        if refused is not None:
            return journal, refused
        driver = self.ensure_driver()
        name = domain_name(p.server.id)
        if not driver.exists(name):
            if p.domain_xml is None:
                return journal, Result(False, f"host {self.host} kept no domain for server "
                                              f"{p.server.id} and the task carries none")
            driver.define(p.domain_xml)
        detach = {str(d.address) for d in p.devices if not d.managed}
        if detach - set(journal.detached):
            journal = self._save(replace(journal, detached=tuple(
                sorted({*journal.detached, *detach})), updated_at=self.clock()))
        for a in _addresses(detach):
            driver.nodedev_detach(a)
        journal = self._program_vfs(journal, p.interfaces)
        journal = self._bind_switch(journal, p.interfaces)
        if not driver.is_active(name):
            driver.start(name)
        return journal, Result(True, None, driver.get_xml(name))

    # -- hot attach and detach -------------------------------------------------------------

    def _change(self, journal: Journal) -> tuple[ChangePayload, str]:
        return parse_change(journal.payload), domain_name(journal.server_id)

    def _affect(self, name: str) -> tuple[bool, bool]:
        """(live, config) for a device change: the running guest if it runs, its definition
        if it has one."""
        seen = self._seen(name)
        if not seen.exists:
            raise errors.VirtError(f"server {name} has no domain on {self.host}",
                                   operation="attach_device")
        return seen.active, True

    def _attach(self, journal: Journal) -> tuple[Journal, Result]:
        """Plug the payload's functions and ports into the running domain. Every step is
        idempotent (a resumed attach skips what the domain holds already): detach the
        unmanaged functions (journalled first), save and program the ports' VFs, bind the
        switch, attach each fragment. Any failure undoes what this task did and reports."""
        p, name = self._change(journal)   # invalid payload: fails before touching anything
        vf_ports = [nic for nic in p.interfaces if nic.is_vf]
        if vf_ports and self.programmer is None:
            return journal, Result(False, (
                f"the agent on {self.host} has no VF programmer configured (start it with "
                f"--sriov netlink, or --sriov fake for a simulated host); "
                f"{vf_ports[0].describe()} needs its VF programmed"))
        fragments = change_fragments(p, normal_network=self.normal_network)
        driver = self.ensure_driver()
        detach = {str(a) for a in _change_unmanaged(p)}
        if detach - set(journal.detached):
            journal = self._save(replace(journal, detached=tuple(
                sorted({*journal.detached, *detach})), updated_at=self.clock()))
        try:
            live, config = self._affect(name)
            for a in _addresses(detach):
                driver.nodedev_detach(a)
            journal = self._program_vfs(journal, p.interfaces)
            journal = self._bind_switch(journal, p.interfaces)
            plugged = plugged_keys(driver.get_xml(name))
            for f in fragments:
                if f.key not in plugged:
                    driver.attach_device(name, f.xml, live=live, config=config)
            return journal, Result(True, None, driver.get_xml(name))
        except Exception as exc:  # the guest must not keep half an attach
            log.warning("attach to server %s failed: %s; undoing it", journal.server_id,
                        _message(exc))
            journal = self.journals.load(journal.id) or journal
            problems = self._undo_attach(journal)
            extra = f" (cleanup: {'; '.join(problems)})" if problems else ""
            return journal, Result(False, _message(exc) + extra)

    def _undo_attach(self, journal: Journal) -> list[str]:
        """Unplug what the attach plugged, give back its unmanaged functions, restore its
        VFs, unbind the switch (best effort); the problems met."""
        problems: list[str] = []
        try:
            p, name = self._change(journal)
            fragments = change_fragments(p, normal_network=self.normal_network)
        except errors.PcipassError as exc:
            return [exc.message]
        driver = self.ensure_driver()
        try:
            if driver.exists(name):
                plugged = plugged_keys(driver.get_xml(name))
                live, config = self._affect(name)
                for f in fragments:
                    if f.key in plugged:
                        driver.detach_device(name, f.xml, live=live, config=config)
        except errors.PcipassError as exc:
            problems.append(exc.message)
        _, released = self._give_back(journal, journal.bound)
        return problems + released

    def _give_back(self, journal: Journal, bindings: Sequence[SwitchBinding]
                   ) -> tuple[Journal, list[str]]:
        """Best effort, every step tried: re-attach the functions the journal detached,
        restore its VFs, unbind ``bindings`` from the switch; the problems met."""
        driver = self.ensure_driver()
        problems: list[str] = []
        for a in _addresses(journal.detached):
            try:
                driver.nodedev_reattach(a)
            except errors.PcipassError as exc:
                problems.append(exc.message)
        journal, released = self._release_ports(journal, journal.vfs, bindings, strict=False)
        return journal, problems + released

    def _detach(self, journal: Journal) -> tuple[Journal, Result]:
        """Unplug the payload's functions and ports (those the domain still holds), give the
        unmanaged functions back, restore the ports' VFs (what was saved when they were
        programmed, else :data:`FALLBACK_VF`) and unbind the switch. Each step is
        idempotent; a failure stops there and reports (the devices stay the server's)."""
        p, name = self._change(journal)
        fragments = change_fragments(p, normal_network=self.normal_network)
        driver = self.ensure_driver()
        if not journal.vfs:
            # What to put back, journalled before anything is restored (a resumed detach
            # must still know once the server's VF file has forgotten these VFs).
            saved = {v.slot: v for v in self.vf_store.load(_server_key(journal.server_id))}
            mine = {}
            for nic in p.interfaces:
                if nic.is_vf and nic.pf is not None and nic.vf_index is not None:
                    slot = vf_slot(nic)
                    mine[slot] = saved.get(slot, SavedVf(nic.port, slot, FALLBACK_VF))
            if mine:
                journal = self._save(replace(journal, vfs=tuple(mine.values()),
                                             updated_at=self.clock()))
        reattach = {str(a) for a in _change_unmanaged(p)}
        if reattach - set(journal.detached):
            journal = self._save(replace(journal, detached=tuple(sorted(reattach)),
                                         updated_at=self.clock()))
        try:
            if driver.exists(name):
                plugged = plugged_keys(driver.get_xml(name))
                live, config = self._affect(name)
                for f in fragments:
                    if f.key in plugged:
                        driver.detach_device(name, f.xml, live=live, config=config)
            for a in _addresses(journal.detached):
                driver.nodedev_reattach(a)
        except errors.PcipassError as exc:
            return journal, Result(False, exc.message)
        journal, problems = self._release_ports(journal, journal.vfs,
                                                switch_bindings(p.interfaces), strict=True)
        if problems:
            return journal, Result(False, "; ".join(problems))
        xml = driver.get_xml(name) if driver.exists(name) else None
        return journal, Result(True, None, xml)

    # -- live migration -------------------------------------------------------------------

    def _no_programmer(self, nics: Sequence[PayloadInterface]) -> Result | None:
        """The failure of a task with VF ports on an agent without a VF programmer."""
        vf_ports = [nic for nic in nics if nic.is_vf]
        if not vf_ports or self.programmer is not None:
            return None
        return Result(False, (
            f"the agent on {self.host} has no VF programmer configured (start it with "
            f"--sriov netlink, or --sriov fake for a simulated host); "
            f"{vf_ports[0].describe()} needs its VF programmed"))

    def _live_prepare(self, journal: Journal) -> tuple[Journal, Result]:
        """Destination, before the move: detach the unmanaged functions the guest will hold
        here (journalled first), program the ports' VFs (what each had saved, as a spawn
        saves it, so a later destroy here restores it) and bind the switch. Idempotent; a
        failure undoes what this task did."""
        p = parse_live(journal.payload)
        refused = self._no_programmer(p.interfaces)
        if refused is not None:
            return journal, refused
        driver = self.ensure_driver()
        detach = {str(a) for a in _live_unmanaged(p)}
        if detach - set(journal.detached):
            journal = self._save(replace(journal, detached=tuple(
                sorted({*journal.detached, *detach})), updated_at=self.clock()))
        try:
            for a in _addresses(detach):
                driver.nodedev_detach(a)
            journal = self._program_vfs(journal, p.interfaces)
            journal = self._bind_switch(journal, p.interfaces)
            return journal, Result(True)
        except Exception as exc:  # the destination must not keep half a preparation
            log.warning("live-migration prepare of server %s failed: %s; undoing it",
                        journal.server_id, _message(exc))
            journal = self.journals.load(journal.id) or journal
            problems = self._undo_prepare(journal)
            extra = f" (cleanup: {'; '.join(problems)})" if problems else ""
            return journal, Result(False, _message(exc) + extra)

    def _undo_prepare(self, journal: Journal) -> list[str]:
        """Give back what a prepare took: its unmanaged functions, its VFs, its switch
        bindings (best effort); the problems met."""
        return self._give_back(journal, journal.bound)[1]

    def _live_migrate(self, journal: Journal) -> tuple[Journal, Result]:
        """Source: hot-unplug each ``direct`` port's ``<interface type='hostdev'>`` (the
        guest loses that NIC until the destination plugs it again), migrate the running
        domain with the destination's XML (:mod:`pcipass.virt.migration`: macvtaps on the
        destination's VF netdevs, the unplugged NICs absent), then restore the source VFs
        and unbind the source switch. A failure before or at the migrate call plugs the
        NICs back and reports; nothing else changed. Resumed after the domain left (the
        source forgets it when the move succeeds) it only releases the source's ports."""
        p = parse_live(journal.payload, migrate=True)
        assert p.dest_uri is not None   # the parser insists for a migrate
        driver = self.ensure_driver()
        name = domain_name(p.server.id)
        if not journal.vfs:
            # What to put back once the guest is gone, journalled before anything changes.
            saved = {v.slot: v for v in self.vf_store.load(_server_key(journal.server_id))}
            mine = {vf_slot(nic): saved.get(vf_slot(nic),
                                            SavedVf(nic.port, vf_slot(nic), FALLBACK_VF))
                    for nic in p.interfaces if nic.is_vf}
            if mine:
                journal = self._save(replace(journal, vfs=tuple(mine.values()),
                                             updated_at=self.clock()))
        reattach = {str(a) for a in _live_unmanaged(p)}
        if reattach - set(journal.detached):
            journal = self._save(replace(journal, detached=tuple(sorted(reattach)),
                                         updated_at=self.clock()))
        if driver.exists(name):
            plan = plan_live_migration(driver.get_xml(name),
                                       migratable=[src for src, _dst in p.hostdevs])
            if not plan.allowed:
                return journal, Result(False, "cannot live-migrate: " + "; ".join(
                    b.reason for b in plan.blockers))
            netdevs = {nic.mac.lower(): nic.vf_netdev for nic in p.dest_interfaces
                       if nic.vnic_type is VnicType.MACVTAP and nic.vf_netdev is not None}
            dest_xml = plan.destination_xml(
                macvtaps={mac: netdevs[mac] for mac in plan.macvtaps if mac in netdevs},
                hostdevs=dict(p.hostdevs))     # a missing mapping fails before any unplug
            try:
                for u in plan.unplug:
                    driver.detach_device(name, u.xml, live=True, config=False)
                driver.migrate(name, p.dest_uri, live=True, xml=dest_xml)
            except Exception as exc:  # the guest must get its NICs back on the source
                log.warning("live migration of server %s failed: %s; plugging its NICs back",
                            journal.server_id, _message(exc))
                problems = self._replug(name, p.replug())
                extra = f" (re-plug: {'; '.join(problems)})" if problems else ""
                return journal, Result(False, _message(exc) + extra)
        journal, problems = self._give_back(journal, switch_bindings(p.interfaces))
        # The guest runs on the destination whatever the source's clean-up met.
        return journal, Result(True, ("source clean-up: " + "; ".join(problems))
                               if problems else None)

    def _replug(self, name: str, change: ChangePayload) -> list[str]:
        """Plug back into the running guest (only: its definition kept them) the change's
        interfaces it does not hold, best effort; the problems met."""
        driver = self.ensure_driver()
        problems: list[str] = []
        try:
            if not driver.exists(name):
                return [f"server {name} has no domain on {self.host}"]
            plugged = plugged_keys(driver.get_xml(name))
            for f in change_fragments(change, normal_network=self.normal_network):
                if f.key not in plugged:
                    try:
                        driver.attach_device(name, f.xml, live=True, config=False)
                    except errors.PcipassError as exc:
                        problems.append(exc.message)
        except errors.PcipassError as exc:
            problems.append(exc.message)
        return problems

    def _live_finish(self, journal: Journal) -> tuple[Journal, Result]:
        """Destination, after the move: plug each ``direct`` port's ``<interface>`` on the
        destination's VF (prepared by ``live_prepare``), into the running guest and its
        definition. Idempotent: what the domain holds already is skipped."""
        p = parse_live(journal.payload)
        name = domain_name(p.server.id)
        driver = self.ensure_driver()
        try:
            live, config = self._affect(name)
            plugged = plugged_keys(driver.get_xml(name))
            for f in change_fragments(p.replug(), normal_network=self.normal_network):
                if f.key not in plugged:
                    driver.attach_device(name, f.xml, live=live, config=config)
            return journal, Result(True, None, driver.get_xml(name))
        except errors.PcipassError as exc:
            return journal, Result(False, exc.message)

    def _teardown(self, name: str, detached: Sequence[PciAddress], overlay: str | Path | None,
                  *, strict: bool, keep_domain: bool = False) -> list[str]:
        """Run :func:`teardown_plan`; the problems met, in words. ``strict`` stops at the first
        domain or device failure (a destroy must not report the devices free while they are
        not); otherwise every step is tried. A disk that cannot be removed is only logged.
        ``keep_domain``: the domain is another side's; only the functions go back."""
        driver = self.ensure_driver()
        problems: list[str] = []
        try:
            plan = teardown_plan(Seen(False, False) if keep_domain else self._seen(name))
        except errors.PcipassError as exc:
            return [exc.message]
        for step in plan:
            try:
                if step is Step.DESTROY:
                    driver.destroy(name)
                elif step is Step.UNDEFINE:
                    if driver.exists(name):    # a transient domain vanished with destroy
                        driver.undefine(name)
                elif step is Step.REATTACH:
                    for a in detached:
                        try:
                            driver.nodedev_reattach(a)
                        except errors.PcipassError as exc:
                            problems.append(exc.message)
                            if strict:
                                return problems
                elif step is Step.REMOVE_DISK and overlay is not None:
                    try:
                        self.overlays.remove(overlay)
                    except errors.PcipassError as exc:
                        log.warning("cannot remove disk of %s: %s", name, exc.message)
            except errors.PcipassError as exc:
                problems.append(exc.message)
                if strict:
                    return problems
        return problems


def _keeps_disk(journal: Journal) -> bool:
    """A move's spawn on its source's own host: the disk is the source's too."""
    return journal.payload.get("move") is not None and bool(journal.payload.get("keep_disk"))


def _server_key(server_id: str) -> str:
    """A server id as its VF file is named: the canonical UUID text where it is one."""
    try:
        return str(UUID(server_id))
    except ValueError:
        return server_id


def _change_unmanaged(p: ChangePayload) -> tuple[PciAddress, ...]:
    """The functions of a change the agent detaches and re-attaches itself: unmanaged
    hostdevs and unmanaged ``direct`` ports' VFs."""
    out = set(unmanaged_addresses(p.devices))
    out |= {nic.address for nic in p.interfaces
            if nic.vnic_type == "direct" and not nic.managed and nic.address is not None}
    return tuple(sorted(out))


def _live_unmanaged(p: LivePayload) -> tuple[PciAddress, ...]:
    """The functions of a live task the agent detaches and re-attaches itself: unmanaged
    hostdevs and unmanaged ``direct`` ports' VFs."""
    return _change_unmanaged(ChangePayload(p.server, "attach_interface", p.devices,
                                           p.interfaces))


def _addresses(texts: Iterable[str]) -> tuple[PciAddress, ...]:
    return tuple(sorted(PciAddress.parse(t) for t in texts))
