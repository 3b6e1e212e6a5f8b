"""The agent's imperative shell: discover, ask :mod:`pcipass.agent.policy`, act, sleep.

Everything that decides lives in the policy module; this loop reads sysfs (through the
``discover`` callable it is given), talks HTTP through :class:`ApiClient`, writes the state
file and sleeps on an event that SIGINT/SIGTERM set, so it stops promptly and cleanly.
:func:`run_agent` runs it beside the task loop (:mod:`pcipass.agent.tasks`), one thread each,
both stopped by the same event.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from pcipass import errors
from pcipass.agent.policy import (
    Accepted,
    Failed,
    LoopState,
    Outcome,
    Refused,
    Report,
    Stale,
    Wait,
    after_attempt,
    backoff_delay,
    next_action,
    report_hash,
)
from pcipass.agent.state import SavedState, load_state, save_state
from pcipass.agent.tasks import TaskRunner
from pcipass.cli.client import ApiClient, report_result
from pcipass.pci.inventory import Inventory, inventory_to_json

log = logging.getLogger("pcipass.agent")

CONFLICT_RETRIES = 3
TASK_GRACE_S = 120.0   # how long shutdown waits for a task in progress to finish
POLL_GRACE_S = 1.0     # ... and for a task loop that is only waiting on a long poll


def send_report(client: ApiClient, host: str, generation: int | None,
                report: dict[str, Any]) -> Outcome:
    """PUT the report; on a generation conflict re-read the host's generation and try again."""
    for _ in range(CONFLICT_RETRIES):
        try:
            result = report_result(client.put_inventory(host, generation, report))
            return Accepted(result.generation)
        except errors.GenerationConflict as exc:
            log.info("generation %s is stale (%s); re-reading host %s", generation, exc, host)
            try:
                generation = int(client.host(host)["generation"])
            except errors.NotFound:
                generation = None  # deleted meanwhile: the next PUT creates it again
            except errors.PcipassError as read_exc:
                return Failed(f"cannot re-read generation of {host}: {read_exc}")
        except errors.InvalidInput as exc:
            return Refused(exc.message, exc.field)
        except errors.PcipassError as exc:
            return Failed(f"{exc.code}: {exc.message}")
    return Stale(generation)


@dataclass
class Agent:
    """One host's reporting loop. ``discover`` returns the host's current inventory."""

    client: ApiClient
    host: str
    discover: Callable[[], Inventory]
    state_file: Path
    interval: float
    poll: float
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        saved = load_state(self.state_file, self.client.url)
        self.state = LoopState(interval=self.interval, poll=self.poll,
                               generation=saved.generation)
        self.resumed_hash = saved.report_hash

    def discover_report(self) -> tuple[dict[str, Any], str]:
        report = inventory_to_json(self.discover())
        return report, report_hash(report)

    def attempt(self, report: dict[str, Any], digest: str, why: str) -> Outcome:
        """Send one report and fold its outcome into the state; log what happened and why."""
        if why and digest == self.resumed_hash and self.state.last_report_at is None:
            why += " (unchanged since the last run)"
        outcome = send_report(self.client, self.host, self.state.generation, report)
        now = self.clock()
        self.state = after_attempt(self.state, outcome, now, digest, self.rand())
        match outcome:
            case Accepted(generation):
                log.info("reported %s (%s): %d devices, generation %d", self.host, why,
                         len(report.get("devices") or []), generation)
                self.save(SavedState(self.client.url, generation, digest))
            case Refused(message, field_name):
                log.error("server refused the report for %s: %s (field %s); not resending "
                          "until the inventory changes or %.0fs pass", self.host, message,
                          field_name or "-", self.state.interval)
            case Stale(_) | Failed(_):
                detail = outcome.message if isinstance(outcome, Failed) else \
                    "generation kept changing"
                log.warning("report for %s failed (%s); retry in %.1fs (attempt %d)", self.host,
                            detail, (self.state.retry_at or now) - now, self.state.failures)
        return outcome

    def save(self, saved: SavedState) -> None:
        """Persist, but never stop reporting over it: the server re-teaches a lost generation."""
        try:
            save_state(self.state_file, saved)
        except OSError as exc:
            log.warning("cannot save agent state to %s: %s", self.state_file, exc)

    def run_once(self) -> bool:
        """Discover and report one time (no backoff); True when the server accepted it."""
        try:
            report, digest = self.discover_report()
        except (errors.PcipassError, OSError) as exc:
            log.error("discovery failed: %s", exc)
            return False
        return isinstance(self.attempt(report, digest, "one-shot report"), Accepted)

    def run(self) -> None:
        """Report until stopped."""
        discovery_failures = 0
        while not self.stop.is_set():
            try:
                report, digest = self.discover_report()
            except (errors.PcipassError, OSError) as exc:
                discovery_failures += 1
                delay = backoff_delay(discovery_failures, self.rand(), cap=self.interval)
                log.error("discovery failed (%s); retry in %.1fs", exc, delay)
                self.stop.wait(delay)
                continue
            discovery_failures = 0
            action = next_action(self.state, self.clock(), digest)
            match action:
                case Report(why):
                    self.attempt(report, digest, why.value)
                case Wait(seconds):
                    self.stop.wait(max(seconds, 0.01))
        log.info("agent for %s stopped", self.host)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (main thread only) and are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def wait_until_stopped(stop: threading.Event, poll: float = 0.5) -> None:
    """Block the main thread until ``stop`` is set, waking every ``poll`` seconds.

    The kernel may deliver SIGINT to any thread; Python runs the handler that sets ``stop``
    only when the main thread executes bytecode again, so an untimed wait would sleep
    through Ctrl-C.
    """
    while not stop.wait(poll):
        pass


def run_agent(agent: Agent, tasks: TaskRunner | None = None, *,
              grace: float = TASK_GRACE_S) -> None:
    """Report inventory in this thread and run tasks in another until ``agent.stop`` is set.

    On stop a task in progress may finish (up to ``grace`` seconds: its journal would let a
    restart resume it, but a finished one is cleaner); a task loop held in a long poll is not
    waited for beyond a moment (its thread is a daemon, and the poll's answer is harmless:
    nothing is started without a new ``start`` call).
    """
    thread: threading.Thread | None = None
    if tasks is not None:
        tasks.stop = agent.stop
        thread = threading.Thread(target=tasks.run, name=f"tasks-{agent.host}", daemon=True)
        thread.start()
    try:
        agent.run()
    finally:
        agent.stop.set()
        if thread is not None and tasks is not None:
            _join(thread, tasks, grace)


def _join(thread: threading.Thread, tasks: TaskRunner, grace: float) -> None:
    deadline = time.monotonic() + grace
    idle_until = time.monotonic() + POLL_GRACE_S
    while thread.is_alive():
        now = time.monotonic()
        if now >= deadline:
            log.warning("task loop still busy after %.0fs; leaving it (its journal resumes "
                        "the task on the next start)", grace)
            return
        if not tasks.busy and now >= idle_until:
            return
        if tasks.busy:
            idle_until = now + POLL_GRACE_S
        thread.join(0.05)
