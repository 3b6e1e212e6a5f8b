"""The :class:`Cloud` facade: one method per API use case, the caller's principal first.

Every method checks the caller's role and project itself (:mod:`pcipass.services.access`),
parses its input once, and leaves the writing to the store. ``ref`` parameters take a name
or an id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from pcipass.config import Settings
from pcipass.errors import InvalidInput, NotFound, PcipassError
from pcipass.pci.alias import Alias, NumaPolicy
from pcipass.pci.request import PciRequest, pci_numa_policy
from pcipass.records import (
    EventRecord,
    FlavorRecord,
    HostRecord,
    ImageRecord,
    Page,
    Principal,
    QuotaRecord,
    ServerRecord,
    ServerStatus,
    UsageRecord,
)
from pcipass.sched.snapshot import BootRequest
from pcipass.sched.weigh import WeighPolicy
from pcipass.services import baremetal, catalog, drain
from pcipass.services.access import ADMIN_PROJECT, acting_project, admin, tenant
from pcipass.services.attach import AttachServices
from pcipass.services.boot import Placer, boot_request, quota_trim
from pcipass.services.explain import Explanation, explain_boot
from pcipass.services.live import LiveServices
from pcipass.services.networks import nic_requests, planned_requests
from pcipass.services.tasks import Tasks
from pcipass.store import Store
from pcipass.store.claims import NewServer


class Cloud(AttachServices, LiveServices):
    """Aliases, flavors, images, networks, ports, servers, quotas and usage over one store
    (networks and ports: :class:`~pcipass.services.networks.NetworkServices`; hot attach and
    detach: :class:`~pcipass.services.attach.AttachServices`; resize and migration, cold and
    live: :class:`~pcipass.services.live.LiveServices` over
    :class:`~pcipass.services.moves.MoveServices`)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.aliases = catalog.Aliases(store, settings.pci.alias)
        self.policy = WeighPolicy(settings.scheduler.weigher)
        self.tasks = Tasks(store, settings)

    # --- aliases ------------------------------------------------------------------------

    def create_aliases(self, p: Principal, body: object) -> tuple[Alias, ...]:
        """One Nova alias dict or a list; entries join those of the same name."""
        admin(p, "create aliases")
        return self.aliases.create(body)

    def list_aliases(self, p: Principal) -> tuple[Alias, ...]:
        found = self.aliases.all()
        return tuple(found[n] for n in sorted(found))

    def get_alias(self, p: Principal, name: str) -> Alias:
        return self.aliases.get(name)

    def delete_alias(self, p: Principal, name: str) -> None:
        admin(p, "delete aliases")
        self.aliases.delete(name)

    # --- flavors ------------------------------------------------------------------------

    def create_flavor(self, p: Principal, *, name: str, vcpus: int, ram_mb: int, disk_gb: int,
                      extra_specs: dict[str, str], is_public: bool = True,
                      projects: Sequence[str] = ()) -> FlavorRecord:
        admin(p, "create flavors")
        return catalog.create_flavor(self.store, self.aliases, name=name, vcpus=vcpus,
                                     ram_mb=ram_mb, disk_gb=disk_gb, extra_specs=extra_specs,
                                     is_public=is_public, projects=projects)

    def list_flavors(self, p: Principal) -> tuple[FlavorRecord, ...]:
        return self.store.list_flavors(project=tenant(p, "list flavors"))

    def get_flavor(self, p: Principal, ref: str) -> FlavorRecord:
        return self.store.get_flavor(ref, project=tenant(p, "read flavors"))

    def delete_flavor(self, p: Principal, ref: str) -> None:
        admin(p, "delete flavors")
        self.store.delete_flavor(ref)

    def set_flavor_access(self, p: Principal, ref: str, *, add: Sequence[str] = (),
                          remove: Sequence[str] = ()) -> FlavorRecord:
        admin(p, "change flavor access")
        added = [catalog.check_name(x, "project", "add") for x in add]
        removed = [catalog.check_name(x, "project", "remove") for x in remove]
        return self.store.set_flavor_access(ref, add=added, remove=removed)

    # --- images -------------------------------------------------------------------------

    def create_image(self, p: Principal, *, name: str, source: str,
                     properties: dict[str, str]) -> ImageRecord:
        """An admin's image is public; a member's is private to its project."""
        return catalog.create_image(self.store, name=name, source=source,
                                    properties=properties,
                                    project=tenant(p, "create images"))

    def list_images(self, p: Principal) -> tuple[ImageRecord, ...]:
        return self.store.list_images(project=tenant(p, "list images"))

    def get_image(self, p: Principal, ref: str) -> ImageRecord:
        return self.store.get_image(ref, project=tenant(p, "read images"))

    def delete_image(self, p: Principal, ref: str) -> None:
        self.store.delete_image(ref, project=tenant(p, "delete images"))

    # --- servers ------------------------------------------------------------------------

    def create_server(self, p: Principal, *, name: str, flavor: str, image: str,
                      project: str | None = None,
                      nics: Sequence[Mapping[str, object]] = ()) -> ServerRecord:
        """BUILDING with devices claimed and a spawn task queued, or ERROR saying why no host
        fits. Refused outright (nothing created): an unknown or hidden flavor, image, network
        or port, a port in use, an image that cannot drive an alias asked for, a boot over
        quota.

        ``nics``: ``{"net_id": ref, "vnic_type": "direct"}`` (a port made for the server and
        deleted with it) or ``{"port_id": ref}`` (an existing port, detached again when the
        server goes); an SR-IOV port asks for a VF (a PF for direct-physical) on its
        network's physical network."""
        proj = acting_project(p, project, "create servers", admin_default=ADMIN_PROJECT)
        assert proj is not None
        catalog.check_name(name, "server")
        got = self.store.boot_inputs(flavor, image, scope=tenant(p, "create servers"),
                                     project=proj)
        fl, im = got.flavor, got.image
        req = self._boot_request(fl, im, self.aliases.combine(got.alias_entries))
        req, dropped = quota_trim(req, proj, got.limits, got.held)
        machine = baremetal.is_baremetal(fl)
        if machine:
            baremetal.check_nics(fl, nics)
        resolved = self.resolve_nics(p, proj, nics)
        server_id = str(uuid.uuid4())
        ports = self.prepare_nics(server_id, name, proj, resolved)
        try:
            req = replace(req, pci=(*req.pci, *nic_requests(ports, self._nic_policy(fl, im))))
            server = NewServer(
                id=server_id, name=name, project=proj, flavor_id=fl.id,
                flavor_name=fl.name, image_id=im.id, image_name=im.name, vcpus=fl.vcpus,
                ram_mb=fl.ram_mb,
                requests=tuple((r.alias, r.count, r.soft) for r in (*req.pci, *dropped)),
                not_granted=tuple(str(r) for r in dropped),
                payload={"image": {"name": im.name, "source": im.source,
                                   "properties": dict(im.properties)},
                         "flavor": {"name": fl.name, "vcpus": fl.vcpus, "ram_mb": fl.ram_mb,
                                    "disk_gb": fl.disk_gb,
                                    "extra_specs": dict(fl.extra_specs)}},
                quotas=bool(got.limits), ports=ports, baremetal=machine)
            placer = Placer(self.store, self.policy, self.settings.scheduler.max_attempts,
                            self.settings.scheduler.candidates, baremetal=machine)
            return placer.place(server, req, got.kinds)
        except Exception:
            if ports:
                self._release_unplaced(server_id)
            raise

    def _release_unplaced(self, server_id: str) -> None:
        """A boot refused after its ports were prepared: give them back, unless the server
        row was written (then its delete releases them)."""
        try:
            self.store.get_server(server_id)
        except NotFound:
            self.store.release_ports(server_id)
        except PcipassError:
            pass   # the database is failing: the sweeper's business, not this reply's

    @staticmethod
    def _nic_policy(fl: FlavorRecord, im: ImageRecord) -> NumaPolicy | None:
        """The flavor's or image's PCI NUMA policy, which ports without their own follow."""
        return pci_numa_policy(fl.extra_specs, im.properties, image=im.name or None)

    @staticmethod
    def _boot_request(fl: FlavorRecord, im: ImageRecord, aliases: Mapping[str, Alias]
                      ) -> BootRequest:
        return boot_request(fl, im, aliases)

    def _request(self, fl: FlavorRecord, im: ImageRecord, project: str | None
                 ) -> tuple[BootRequest, tuple[PciRequest, ...]]:
        """The boot's demands (and, with a project, the soft ones its quota drops)."""
        req = self._boot_request(fl, im, self.aliases.all())
        if project is None:
            return req, ()
        quotas = self.store.list_quotas(project=project)
        return quota_trim(req, project, {q.alias: q.limit for q in quotas},
                          {q.alias: q.used for q in quotas})

    def list_servers(self, p: Principal, *, host: str | None = None,
                     status: ServerStatus | None = None, project: str | None = None,
                     limit: int = 100, marker: str | None = None) -> Page[ServerRecord]:
        scope = acting_project(p, project, "list servers")
        return self.store.list_servers(project=scope, host=host, status=status, limit=limit,
                                       marker=marker)

    def get_server(self, p: Principal, ref: str) -> ServerRecord:
        return self.store.get_server(ref, project=tenant(p, "read servers"))

    def server_events(self, p: Principal, ref: str) -> tuple[EventRecord, ...]:
        """The server's action log, oldest first; another project's server is NotFound."""
        return self.store.server_events(ref, project=tenant(p, "read servers"))

    # --- draining hosts (admins) ----------------------------------------------------------

    def reserve_host(self, p: Principal, host: str, reserved: bool,
                     reason: str | None = None) -> HostRecord:
        return drain.reserve_host(self.store, p, host, reserved, reason)

    def drain_host(self, p: Principal, host: str) -> drain.DrainReport:
        return drain.drain_report(self.store, p, host, self.aliases.all())

    def delete_server(self, p: Principal, ref: str, *, force: bool = False) -> ServerRecord:
        """Hand the server to its host to destroy (see :meth:`Tasks.delete_server`)."""
        return self.tasks.delete_server(p, ref, force=force)

    # --- scheduler ----------------------------------------------------------------------

    def explain(self, p: Principal, *, flavor: str, image: str | None = None,
                project: str | None = None,
                nics: Sequence[Mapping[str, object]] = ()) -> Explanation:
        """Would a boot of this flavor (and image, and NICs) fit now, where, and why not
        elsewhere. With ``project``: as that project would boot it (its private flavors,
        images and networks, its quotas: a soft request they cannot cover is left out, a
        hard one refused). No port is created: a NIC's would-be port is named ``nics[i]``."""
        admin(p, "ask the scheduler to explain")
        fl = self.store.get_flavor(flavor, project=project)
        im = (self.store.get_image(image, project=project) if image is not None
              else ImageRecord(id="", name="", source="", properties={}))
        req, _dropped = self._request(fl, im, project)
        machine = baremetal.is_baremetal(fl)
        if machine:
            baremetal.check_nics(fl, nics)
        if nics:
            resolved = self.resolve_nics(p, project, nics)
            req = replace(req, pci=(*req.pci, *planned_requests(
                resolved, self._nic_policy(fl, im))))
        return explain_boot(self.store, req, self.policy, baremetal=machine)

    # --- quotas and usage ---------------------------------------------------------------

    def set_quota(self, p: Principal, *, project: str, alias: str, limit: int) -> QuotaRecord:
        admin(p, "set quotas")
        catalog.check_name(project, "project", "project")
        if alias not in self.aliases.all():
            raise NotFound(f"alias {alias!r} not found", field="alias")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidInput("a quota limit is a whole number of devices, 0 or more",
                               field="limit")
        return self.store.set_quota(project, alias, limit)

    def list_quotas(self, p: Principal, *, project: str | None = None
                    ) -> tuple[QuotaRecord, ...]:
        return self.store.list_quotas(project=acting_project(p, project, "read quotas"))

    def delete_quota(self, p: Principal, *, project: str, alias: str) -> None:
        admin(p, "delete quotas")
        self.store.delete_quota(project, alias)

    def usage(self, p: Principal, *, project: str | None, start: datetime,
              end: datetime) -> tuple[UsageRecord, ...]:
        """Device-seconds per project and alias within [start, end]."""
        scope = acting_project(p, project, "read usage")
        if start.tzinfo is None or end.tzinfo is None:
            raise InvalidInput("start and end need a time zone", field="start")
        if end <= start:
            raise InvalidInput("end must be after start", field="end")
        return self.store.usage(project=scope, start=start, end=end)

    # --- for the agent (issue 4) ----------------------------------------------------------

    def complete_spawn(self, server_id: str) -> ServerRecord:
        """The host started the server: devices allocated, ACTIVE, metering starts."""
        return self.store.complete_spawn(server_id)

    def fail_spawn(self, server_id: str, message: str) -> ServerRecord:
        """The host could not start it: claims freed, ERROR with ``message`` as the fault."""
        return self.store.fail_spawn(server_id, message)
