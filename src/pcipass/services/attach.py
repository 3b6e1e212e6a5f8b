"""Hot attach and detach on a running server: the services behind
``/v1/servers/{ref}/devices`` and ``/v1/servers/{ref}/interfaces``.

Who may: the server's project (a member of another project gets NotFound, as for any of its
servers) and admins. The server must be ACTIVE; it stays ACTIVE throughout.

- attach a device: ``count`` devices of an alias, from the server's own host, judged by
  ``sched.fit`` with the guest's NUMA cells pinned (the alias's NUMA policy decides whether a
  device on another node will do) and no vCPUs or RAM asked; the project's quota checked in
  the claim. A host with none free is a 409 ``no_free_device`` naming the host and why, in
  the scheduler's words: the server is never moved.
- attach an interface: ``{"net_id", "vnic_type"}`` (a port made for the server, deleted when
  detached) or ``{"port_id"}`` (an existing port of the project, attached to no server); the
  port's VF (or PF) is claimed on the server's host as a boot's would be.
- detach: queued for the host's agent; what it frees is freed when the agent confirms.

See :mod:`pcipass.store.attach` for the transactions and the task payloads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from pcipass.config import Settings
from pcipass.errors import (
    AliasNotSupportedByImage,
    Conflict,
    InvalidInput,
    NotFound,
    PcipassError,
)
from pcipass.pci.address import PciAddress
from pcipass.pci.request import IMAGE_SUPPORTED_ALIASES, PciRequest, supported_aliases
from pcipass.records import PortRecord, Principal, ServerRecord
from pcipass.sched.fit import Fit, NoFit, fit
from pcipass.sched.snapshot import BootRequest, HostView
from pcipass.services.access import tenant
from pcipass.services.baremetal import refuse_baremetal
from pcipass.services.catalog import Aliases
from pcipass.services.networks import NetworkServices, nic_requests
from pcipass.store import Store
from pcipass.store.attach import DeviceAttach, PortAttach, Refused
from pcipass.store.networks import NewPort

MAX_COUNT = 16   # devices one attach may ask for


def pinned(view: HostView, cells: Sequence[int]) -> HostView:
    """The host as an attach sees it: only the guest's own NUMA nodes to place on, with
    nothing more asked of them (the server holds its vCPUs and RAM already)."""
    keep = set(cells)
    return replace(view, free_vcpus=max(view.free_vcpus, 0),
                   free_ram_mb=max(view.free_ram_mb, 0),
                   numa=tuple(replace(c, free_cpus=max(c.free_cpus, 0),
                                      free_ram_mb=max(c.free_ram_mb, 0))
                              for c in view.numa if c.id in keep))


def attach_request(cells: Sequence[int], requests: Sequence[PciRequest]) -> BootRequest:
    """The demand of an attach: the devices alone, on the guest's NUMA cells."""
    return BootRequest(0, 0, len(cells) or None, tuple(requests))


def judge(view: HostView, cells: Sequence[int], requests: Sequence[PciRequest]
          ) -> Fit | NoFit:
    return fit(pinned(view, cells), attach_request(cells, requests))


def refusal(server: ServerRecord, what: str, refused: Refused) -> PcipassError:
    """The error an attach refused by its host (409 ``no_free_device``) or quota raises."""
    if refused.quota is not None:
        return refused.quota
    assert refused.verdict is not None
    return Conflict(f"cannot attach {what} to server {server.name}: host {refused.verdict} "
                    f"(a server is never moved to attach a device)", field="server",
                    code="no_free_device")


def _field(exc: PcipassError) -> PcipassError:
    """A NIC error as the attach body names it (``net_id``, not ``nics[0].net_id``)."""
    if exc.field is None or not exc.field.startswith("nics[0]"):
        return exc
    return type(exc)(exc.message.replace("nics[0]", "the interface"),
                     field=exc.field.removeprefix("nics[0]").lstrip(".") or None,
                     code=exc.code)


