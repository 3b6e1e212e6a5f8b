"""Networks, ports and a boot's NICs: the services behind ``/v1/networks`` and ``/v1/ports``.

Who may do what:

- networks: an admin creates and deletes them, shared (``project`` null) or for one project;
  everyone lists and reads them, a member only the shared ones and its own project's;
- ports: a member creates them in its own project on a network it sees, an admin in any
  project (on a network that project sees); ``trusted: true`` is an admin's call alone (a
  trusted VF lets the guest change its MAC and go promiscuous); a member lists, reads and
  deletes its own project's ports only.

A member never learns that another project's network or port exists: NotFound, not Forbidden.

A boot's NICs (``{"net_id": ref, "vnic_type": ...}`` or ``{"port_id": ref}``) are resolved by
:func:`resolve_nics` before anything is written; :meth:`NetworkServices.nic_requests` turns
the ports a boot holds into PCI requests (:func:`pcipass.net.port.port_request`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pcipass.config import Settings
from pcipass.errors import Conflict, InvalidInput, NotFound
from pcipass.net.port import (
    VnicType,
    check_rate,
    check_segmentation,
    parse_mac,
    parse_numa_policy,
    parse_physnet,
    parse_vnic_type,
    port_request,
)
from pcipass.pci.alias import NumaPolicy
from pcipass.pci.request import PciRequest
from pcipass.records import NetworkRecord, PortRecord, Principal
from pcipass.services import catalog
from pcipass.services.access import ADMIN_PROJECT, acting_project, admin, tenant
from pcipass.store import Store
from pcipass.store.networks import NewPort


@dataclass(frozen=True, slots=True)
class Nic:
    """One NIC of a boot, resolved: a port to create on ``network``, or an existing port."""

    network: NetworkRecord | None = None
    vnic_type: VnicType = VnicType.NORMAL
    port: PortRecord | None = None


def _nic_ref(nic: Mapping[str, object], key: str, field: str) -> str | None:
    value = nic.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field} must be a network or port name or id", field=field)
    return value


def parse_nic(nic: object, i: int) -> tuple[str | None, str | None, VnicType]:
    """``(net_id, port_id, vnic_type)`` of ``nics[i]``: exactly one of the first two."""
    where = f"nics[{i}]"
    if not isinstance(nic, Mapping):
        raise InvalidInput(f"{where} must be an object with net_id or port_id", field=where)
    unknown = sorted(set(nic) - {"net_id", "port_id", "vnic_type"})
    if unknown:
        raise InvalidInput(f"{where} has unknown key {unknown[0]!r} (net_id, port_id, "
                           "vnic_type)", field=f"{where}.{unknown[0]}")
    net = _nic_ref(nic, "net_id", f"{where}.net_id")
    port = _nic_ref(nic, "port_id", f"{where}.port_id")
    if (net is None) == (port is None):
        raise InvalidInput(f"{where} needs exactly one of net_id and port_id",
                           field=f"{where}.net_id")
    raw_type = nic.get("vnic_type")
    if port is not None and raw_type is not None:
        raise InvalidInput(f"{where}: a port's vnic type is the port's own; give vnic_type "
                           "only with net_id", field=f"{where}.vnic_type")
    kind = (VnicType.NORMAL if raw_type is None
            else parse_vnic_type(raw_type, field=f"{where}.vnic_type"))
    return net, port, kind


class NetworkServices:
    """The networks and ports half of :class:`~pcipass.services.Cloud` (a mixin)."""

    store: Store
    settings: Settings

    # --- networks ---------------------------------------------------------------------

    def create_network(self, p: Principal, *, name: str, physical_network: str,
                       segmentation: str, segmentation_id: int | None = None,
                       project: str | None = None) -> NetworkRecord:
        """``project`` None: shared with every project."""
        admin(p, "create networks")
        catalog.check_name(name, "network")
        physnet = parse_physnet(physical_network)
        if project is not None:
            catalog.check_name(project, "project", "project")
        seg, seg_id = check_segmentation(segmentation, segmentation_id)
        return self.store.create_network(name=name, project=project,
                                         physical_network=physnet,
                                         segmentation=seg.value, segmentation_id=seg_id)

    def list_networks(self, p: Principal) -> tuple[NetworkRecord, ...]:
        return self.store.list_networks(project=tenant(p, "list networks"))

    def get_network(self, p: Principal, ref: str) -> NetworkRecord:
        return self.store.get_network(ref, project=tenant(p, "read networks"))

    def delete_network(self, p: Principal, ref: str) -> None:
        """Refused (network_in_use) while a server holds a port on it; its free ports go
        with it."""
        admin(p, "delete networks")
        self.store.delete_network(ref)

    # --- ports ------------------------------------------------------------------------

    def create_port(self, p: Principal, *, network: str, name: str | None = None,
                    vnic_type: str = VnicType.NORMAL.value, mac: str | None = None,
                    trusted: bool = False, spoofchk: bool = True,
                    max_tx_rate_mbps: int | None = None, min_tx_rate_mbps: int | None = None,
                    numa_affinity_policy: str | None = None,
                    project: str | None = None) -> PortRecord:
        """A port in the caller's project (an admin's: ``project``, else its own) on a
        network that project sees; unbound until a server boots with it."""
        proj = acting_project(p, project, "create ports", admin_default=ADMIN_PROJECT)
        assert proj is not None
        if name is not None:
            catalog.check_name(name, "port")
        catalog.check_name(proj, "project", "project")
        kind = parse_vnic_type(vnic_type)
        address = parse_mac(mac, field="mac") if mac is not None else None
        if not isinstance(trusted, bool):
            raise InvalidInput("trusted must be true or false", field="trusted")
        if not isinstance(spoofchk, bool):
            raise InvalidInput("spoofchk must be true or false", field="spoofchk")
        if trusted:
            admin(p, "create trusted ports (a trusted VF's guest may change its MAC and go "
                  "promiscuous)", field="trusted")
        top, bottom = check_rate(max_tx_rate_mbps, min_tx_rate_mbps)
        policy = parse_numa_policy(numa_affinity_policy)
        net = self._visible_network(network, proj, "network")
        return self.store.create_port(
            project=proj, network_id=net.id, name=name, vnic_type=kind.value, mac=address,
            mac_prefix=self.settings.network.mac_prefix, trusted=trusted, spoofchk=spoofchk,
            max_tx_rate_mbps=top, min_tx_rate_mbps=bottom,
            numa_affinity_policy=policy.value if policy is not None else None)

    def list_ports(self, p: Principal, *, network: str | None = None,
                   server: str | None = None, project: str | None = None
                   ) -> tuple[PortRecord, ...]:
        """``network`` and ``server`` by name or id; a member sees its own project's."""
        scope = acting_project(p, project, "list ports")
        net_id = (self._visible_network(network, scope, "network").id
                  if network is not None else None)
        server_id = (self.store.get_server(server, project=scope).id
                     if server is not None else None)
        return self.store.list_ports(project=scope, network=net_id, server=server_id)

    def get_port(self, p: Principal, ref: str) -> PortRecord:
        return self.store.get_port(ref, project=tenant(p, "read ports"))

    def delete_port(self, p: Principal, ref: str) -> None:
        """Refused (port_in_use) while a server holds it: delete the server first."""
        self.store.delete_port(ref, project=tenant(p, "delete ports"))

    def _visible_network(self, ref: str, project: str | None, field: str) -> NetworkRecord:
        try:
            return self.store.get_network(ref, project=project)
        except NotFound as exc:
            raise NotFound(exc.message, field=field, code=exc.code) from None

    # --- a boot's NICs ----------------------------------------------------------------

    def resolve_nics(self, p: Principal, project: str | None, nics: Sequence[object]
                     ) -> list[Nic]:
        """Each NIC's network (visible to ``project``) or port (``project``'s, attached to
        no server), in order; nothing is written. ``project`` None (an admin's
        explanation): any network, any project's port."""
        if isinstance(nics, (str, bytes)) or not isinstance(nics, Sequence):
            raise InvalidInput("nics must be a list", field="nics")
        scope = tenant(p, "boot with NICs")
        out: list[Nic] = []
        seen: set[str] = set()
        for i, nic in enumerate(nics):
            net_ref, port_ref, kind = parse_nic(nic, i)
            if net_ref is not None:
                net = self._visible_network(net_ref, project, f"nics[{i}].net_id")
                out.append(Nic(network=net, vnic_type=kind))
                continue
            assert port_ref is not None
            field = f"nics[{i}].port_id"
            try:
                port = self.store.get_port(port_ref, project=scope)
            except NotFound as exc:
                raise NotFound(exc.message, field=field, code=exc.code) from None
            if project is not None and port.project != project:
                # An admin booting for one project with another project's port.
                raise InvalidInput(f"port {port_ref!r} belongs to project {port.project}, "
                                   f"not {project}", field=field)
            if port.server_id is not None:
                raise Conflict(f"port {port_ref!r} is in use by server {port.server_id}",
                               field=field, code="port_in_use")
            if port.id in seen:
                raise InvalidInput(f"port {port_ref!r} is given twice", field=field)
            seen.add(port.id)
            out.append(Nic(port=port))
        return out

    def prepare_nics(self, server_id: str, server_name: str, project: str,
                     nics: Sequence[Nic]) -> tuple[PortRecord, ...]:
        """The boot's ports, created (named SERVER-nicN) or attached to ``server_id`` in one
        transaction, in the order of ``nics``."""
        if not nics:
            return ()
        new = [NewPort(network_id=n.network.id, vnic_type=n.vnic_type.value,
                       name=f"{server_name}-nic{i}")
               for i, n in enumerate(nics) if n.network is not None]
        existing = [n.port.id for n in nics if n.port is not None]
        got = self.store.prepare_ports(server_id, project, new, existing,
                                       mac_prefix=self.settings.network.mac_prefix)
        # The store answers new ports first; the guest's NICs keep the order asked for.
        made, taken = iter(got[:len(new)]), iter(got[len(new):])
        return tuple(next(made) if n.network is not None else next(taken) for n in nics)


