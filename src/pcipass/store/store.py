"""The store: the only code that writes the database; one method, one transaction."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pcipass.errors import Conflict, Forbidden
from pcipass.pci.address import PciAddress
from pcipass.pci.device import PciDevice
from pcipass.pci.inventory import Inventory
from pcipass.records import (
    DeviceFilter,
    DeviceRecord,
    EventRecord,
    FlavorRecord,
    HostRecord,
    ImageRecord,
    MoveKind,
    MoveRecord,
    NetworkRecord,
    Page,
    PoolRecord,
    PortRecord,
    Principal,
    QuotaRecord,
    ReportResult,
    Role,
    ServerRecord,
    ServerStatus,
    UsageRecord,
)
from pcipass.sched.fit import Fit, NoFit
from pcipass.sched.snapshot import HostView
from pcipass.store import attach as _attach
from pcipass.store import bulk as _bulk
from pcipass.store import candidates as _candidates
from pcipass.store import catalog as _catalog
from pcipass.store import claims as _claims
from pcipass.store import drain as _drain
from pcipass.store import events as _events
from pcipass.store import inventory as _inventory
from pcipass.store import live as _live
from pcipass.store import liveness as _liveness
from pcipass.store import migrate as _migrate
from pcipass.store import moves as _moves
from pcipass.store import networks as _networks
from pcipass.store import queries as _queries
from pcipass.store import servers as _servers
from pcipass.store import tokens as _tokens
from pcipass.store import usage as _usage
from pcipass.store.attach import AttachDecide, DeviceAttach, PortAttach, Refused
from pcipass.store.candidates import Candidate, Counts, Need
from pcipass.store.claims import BootInputs, Decide, NewServer
from pcipass.store.derive import change_device, refresh_hosts
from pcipass.store.engine import Transactions, make_engine
from pcipass.store.facts import FactsCache
from pcipass.store.hostviews import load_views
from pcipass.store.kinds import KindCatalog, KindIds
from pcipass.store.moves import MoveTarget
from pcipass.store.networks import NewPort


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    """Hosts, devices, pools, tokens, the catalog, networks and ports, servers and their
    claims, quotas and usage, on SQLite (default) or PostgreSQL.

    Safe to share between threads and to run in several processes on one database.
    """

    def __init__(self, tx: Transactions, clock: Callable[[], datetime] = _utcnow) -> None:
        self._tx = tx
        self._clock = clock
        self._kind_ids = KindIds()
        self._kinds = KindCatalog()
        self._facts = FactsCache()

    @classmethod
    def open(cls, url: str, *, migrate: bool = True,
             clock: Callable[[], datetime] = _utcnow) -> Store:
        """Connect to ``url`` and, unless told not to, bring the schema to the newest revision."""
        tx = Transactions(make_engine(url))
        try:
            if migrate:
                _migrate.upgrade(tx)
                refresh_hosts(tx, KindIds(), clock())
            else:
                with tx.read():
                    pass  # fail now, not on the first request, when the database is unreachable
        except BaseException:
            tx.engine.dispose()
            raise
        return cls(tx, clock)

    def close(self) -> None:
        self._tx.engine.dispose()

    # --- tokens ---------------------------------------------------------------------------

    def create_token(self, *, role: Role, project: str | None = None,
                     host: str | None = None) -> tuple[Principal, str]:
        """A new random token; the plaintext is returned here once and never stored."""
        return _tokens.create_token(self._tx, role, project, host, self._clock())

    def ensure_token(self, plaintext: str, *, role: Role) -> Principal:
        return _tokens.ensure_token(self._tx, plaintext, role, self._clock())

    def authenticate(self, plaintext: str) -> Principal | None:
        return _tokens.authenticate(self._tx, plaintext)

    # --- inventory ------------------------------------------------------------------------

    def report_inventory(self, host: str, generation: int | None, inventory: Inventory, *,
                         now: datetime) -> ReportResult:
        """Replace the host's inventory if ``generation`` is current (None: create the host)."""
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        return _inventory.report_inventory(self._tx, host, generation, inventory, now,
                                           self._kind_ids)

    def list_hosts(self, *, limit: int = 100, marker: str | None = None) -> Page[HostRecord]:
        with self._tx.read() as conn:
            return _queries.list_hosts(conn, limit, marker)

    def get_host(self, name: str) -> HostRecord:
        with self._tx.read() as conn:
            return _queries.get_host(conn, name)

    def list_devices(self, flt: DeviceFilter, *, limit: int = 100,
                     marker: str | None = None) -> Page[DeviceRecord]:
        with self._tx.read() as conn:
            return _queries.list_devices(conn, flt, limit, marker)

    def get_device(self, host: str, address: PciAddress) -> DeviceRecord:
        with self._tx.read() as conn:
            return _queries.get_device(conn, host, address)

    def reserve_host(self, host: str, reserved: bool, *, reason: str | None = None
                     ) -> HostRecord:
        """Drain the host (nothing new is placed there) or take it back into service; what
        runs there keeps its devices. See :mod:`pcipass.store.drain`."""
        with self._tx.write() as conn:
            return _drain.reserve_host(conn, host, reserved, reason, self._clock())

    def mark_hosts_down(self, after_s: float) -> list[str]:
        """Mark down the hosts whose agent went silent; see :mod:`pcipass.store.liveness`."""
        with self._tx.write() as conn:
            return _liveness.mark_down(conn, self._clock(), after_s)

    def drain_entries(self, host: str) -> tuple[HostRecord, tuple[_drain.DrainEntry, ...]]:
        """The host and the servers still on it, with their devices' spec tags."""
        with self._tx.read() as conn:
            return _drain.drain_entries(conn, host)

    def set_reserved(self, host: str, address: PciAddress, reserved: bool) -> DeviceRecord:
        """Take a device out of service or put it back; its owner, if any, keeps it."""
        with self._tx.write() as conn:
            return change_device(conn, host, address,
                                 lambda t: replace(t, reserved=reserved),
                                 self._kind_ids, self._clock())

    def list_pools(self, *, host: str | None = None, limit: int = 100,
                   marker: str | None = None) -> Page[PoolRecord]:
        with self._tx.read() as conn:
            return _queries.list_pools(conn, host, limit, marker)

    # --- aliases, flavors, images -----------------------------------------------------------

    def alias_entries(self) -> list[dict[str, Any]]:
        with self._tx.read() as conn:
            return _catalog.alias_entries(conn)

    def add_aliases(self, entries: Sequence[dict[str, Any]],
                    check: Callable[[list[dict[str, Any]]], None]) -> None:
        """Append alias entries; ``check`` sees every stored entry plus the new ones, and
        raises to refuse them (nothing is written)."""
        with self._tx.write() as conn:
            check([*_catalog.alias_entries(conn), *entries])
            _catalog.add_alias_entries(conn, entries, self._clock())

    def delete_alias(self, name: str, check: Callable[[tuple[FlavorRecord, ...]], None]
                     ) -> bool:
        """Delete the stored entries of ``name`` unless ``check`` (shown every flavor) raises;
        False when there were none."""
        with self._tx.write() as conn:
            _catalog.lock_alias(conn, name)
            check(_catalog.list_flavors(conn, None))
            return _catalog.delete_alias(conn, name) > 0

    def create_flavor(self, *, name: str, vcpus: int, ram_mb: int, disk_gb: int,
                      extra_specs: dict[str, str], is_public: bool, projects: Sequence[str],
                      check: Callable[[list[dict[str, Any]]], None]) -> FlavorRecord:
        """``check`` sees the stored alias entries (held against deletion meanwhile)."""
        with self._tx.write() as conn:
            check(_catalog.alias_entries(conn, share_lock=True))
            return _catalog.create_flavor(
                conn, name=name, vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb,
                extra_specs=extra_specs, is_public=is_public, projects=projects,
                now=self._clock())

    def list_flavors(self, *, project: str | None = None) -> tuple[FlavorRecord, ...]:
        """All flavors, or those ``project`` may use (public or shared with it)."""
        with self._tx.read() as conn:
            return _catalog.list_flavors(conn, project)

    def get_flavor(self, ref: str, *, project: str | None = None) -> FlavorRecord:
        with self._tx.read() as conn:
            return _catalog.find_flavor(conn, ref, project)

    def delete_flavor(self, ref: str) -> None:
        with self._tx.write() as conn:
            _catalog.delete_flavor(conn, _catalog.find_flavor(conn, ref, None).id)

    def set_flavor_access(self, ref: str, *, add: Sequence[str],
                          remove: Sequence[str]) -> FlavorRecord:
        with self._tx.write() as conn:
            flavor = _catalog.find_flavor(conn, ref, None)
            if flavor.is_public:
                raise Conflict(f"flavor {flavor.name!r} is public: every project may use it",
                               field="flavor")
            _catalog.set_flavor_access(conn, flavor.id, add, remove)
            return _catalog.find_flavor(conn, flavor.id, None)

    def create_image(self, *, name: str, source: str, properties: dict[str, str],
                     project: str | None) -> ImageRecord:
        with self._tx.write() as conn:
            return _catalog.create_image(conn, name=name, source=source,
                                         properties=properties, project=project,
                                         now=self._clock())

    def list_images(self, *, project: str | None = None) -> tuple[ImageRecord, ...]:
        with self._tx.read() as conn:
            return _catalog.list_images(conn, project)

    def get_image(self, ref: str, *, project: str | None = None) -> ImageRecord:
        with self._tx.read() as conn:
            return _catalog.find_image(conn, ref, project)

    def delete_image(self, ref: str, *, project: str | None = None) -> ImageRecord:
        """Delete an image ``project`` may see (any when None); a member may only delete its
        own project's (Forbidden for a public one)."""
        with self._tx.write() as conn:
            image = _catalog.find_image(conn, ref, project)
            if project is not None and image.project != project:
                raise Forbidden(f"image {image.name!r} is public: only an admin may delete it",
                                field="image")
            _catalog.delete_image(conn, image.id)
            return image

    # --- networks and ports ---------------------------------------------------------------

    def create_network(self, *, name: str, project: str | None, physical_network: str,
                       segmentation: str, segmentation_id: int | None) -> NetworkRecord:
        """A new network (``project`` None: shared); a name in use is a Conflict on "name"."""
        with self._tx.write() as conn:
            return _networks.create_network(
                conn, name=name, project=project, physical_network=physical_network,
                segmentation=segmentation, segmentation_id=segmentation_id,
                now=self._clock())

    def list_networks(self, *, project: str | None = None) -> tuple[NetworkRecord, ...]:
        """Every network, or the shared ones and ``project``'s."""
        with self._tx.read() as conn:
            return _networks.list_networks(conn, project)

    def get_network(self, ref: str, *, project: str | None = None) -> NetworkRecord:
        """By id or name; one ``project`` may not see is NotFound."""
        with self._tx.read() as conn:
            return _networks.find_network(conn, ref, project)

    def delete_network(self, ref: str) -> None:
        """Delete a network and its free ports; Conflict ``network_in_use`` while a server
        has a port on it."""
        with self._tx.write() as conn:
            _networks.delete_network(conn, ref)

    def create_port(self, *, project: str, network_id: str, name: str | None,
                    vnic_type: str, mac: str | None, mac_prefix: str, trusted: bool,
                    spoofchk: bool, max_tx_rate_mbps: int | None,
                    min_tx_rate_mbps: int | None, numa_affinity_policy: str | None,
                    rng: random.Random | None = None) -> PortRecord:
        """A free port on a network ``project`` may see, with ``mac`` (Conflict
        ``mac_in_use`` if the network has it) or a random free MAC under ``mac_prefix``."""
        with self._tx.write() as conn:
            return _networks.create_port(
                conn, project=project, network_id=network_id, name=name,
                vnic_type=vnic_type, mac=mac, mac_prefix=mac_prefix, trusted=trusted,
                spoofchk=spoofchk, max_tx_rate_mbps=max_tx_rate_mbps,
                min_tx_rate_mbps=min_tx_rate_mbps,
                numa_affinity_policy=numa_affinity_policy, rng=rng, now=self._clock())

    def list_ports(self, *, project: str | None = None, network: str | None = None,
                   server: str | None = None) -> tuple[PortRecord, ...]:
        """Ports, oldest first; ``network`` by id or name, ``server`` by id."""
        with self._tx.read() as conn:
            return _networks.list_ports(conn, project=project, network=network,
                                        server=server)

    def get_port(self, ref: str, *, project: str | None = None) -> PortRecord:
        """By id, else the oldest port of that name (only ``project``'s when given)."""
        with self._tx.read() as conn:
            return _networks.find_port(conn, ref, project)

    def delete_port(self, ref: str, *, project: str | None = None) -> None:
        """Delete a free port; Conflict ``port_in_use`` while a server has it."""
        with self._tx.write() as conn:
            _networks.delete_port(conn, ref, project)

    def prepare_ports(self, server_id: str, project: str, new: Sequence[NewPort],
                      existing: Sequence[str], *, mac_prefix: str,
                      rng: random.Random | None = None) -> tuple[PortRecord, ...]:
        """Attach a boot's ports to ``server_id`` before its claim, in one transaction: a
        new port per :class:`~pcipass.store.networks.NewPort` (deleted with the server),
        and the existing ports by id (Conflict ``port_in_use`` if a server has one). Returned
        in the order new..., existing...."""
        with self._tx.write() as conn:
            return _networks.prepare_ports(conn, server_id, project, new, existing,
                                           mac_prefix=mac_prefix, rng=rng,
                                           now=self._clock())

    def release_ports(self, server_id: str) -> None:
        """Undo :meth:`prepare_ports` for a boot refused before its server row exists."""
        with self._tx.write() as conn:
            _networks.release_ports(conn, server_id, self._clock())

    # --- scheduling ---------------------------------------------------------------------

    def boot_inputs(self, flavor: str, image: str, *, scope: str | None,
                    project: str | None) -> BootInputs:
        """What deciding a boot reads before the search, in one read: the flavor and image
        (among those ``scope`` may see), the stored alias entries, the pool kinds, and
        ``project``'s quotas with what it holds of them."""
        with self._tx.read() as conn:
            fl = _catalog.find_flavor(conn, flavor, scope)
            im = _catalog.find_image(conn, image, scope)
            entries = _catalog.alias_entries(conn)
            self._kinds.refresh(conn)
            limits = _usage.project_limits(conn, project) if project is not None else {}
            held = _usage.held_per_alias(conn, project, list(limits)) if (
                limits and project is not None) else {}
        return BootInputs(fl, im, entries, self._kinds.examples, limits, held)

    def kinds(self) -> dict[int, PciDevice]:
        """An example device of every pool kind, by kind id (cached; see store.kinds)."""
        with self._tx.read() as conn:
            self._kinds.refresh(conn)
        return self._kinds.examples

    def candidates(self, needs: Sequence[Need], vcpus: int, ram_mb: int, *, spread: bool,
                   limit: int, offset: int = 0, only: int | None = None,
                   baremetal: bool = False) -> list[Candidate]:
        """One page of the hosts that pass the SQL narrowing, best first (``only``: whether
        that host passes). ``baremetal``: free bare-metal machines instead of hypervisors."""
        if baremetal:
            with self._tx.read() as conn:
                return _candidates.machines(conn, needs, vcpus, ram_mb, spread=spread,
                                            limit=limit, offset=offset, only=only)
        kind_set = None
        if len(needs) == 1 and len(needs[0].kind_ids) > 1:
            kind_set = self._kind_ids.sets.ensure(self._tx, needs[0].kind_ids)
        with self._tx.read() as conn:
            return _candidates.candidates(conn, needs, vcpus, ram_mb, spread=spread,
                                          limit=limit, offset=offset, only=only,
                                          kind_set=kind_set)

    def passes(self, needs: Sequence[Need], vcpus: int, ram_mb: int, host_id: int, *,
               baremetal: bool = False) -> bool:
        """Whether the host passes the SQL narrowing now."""
        return bool(self.candidates(needs, vcpus, ram_mb, spread=False, limit=1,
                                    only=host_id, baremetal=baremetal))

    def machine_counts(self, needs: Sequence[Need], vcpus: int, ram_mb: int
                       ) -> _candidates.MachineCounts:
        """How many hosts fail a bare-metal boot at which check first (for its fault)."""
        with self._tx.read() as conn:
            return _candidates.machine_counts(conn, needs, vcpus, ram_mb)

    def placement_counts(self, needs: Sequence[Need], vcpus: int, ram_mb: int) -> Counts:
        """How many hosts fail which check first (for explanations)."""
        kind_set = None
        if len(needs) == 1 and len(needs[0].kind_ids) > 1:
            kind_set = self._kind_ids.sets.ensure(self._tx, needs[0].kind_ids)
        with self._tx.read() as conn:
            return _candidates.counts(conn, needs, vcpus, ram_mb, kind_set=kind_set)

    def host_verdict_codes(self, needs: Sequence[Need], vcpus: int, ram_mb: int, limit: int
                           ) -> list[tuple[int, str, int]]:
        with self._tx.read() as conn:
            return _candidates.host_codes(conn, needs, vcpus, ram_mb, limit)

    def host_views(self, host_ids: Sequence[int]) -> list[HostView]:
        with self._tx.read() as conn:
            return load_views(conn, host_ids, self._facts)

    # --- servers --------------------------------------------------------------------------

    def claim(self, server: NewServer, host_id: int, decide: Decide, *,
                accept: Callable[[Fit], bool] | None = None) -> ServerRecord | Fit | NoFit:
        """Place ``server`` on the host in one transaction if ``decide`` finds it fits the
        host's devices as they are now (and ``accept`` takes that fit); otherwise nothing is
        written and the verdict comes back. See :mod:`pcipass.store.claims`."""
        with self._tx.write() as conn:
            return _claims.claim(conn, server, host_id, decide, self._kind_ids, self._facts,
                                 self._clock(), accept)

    def record_failure(self, server: NewServer, fault: str) -> ServerRecord:
        with self._tx.write() as conn:
            return _claims.record_failure(conn, server, fault, self._clock())

    def get_server(self, ref: str, *, project: str | None = None) -> ServerRecord:
        with self._tx.read() as conn:
            return _servers.find_server(conn, ref, project)

    def server_events(self, ref: str, *, project: str | None = None
                      ) -> tuple[EventRecord, ...]:
        """The server's action log, oldest first (``project``: only if it is that
        project's, else NotFound)."""
        with self._tx.read() as conn:
            server = _servers.find_server(conn, ref, project)
            return _events.list_events(conn, server.id)

    def list_servers(self, *, project: str | None = None, host: str | None = None,
                     status: ServerStatus | None = None, limit: int = 100,
                     marker: str | None = None) -> Page[ServerRecord]:
        with self._tx.read() as conn:
            return _servers.list_servers(conn, project=project, host=host, status=status,
                                         limit=limit, marker=marker)

    def delete_server(self, server_id: str) -> ServerRecord:
        """Free what the server holds and mark it DELETED; idempotent."""
        with self._tx.write() as conn:
            now = self._clock()
            server = _claims.release(conn, server_id, ServerStatus.DELETED, None,
                                     self._kind_ids, self._facts, now)
            _events.record_event(conn, server_id, "delete", "done", "freed at once", now,
                                 host=server.host)
            return server

    def complete_spawn(self, server_id: str) -> ServerRecord:
        """The host started the server: devices allocated, ACTIVE, metering starts."""
        with self._tx.write() as conn:
            now = self._clock()
            server = _claims.complete_spawn(conn, server_id, self._kind_ids, self._facts, now)
            _events.record_event(conn, server_id, "spawn", "done", None, now,
                                 host=server.host)
            return server

    def fail_spawn(self, server_id: str, message: str) -> ServerRecord:
        """The host could not start the server: claims freed, ERROR with the message."""
        with self._tx.write() as conn:
            server = _servers.get_server(conn, server_id)
            if server.status is not ServerStatus.BUILDING:
                raise Conflict(f"server {server_id} is {server.status.value}, not BUILDING",
                               field="server")
            now = self._clock()
            _events.record_event(conn, server_id, "spawn", "failed", message, now,
                                 host=server.host)
            return _claims.release(conn, server_id, ServerStatus.ERROR, message,
                                   self._kind_ids, self._facts, now)

    # --- hot attach and detach (store.attach) -----------------------------------------------

    def attach(self, server_id: str, what: DeviceAttach | PortAttach, decide: AttachDecide,
               *, mac_prefix: str, rng: random.Random | None = None
               ) -> ServerRecord | Refused:
        """Claim devices (or a port's) for an ACTIVE server on its own host and queue the
        attach task, in one transaction; a :class:`~pcipass.store.attach.Refused` (recorded
        in the server's events) when the host has none that fit or the quota says no."""
        with self._tx.write() as conn:
            return _attach.attach(conn, server_id, what, decide, self._kind_ids, self._facts,
                                  self._clock(), mac_prefix=mac_prefix, rng=rng)

    def detach_device(self, server_id: str, address: PciAddress) -> ServerRecord:
        """Queue the unplug of a device (and its IOMMU unit); freed when the host confirms."""
        with self._tx.write() as conn:
            return _attach.detach_device(conn, server_id, address, self._clock())

    def detach_port(self, server_id: str, port: str, *, project: str | None = None
                    ) -> ServerRecord:
        """Queue the unplug of one of the server's ports; let go when the host confirms."""
        with self._tx.write() as conn:
            return _attach.detach_port(conn, server_id, port, project, self._clock())

    # --- moves: resize, cold and live migration (store.moves) ----------------------------

    def move_inputs(self, ref: str, *, flavor: str | None = None, scope: str | None = None
                    ) -> tuple[_moves.MoveInputs, dict[int, PciDevice]]:
        """What deciding a move reads first, in one read (see
        :func:`pcipass.store.moves.move_inputs`), and the pool kinds."""
        with self._tx.read() as conn:
            got = _moves.move_inputs(conn, ref, flavor, scope)
            self._kinds.refresh(conn)
        return got, self._kinds.examples

    def host_id(self, name: str) -> int:
        with self._tx.read() as conn:
            return _moves.host_id(conn, name)

    def claim_move(self, server_id: str, target: MoveTarget, host_id: int, decide: Decide, *,
                   accept: Callable[[Fit], bool] | None = None,
                   first_task: str | None = "migrate_out") -> ServerRecord | Fit | NoFit:
        """Claim a move's destination side on the host in one transaction (as a boot's
        claim) and start the move; the verdict, nothing written, when the host does not fit.
        See :mod:`pcipass.store.moves`."""
        with self._tx.write() as conn:
            if target.kind is MoveKind.LIVE:
                # A live migration's first step is "live_prepare" on the destination.
                return _live.begin(conn, server_id, target, host_id, decide, self._kind_ids,
                                   self._facts, self._clock(), accept)
            return _moves.claim_move(conn, server_id, target, host_id, decide, self._kind_ids,
                                     self._facts, self._clock(), accept,
                                     first_task=first_task)

    def live_entry(self, ref: str, *, project: str | None = None) -> _drain.DrainEntry:
        """The server and the device-spec tags of what it holds: what the live-migration
        verdict (:func:`pcipass.services.drain.blockers`) reads."""
        with self._tx.read() as conn:
            server = _servers.find_server(conn, ref, project)
            return _live.live_entry(conn, server.id)

    def hosts_without_migration_uri(self) -> frozenset[int]:
        """Hosts that cannot take a live migration: no migration URI reported."""
        with self._tx.read() as conn:
            return _live.hosts_without_uri(conn)

    def confirm_move(self, server_id: str) -> ServerRecord:
        """Keep the destination of the server's move waiting in VERIFY_RESIZE."""
        with self._tx.write() as conn:
            return _moves.confirm(conn, server_id, self._clock())

    def revert_move(self, server_id: str) -> ServerRecord:
        """Go back to the source of the server's open move."""
        with self._tx.write() as conn:
            return _moves.revert(conn, server_id, self._kind_ids, self._clock())

    def list_moves(self, server_id: str) -> tuple[MoveRecord, ...]:
        with self._tx.read() as conn:
            return _moves.list_moves(conn, server_id)

    def get_move(self, move_id: int) -> MoveRecord:
        with self._tx.read() as conn:
            return _moves.get_move(conn, move_id)

    def closed_move_ids(self, ids: Collection[int]) -> set[int]:
        with self._tx.read() as conn:
            return _moves.closed_move_ids(conn, ids)

    def record_move_refusal(self, server_id: str, action: str, message: str) -> None:
        """A move no host could take: only the server's event log changes."""
        with self._tx.write() as conn:
            server = _servers.get_server(conn, server_id)
            _events.record_event(conn, server_id, action, "failed", message, self._clock(),
                                 host=server.host)

    # --- quotas and usage -------------------------------------------------------------------

    def set_quota(self, project: str, alias: str, limit: int) -> QuotaRecord:
        with self._tx.write() as conn:
            return _usage.set_quota(conn, project, alias, limit, self._clock())

    def list_quotas(self, *, project: str | None = None) -> tuple[QuotaRecord, ...]:
        with self._tx.read() as conn:
            return _usage.list_quotas(conn, project)

    def delete_quota(self, project: str, alias: str) -> None:
        with self._tx.write() as conn:
            _usage.delete_quota(conn, project, alias)

    def usage(self, *, project: str | None, start: datetime, end: datetime
              ) -> tuple[UsageRecord, ...]:
        with self._tx.read() as conn:
            return _usage.usage(conn, project, start, end, self._clock())

    # --- bulk -------------------------------------------------------------------------------

    def load_hosts(self, fleet: Sequence[tuple[str, Inventory]], *, now: datetime) -> int:
        """Create many new hosts at once (benchmarks and tests; agents report one by one).
        Returns how many devices were written."""
        return _bulk.load_hosts(self._tx, self._kind_ids, fleet, now)
