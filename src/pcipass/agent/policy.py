"""The agent's decisions, as pure functions of its state, the clock and what it discovered.

The loop in :mod:`pcipass.agent.loop` only performs what these functions decide, so every rule
(when to report, how long to back off, when a refused report may be sent again) is tested here
without a server, a sysfs tree or a clock:

- report when discovery differs from what the server last accepted, and at least every
  ``interval`` seconds even when nothing changed (the server sees the host is alive);
- after a transport or server failure, wait an exponentially growing, capped, jittered delay;
  a change in discovery does not cut the wait short (the server is still down);
- a report the server refused (422) is not sent again until discovery changes or ``interval``
  has passed, so a bad report costs one request per interval, not a tight loop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

DEFAULT_INTERVAL_S = 60.0
MAX_POLL_S = 5.0
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0


def report_hash(report: Any) -> str:
    """A stable digest of a report's JSON: equal inventories hash equal whatever the order."""
    text = json.dumps(report, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def poll_period(interval: float) -> float:
    """How often discovery re-reads sysfs: cheap, so often, but never more than interval."""
    return min(interval, MAX_POLL_S)


def backoff_delay(failures: int, rand: float, *, base: float = BACKOFF_BASE_S,
                  cap: float = BACKOFF_CAP_S) -> float:
    """Seconds to wait after ``failures`` consecutive failures (>= 1).

    Doubles from ``base`` up to ``cap``; ``rand`` in [0, 1) picks a point in the upper half of
    that window ("equal jitter"), so a fleet that lost its server does not come back in step
    while no agent waits less than half the nominal delay.
    """
    if failures <= 0:
        return 0.0
    nominal = min(cap, base * 2.0 ** min(failures - 1, 32))
    return nominal / 2.0 + nominal / 2.0 * min(max(rand, 0.0), 1.0)


class Why(StrEnum):
    FIRST = "first report since start"
    CHANGED = "inventory changed"
    PERIODIC = "periodic report"


@dataclass(frozen=True, slots=True)
class Report:
    why: Why


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


Action = Report | Wait


@dataclass(frozen=True, slots=True)
class LoopState:
    """What the loop knows between iterations. Times are monotonic seconds."""

    interval: float = DEFAULT_INTERVAL_S
    poll: float = MAX_POLL_S
    generation: int | None = None
    accepted_hash: str | None = None  # the report the server last accepted
    last_report_at: float | None = None  # when it last accepted one (this process)
    failures: int = 0
    retry_at: float | None = None  # no attempt before this (backoff)
    refused_hash: str | None = None  # the report the server last refused (422)
    refused_at: float | None = None


def next_action(state: LoopState, now: float, discovered: str) -> Action:
    """Report now, or wait how long, given the hash of what discovery just found."""
    if state.retry_at is not None and now < state.retry_at:
        return Wait(min(state.retry_at - now, state.poll))
    if (state.refused_hash == discovered and state.refused_at is not None
            and now < state.refused_at + state.interval):
        return Wait(min(state.refused_at + state.interval - now, state.poll))
    if state.last_report_at is None:
        return Report(Why.FIRST)
    if discovered != state.accepted_hash:
        return Report(Why.CHANGED)
    due = state.last_report_at + state.interval
    if now >= due:
        return Report(Why.PERIODIC)
    return Wait(min(due - now, state.poll))


# --- what came of an attempt ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Accepted:
    generation: int


@dataclass(frozen=True, slots=True)
class Refused:
    """The server said the report is wrong (422): sending it again will not help."""

    message: str
    field: str | None


@dataclass(frozen=True, slots=True)
class Failed:
    """No verdict on the report (server unreachable, 5xx, auth): try again after a backoff."""

    message: str


@dataclass(frozen=True, slots=True)
class Stale:
    """The generation raced another writer and re-reading it did not settle: retry soon."""

    generation: int | None


Outcome = Accepted | Refused | Failed | Stale


def after_attempt(state: LoopState, outcome: Outcome, now: float, sent: str,
                  rand: float) -> LoopState:
    """The state after an attempt to send the report whose hash is ``sent``."""
    match outcome:
        case Accepted(generation):
            return replace(state, generation=generation, accepted_hash=sent, last_report_at=now,
                           failures=0, retry_at=None, refused_hash=None, refused_at=None)
        case Refused():
            return replace(state, failures=0, retry_at=None, refused_hash=sent, refused_at=now)
        case Stale(generation):
            failures = state.failures + 1
            return replace(state, generation=generation, failures=failures,
                           retry_at=now + backoff_delay(failures, rand))
        case Failed():
            failures = state.failures + 1
            return replace(state, failures=failures,
                           retry_at=now + backoff_delay(failures, rand))
