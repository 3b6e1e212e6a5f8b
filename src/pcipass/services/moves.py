"""Resize and cold migration: the services behind ``/v1/servers/{ref}/resize``,
``.../resize/confirm``, ``.../resize/revert``, ``.../migrate`` and ``.../moves``.

Who may: a resize, its confirm and revert, the server's project (a member of another project
gets NotFound, as for any of its servers) and admins; a cold migration only admins.

The destination is found as a boot's host is (:class:`~pcipass.services.boot.Placer`: SQL
narrowing, ``sched.fit``, the claim under the host's lock, retries on lost races) with the
new flavor's requests (a migration: the server's own flavor) and the server's ports; the
claim is :func:`pcipass.store.moves.claim_move`. A resize may stay on its host when it fits
there and ``[scheduler] resize_same_host`` allows it; a migration never does, and a host
the admin names must pass the same checks as any other. When no host fits, the server stays
as it was, its event log says why, and the call is a 409 ``no_valid_host``.

See :mod:`pcipass.store.moves` for the steps that follow and the task payloads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from pcipass.config import Settings
from pcipass.errors import Conflict, Forbidden, InvalidInput, NotFound
from pcipass.pci.device import PciDevice
from pcipass.pci.request import pci_numa_policy
from pcipass.records import MoveKind, MoveRecord, Principal, Role, ServerRecord
from pcipass.sched.fit import Fit, NoFit
from pcipass.sched.weigh import WeighPolicy
from pcipass.services.access import admin, tenant
from pcipass.services.baremetal import BAREMETAL_SERVER, is_baremetal, refuse_baremetal
from pcipass.services.boot import Placer, boot_request, quota_trim
from pcipass.services.catalog import Aliases
from pcipass.services.move_disks import disk_access
from pcipass.services.networks import nic_requests
from pcipass.store import Store
from pcipass.store.claims import Decide, NewServer
from pcipass.store.moves import MoveInputs, MoveTarget


class MoveServices:
    """The moving half of :class:`~pcipass.services.Cloud` (a mixin)."""

    store: Store
    settings: Settings
    aliases: Aliases
    policy: WeighPolicy

    def resize_server(self, p: Principal, ref: str, *, flavor: str) -> ServerRecord:
        """Claim the new flavor's devices (on the same host when it fits and the settings
        allow it, else another) and start moving: RESIZE, then VERIFY_RESIZE until
        confirmed or reverted."""
        scope = tenant(p, "resize servers")
        got, kinds = self.store.move_inputs(ref, flavor=flavor, scope=scope)
        refuse_baremetal(self.store, got.server, "resize")
        if is_baremetal(got.flavor):
            raise Conflict(f"flavor {got.flavor.name} asks for a whole bare-metal machine: a "
                           "server on a hypervisor cannot be resized to it", field="flavor",
                           code=BAREMETAL_SERVER)
        if got.flavor.name == got.server.flavor:
            raise InvalidInput(f"server {got.server.name} has flavor {got.flavor.name} "
                               "already: resize to another one", field="flavor")
        exclude = frozenset() if self.settings.scheduler.resize_same_host else frozenset(
            {got.host_id})
        return self._move(got, kinds, MoveKind.RESIZE, exclude=exclude, only=None,
                          auto_confirm=False)

    def migrate_server(self, p: Principal, ref: str, *, host: str | None = None,
                       auto_confirm: bool = False) -> ServerRecord:
        """Claim the server's devices again on another host (``host``, when named) and
        start moving: MIGRATING, then VERIFY_RESIZE unless ``auto_confirm``."""
        admin(p, "migrate servers")
        got, kinds = self.store.move_inputs(ref)
        refuse_baremetal(self.store, got.server, "migrate")
        only = None if host is None else destination(self.store, got, host, "migration")
        return self._move(got, kinds, MoveKind.MIGRATE, exclude=frozenset({got.host_id}),
                          only=only, auto_confirm=bool(auto_confirm))

    def confirm_resize(self, p: Principal, ref: str) -> ServerRecord:
        """Keep the destination: ACTIVE there; the source's devices are freed once its host
        has destroyed what it kept."""
        server = self.store.get_server(ref, project=tenant(p, "confirm resizes"))
        return self.store.confirm_move(server.id)

    def revert_resize(self, p: Principal, ref: str) -> ServerRecord:
        """Go back to the source: the destination's devices are freed, the server restarted
        on the source with its old flavor."""
        server = self.store.get_server(ref, project=tenant(p, "revert resizes"))
        return self.store.revert_move(server.id)

    def move_disk(self, p: Principal, move_id: str, *, upload: bool) -> MoveRecord:
        """The move whose boot disk ``p`` hands over (:func:`move_disks.disk_access`)."""
        if p.role not in (Role.ADMIN, Role.AGENT):
            raise Forbidden(f"a {p.role.value} token may not hand a move's disk over")
        try:
            number = int(move_id)
        except ValueError:
            raise NotFound(f"move {move_id!r} not found", field="move") from None
        move = self.store.get_move(number)
        disk_access(p, move, upload=upload)
        return move

    def server_moves(self, p: Principal, ref: str) -> tuple[MoveRecord, ...]:
        server = self.store.get_server(ref, project=tenant(p, "read servers"))
        return self.store.list_moves(server.id)

    def _move(self, got: MoveInputs, kinds: Mapping[int, PciDevice], kind: MoveKind, *,
              exclude: frozenset[int], only: int | None, auto_confirm: bool) -> ServerRecord:
        server, fl, im = got.server, got.flavor, got.image
        req = boot_request(fl, im, self.aliases.combine(got.alias_entries))
        req, dropped = quota_trim(req, server.project, got.limits, got.held)
        nics = self.store.list_ports(server=server.id)
        policy = pci_numa_policy(fl.extra_specs, im.properties, image=im.name or None)
        req = replace(req, pci=(*req.pci, *nic_requests(nics, policy)))
        target = MoveTarget(
            kind=kind, flavor_id=fl.id, flavor_name=fl.name, vcpus=fl.vcpus,
            ram_mb=fl.ram_mb,
            requests=tuple((r.alias, r.count, r.soft) for r in (*req.pci, *dropped)),
            not_granted=tuple(str(r) for r in dropped),
            flavor={"name": fl.name, "vcpus": fl.vcpus, "ram_mb": fl.ram_mb,
                    "disk_gb": fl.disk_gb, "extra_specs": dict(fl.extra_specs)},
            image={"name": im.name, "source": im.source, "properties": dict(im.properties)},
            auto_confirm=auto_confirm, quotas=bool(got.limits))

        def claimer(host_id: int, decide: Decide, accept: Callable[[Fit], bool] | None
                    ) -> ServerRecord | Fit | NoFit:
            return self.store.claim_move(server.id, target, host_id, decide, accept=accept)

        placer = Placer(self.store, self.policy, self.settings.scheduler.max_attempts,
                        self.settings.scheduler.candidates, claimer=claimer, exclude=exclude,
                        only=only)
        stub = NewServer(id=server.id, name=server.name, project=server.project,
                         flavor_id=fl.id, flavor_name=fl.name, image_id=im.id,
                         image_name=im.name, vcpus=fl.vcpus, ram_mb=fl.ram_mb)
        found, fault = placer.search(stub, req, kinds)
        if found is not None:
            return found
        action = kind.action
        self.store.record_move_refusal(server.id, action, fault)
        raise Conflict(f"cannot {action.replace('_', '-')} server {server.name}: {fault}",
                       field="flavor" if kind is MoveKind.RESIZE else "host",
                       code="no_valid_host")



def destination(store: Store, got: MoveInputs, host: str, what: str) -> int:
    """The id of the host an admin named for a migration (``what``); 409 ``same_host`` when
    the server runs there already, 404 when there is no such host."""
    found = store.host_id(host)
    if found == got.host_id:
        raise Conflict(f"server {got.server.name} runs on host {host} already: a {what} "
                       "needs another host", field="host", code="same_host")
    return found
