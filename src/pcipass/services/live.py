"""Live migration: the services behind ``POST /v1/servers/{ref}/live-migrate`` and
``POST /v1/hosts/{host}/drain`` with ``live_migrate``. Admins only.

A server may move live when :func:`pcipass.services.drain.blockers` (the one verdict, the
drain listing's too) finds nothing in the way: every device it holds is a ``macvtap`` or
``direct`` port's VF, or a function whose device spec and alias both say
``live_migratable``. Otherwise the call is a 409 ``not_live_migratable`` naming each
blocking device and why. The destination is found and claimed as a cold migration's
(:class:`~pcipass.services.moves.MoveServices`, kind ``live``), among the hosts that
reported a migration URI; :mod:`pcipass.store.live` drives the agents' steps from there.

Draining with ``live_migrate`` moves, one after the other, every server of the host that
can move, and reports the rest: those a device pins (with the verdict) and those whose
move could not start (no host fits, not ACTIVE...). The host is not reserved by it:
reserve it first (``pcipass host reserve``) so nothing new lands there meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcipass.errors import Conflict, PcipassError
from pcipass.records import HostRecord, MoveKind, Principal, ServerRecord, ServerStatus
from pcipass.services import drain
from pcipass.services.access import admin
from pcipass.services.moves import MoveServices, destination
from pcipass.store.drain import DrainEntry

__all__ = ["LiveDrainReport", "LiveServices", "NotMoved", "refusal"]


@dataclass(frozen=True, slots=True)
class NotMoved:
    """A server the drain left on the host: ``blockers`` (devices that cannot move) or the
    ``reason`` its move could not start."""

    server: ServerRecord
    blockers: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class LiveDrainReport:
    host: HostRecord
    migrating: tuple[ServerRecord, ...]     # their moves started
    not_moved: tuple[NotMoved, ...]


def refusal(server: ServerRecord, blockers: tuple[str, ...]) -> Conflict:
    """The 409 for a server a device pins to its host, naming each device and why."""
    return Conflict(f"server {server.name} ({server.id}) cannot be live-migrated: "
                    + "; ".join(blockers), field="server", code="not_live_migratable")


class LiveServices(MoveServices):
    """Live migration and live draining: the part of :class:`~pcipass.services.Cloud` that
    moves running guests (a mixin over the cold moves)."""

    def live_verdict(self, entry: DrainEntry) -> tuple[str, ...]:
        return drain.blockers(entry.server, entry.tags,
                              drain.live_aliases(self.aliases.all()))

    def live_migrate_server(self, p: Principal, ref: str, *,
                            host: str | None = None) -> ServerRecord:
        """Start moving the running server to another host (``host``, when named): its
        destination claimed, then the agents' prepare, migrate and finish steps. The
        server is MIGRATING until it runs ACTIVE on the destination (or, the move failing,
        still on the source)."""
        admin(p, "live-migrate servers")
        entry = self.store.live_entry(ref)
        found = self.live_verdict(entry)
        if found:
            raise refusal(entry.server, found)
        got, kinds = self.store.move_inputs(entry.server.id)
        unreachable = self.store.hosts_without_migration_uri()
        only = None
        if host is not None:
            only = destination(self.store, got, host, "live migration")
            if only in unreachable:
                raise Conflict(f"host {host} has not reported a migration URI (its agent is "
                               "older, or not running): it cannot take a live migration",
                               field="host", code="no_migration_uri")
        return self._move(got, kinds, MoveKind.LIVE,
                          exclude=frozenset({got.host_id, *unreachable}), only=only,
                          auto_confirm=False)

    def drain_live(self, p: Principal, host: str) -> LiveDrainReport:
        """Live-migrate every server of ``host`` that can move; report what stays."""
        admin(p, "drain hosts")
        report = drain.drain_report(self.store, p, host, self.aliases.all())
        moving: list[ServerRecord] = []
        stays: list[NotMoved] = []
        for entry in report.servers:
            s = entry.server
            if entry.blockers:
                stays.append(NotMoved(s, blockers=entry.blockers))
            elif s.status is not ServerStatus.ACTIVE:
                stays.append(NotMoved(s, reason=f"server is {s.status}: only an ACTIVE "
                                                "server can be live-migrated"))
            else:
                try:
                    moving.append(self.live_migrate_server(p, s.id))
                except PcipassError as exc:
                    stays.append(NotMoved(s, reason=exc.message))
        return LiveDrainReport(report.host, tuple(moving), tuple(stays))