class AttachServices(NetworkServices):
    """The hot-plug half of :class:`~pcipass.services.Cloud` (a mixin)."""

    store: Store
    settings: Settings
    aliases: Aliases

    def _server(self, p: Principal, ref: str, what: str) -> ServerRecord:
        """The server to hot-plug on; a bare-metal one is a 409 ``baremetal_server``."""
        server = self.store.get_server(ref, project=tenant(p, what))
        refuse_baremetal(self.store, server, what)
        return server

    def attach_device(self, p: Principal, ref: str, *, alias: str, count: int = 1
                      ) -> ServerRecord:
        """Claim ``count`` devices of ``alias`` on the server's host and queue their
        hot-plug; the devices show ``claimed`` until the host confirms (``allocated``)."""
        server = self._server(p, ref, "attach devices")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise InvalidInput(f"count must be a whole number from 1 to {MAX_COUNT}",
                               field="count")
        found = self.aliases.get(alias)
        self._image_drives(server, found.name)
        request = PciRequest(alias=found.name, count=count, alternatives=found.entries,
                             numa_policy=found.numa_policy)

        def decide(view: HostView, cells: tuple[int, ...], _ports: Sequence[PortRecord]
                   ) -> Fit | NoFit:
            return judge(view, cells, [request])

        got = self.store.attach(server.id, DeviceAttach(found.name, count), decide,
                                mac_prefix=self.settings.network.mac_prefix)
        if isinstance(got, Refused):
            raise refusal(server, str(request), got)
        return got

    def _image_drives(self, server: ServerRecord, alias: str) -> None:
        """Refuse, as a boot would, an alias the server's image says its guest cannot drive."""
        try:
            image = self.store.get_image(server.image, project=server.project)
        except NotFound:
            return  # the image is gone: nothing is left to say what the guest drives
        supported = supported_aliases(image.properties, image=image.name)
        if supported is not None and alias not in supported:
            listed = ", ".join(sorted(supported)) or "none"
            raise AliasNotSupportedByImage(
                f"image {image.name!r} of server {server.name} does not support PCI alias "
                f"{alias!r} ({IMAGE_SUPPORTED_ALIASES}: {listed})", field="alias")

    def detach_device(self, p: Principal, ref: str, *, address: str) -> ServerRecord:
        """Queue the unplug of a device the server holds (with the rest of its IOMMU unit);
        it is freed when the host confirms."""
        server = self._server(p, ref, "detach devices")
        return self.store.detach_device(server.id, PciAddress.parse(address, field="address"))

    def attach_interface(self, p: Principal, ref: str, nic: Mapping[str, object]
                         ) -> ServerRecord:
        """``nic``: ``{"net_id", "vnic_type"}`` or ``{"port_id"}``, as a boot's NIC."""
        server = self._server(p, ref, "attach interfaces")
        try:
            (resolved,) = self.resolve_nics(p, server.project, [nic])
        except PcipassError as exc:
            raise _field(exc) from None
        if resolved.network is not None:
            what = PortAttach(new=NewPort(network_id=resolved.network.id,
                                          vnic_type=resolved.vnic_type.value,
                                          name=f"{server.name}-nic{len(server.ports)}"))
        else:
            assert resolved.port is not None
            what = PortAttach(port_id=resolved.port.id)

        def decide(view: HostView, cells: tuple[int, ...], ports: Sequence[PortRecord]
                   ) -> Fit | NoFit:
            return judge(view, cells, nic_requests(ports, None))

        got = self.store.attach(server.id, what, decide,
                                mac_prefix=self.settings.network.mac_prefix)
        if isinstance(got, Refused):
            shown = (f"a {resolved.vnic_type.value} port on network "
                     f"{resolved.network.name!r}" if resolved.network is not None
                     else f"port {nic.get('port_id')!r}")
            raise refusal(server, shown, got)
        return got

    def detach_interface(self, p: Principal, ref: str, *, port: str) -> ServerRecord:
        """Queue the unplug of one of the server's ports (by id or name)."""
        scope = tenant(p, "detach interfaces")
        server = self.store.get_server(ref, project=scope)
        refuse_baremetal(self.store, server, "detach interfaces")
        return self.store.detach_port(server.id, port, project=scope)