def nic_requests(ports: Sequence[PortRecord], flavor_policy: NumaPolicy | None
                 ) -> tuple[PciRequest, ...]:
    """The PCI request of each SR-IOV port (none for a normal one), the port's own NUMA
    policy before the flavor's or image's."""
    out: list[PciRequest] = []
    for port in ports:
        req = port_request(port_id=port.id, port_name=port.name,
                           vnic_type=VnicType(port.vnic_type), physnet=port.physical_network,
                           trusted=port.trusted,
                           numa_policy=parse_numa_policy(port.numa_affinity_policy),
                           flavor_policy=flavor_policy)
        if req is not None:
            out.append(req)
    return tuple(out)


def planned_requests(nics: Sequence[Nic], flavor_policy: NumaPolicy | None
                     ) -> tuple[PciRequest, ...]:
    """For an explanation: the requests the NICs' ports would make, without creating any
    (a NIC's would-be port is named ``nics[i]``)."""
    out: list[PciRequest] = []
    for i, nic in enumerate(nics):
        if nic.port is not None:
            out.extend(nic_requests([nic.port], flavor_policy))
            continue
        assert nic.network is not None
        req = port_request(port_id=f"nics[{i}]", port_name=f"nics[{i}]",
                           vnic_type=nic.vnic_type, physnet=nic.network.physical_network,
                           trusted=False, numa_policy=None, flavor_policy=flavor_policy)
        if req is not None:
            out.append(req)
    return tuple(out)
