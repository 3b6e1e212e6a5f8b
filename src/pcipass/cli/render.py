"""Rich tables for people; ``--json`` bypasses all of this.

Each function takes plain values (an :class:`Inventory`, records) and returns a renderable,
so what a table shows is decided in one place and printing stays in the commands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from pcipass.pci.alias import Alias, AliasEntry, alias_entry_to_json
from pcipass.pci.device import PciDevice
from pcipass.pci.inventory import Inventory
from pcipass.pci.request import ALIAS_PREFERRED_SPEC, ALIAS_SPEC
from pcipass.records import (
    DeviceRecord,
    DeviceState,
    EventRecord,
    FlavorRecord,
    HostRecord,
    ImageRecord,
    NetworkRecord,
    PoolRecord,
    PortRecord,
    QuotaRecord,
    ServerRecord,
    ServerStatus,
    UsageRecord,
)

_DEV_TYPE_SHORT = {"type-PCI": "PCI", "type-PF": "PF", "type-VF": "VF"}

_STATE_STYLE = {
    DeviceState.AVAILABLE: "green",
    DeviceState.CLAIMED: "yellow",
    DeviceState.ALLOCATED: "cyan",
    DeviceState.UNAVAILABLE: "dim",
    DeviceState.REMOVED: "red",
    DeviceState.RESERVED: "magenta",
}


def _opt(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def tags_text(tags: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items())) or "-"


def dev_type_text(dev_type: str) -> str:
    return _DEV_TYPE_SHORT.get(dev_type, dev_type)


def ids_text(vendor_id: str, product_id: str) -> str:
    return f"{vendor_id}:{product_id}"


def _cpus_text(cpus: Sequence[int]) -> str:
    """``0-3,8-11``: the kernel's cpulist form."""
    out: list[str] = []
    ordered = sorted(cpus)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out) or "-"


# --- discovery ------------------------------------------------------------------------------

def inventory_view(inv: Inventory) -> RenderableType:
    host = inv.host
    nodes = ", ".join(f"node{n.id}: cpus {_cpus_text(n.cpus)}, {n.memory_mb} MiB"
                      for n in host.numa_nodes) or "none reported"
    assignable = sum(1 for d in inv.devices if d.assignable)
    summary = Text(
        f"host {_opt(host.hostname)}: {host.cpus} CPUs, {host.memory_mb} MiB, NUMA {nodes}; "
        f"{len(inv.devices)} PCI functions, {assignable} assignable"
    )
    table = Table(title="PCI devices", title_justify="left", show_lines=False)
    for name in ("address", "ids", "type", "parent", "NUMA", "group", "driver", "netdevs",
                 "name", "assignable", "tags"):
        table.add_column(name, overflow="fold", no_wrap=name in ("address", "ids"))
    for d in inv.devices:
        table.add_row(
            str(d.address), ids_text(d.vendor_id, d.product_id), dev_type_text(d.dev_type.value),
            _opt(d.parent_addr), _opt(d.numa_node), _opt(d.iommu_group), _opt(d.driver),
            ",".join(d.devnames) or "-", _opt(d.name),
            Text("yes", style="green") if d.assignable else Text("no", style="dim"),
            tags_text(d.tags),
        )
    parts: list[RenderableType] = [summary, table]
    warnings = _warnings(inv.devices)
    if warnings:
        parts.append(warnings)
    return Group(*parts)


def _warnings(devices: Iterable[PciDevice]) -> Text | None:
    lines = [f"  {d.address}: {w}" for d in devices for w in d.warnings]
    if not lines:
        return None
    text = Text("warnings:\n", style="yellow")
    text.append("\n".join(lines))
    return text


# --- control plane -----------------------------------------------------------------------

def _counts_text(counts: Mapping[str, int]) -> str:
    parts = [f"{state}={n}" for state, n in sorted(counts.items()) if state != "total" and n]
    return ", ".join(parts) or "-"


def hosts_table(hosts: Sequence[HostRecord], *, title: str = "Hosts") -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("host", "kind", "generation", "CPUs", "memory MiB", "NUMA", "devices",
                 "by state", "last report", "agent", "reserved"):
        table.add_column(name, overflow="fold", no_wrap=name == "host")
    for h in hosts:
        table.add_row(
            h.name, h.info.kind.value, str(h.generation), str(h.info.cpus),
            str(h.info.memory_mb),
            str(len(h.info.numa_nodes)), str(h.device_counts.get("total", 0)),
            _counts_text(h.device_counts),
            h.last_report_at.isoformat(timespec="seconds") if h.last_report_at else "never",
            agent_text(h), reserved_text(h),
        )
    return table


def agent_text(h: HostRecord) -> str:
    return "down (silent)" if h.down else "up"


def reserved_text(h: HostRecord) -> str:
    """``no``, or ``yes (draining)`` with the admin's reason."""
    if not h.reserved:
        return "no"
    return "yes (draining)" + (f": {h.reserved_reason}" if h.reserved_reason else "")


def host_view(h: HostRecord) -> RenderableType:
    table = _kv_table(f"Host {h.name}", [
        ("kind", h.info.kind.value),
        ("generation", str(h.generation)),
        ("CPUs", str(h.info.cpus)),
        ("memory MiB", str(h.info.memory_mb)),
        ("last report", h.last_report_at.isoformat() if h.last_report_at else "never"),
        ("devices", str(h.device_counts.get("total", 0))),
        ("by state", _counts_text(h.device_counts)),
        ("agent", agent_text(h)),
        ("reserved", reserved_text(h)),
    ])
    nodes = Table(title="NUMA nodes", title_justify="left")
    for name in ("node", "CPUs", "memory MiB"):
        nodes.add_column(name)
    for n in h.info.numa_nodes:
        nodes.add_row(str(n.id), _cpus_text(n.cpus), str(n.memory_mb))
    return Group(table, nodes)


def devices_table(records: Sequence[DeviceRecord], *, title: str = "Devices") -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("host", "address", "ids", "type", "parent", "NUMA", "group", "driver", "state",
                 "owner", "tags", "name"):
        table.add_column(name, overflow="fold", no_wrap=name in ("host", "address", "ids"))
    for r in records:
        d = r.device
        state = Text(r.state.value, style=_STATE_STYLE.get(r.state, ""))
        if r.reserved and r.state is not DeviceState.RESERVED:
            state.append(" (reserved)", style="magenta")
        table.add_row(
            r.host, str(d.address), ids_text(d.vendor_id, d.product_id),
            dev_type_text(d.dev_type.value), _opt(d.parent_addr), _opt(d.numa_node),
            _opt(d.iommu_group), _opt(d.driver), state, _opt(r.owner), tags_text(d.tags),
            _opt(d.name),
        )
    return table


def device_view(r: DeviceRecord) -> RenderableType:
    d = r.device
    rows = [
        ("host", r.host),
        ("address", str(d.address)),
        ("name", _opt(d.name)),
        ("vendor:product", ids_text(d.vendor_id, d.product_id)),
        ("subsystem", ids_text(d.subsystem_vendor_id or "-", d.subsystem_product_id or "-")),
        ("class", d.class_code),
        ("type", d.dev_type.value),
        ("parent", _opt(d.parent_addr)),
        ("VF index", _opt(d.vf_index)),
        ("VFs", f"{d.num_vfs}/{d.total_vfs}" if d.total_vfs is not None else "-"),
        ("NUMA node", _opt(d.numa_node)),
        ("IOMMU group", _opt(d.iommu_group)),
        ("group members", ", ".join(str(a) for a in d.iommu_group_members) or "-"),
        ("driver", _opt(d.driver)),
        ("netdevs", ", ".join(f"{n.name} ({n.mac})" if n.mac else n.name
                              for n in d.netdevs) or "-"),
        ("card serial", _opt(d.card_serial_number)),
        ("assignable", "yes" if d.assignable else "no"),
        ("tags", tags_text(d.tags)),
        ("state", r.state.value),
        ("reserved", "yes" if r.reserved else "no"),
        ("owner", _opt(r.owner)),
        ("reason", _opt(r.reason)),
        ("warnings", "; ".join(d.warnings) or "-"),
    ]
    return _kv_table(f"Device {r.host} {d.address}", rows)


def pools_table(pools: Sequence[PoolRecord], *, title: str = "Pools",
                name_of: Callable[[str, str], str | None] | None = None) -> Table:
    """``name_of`` (e.g. ``PciIds.name``) adds a column naming each pool's device."""
    table = Table(title=title, title_justify="left")
    columns = ["host", "ids", *(["device"] if name_of else []), "type", "NUMA", "parent",
               "tags", "free", "total"]
    for name in columns:
        table.add_column(name, overflow="fold", no_wrap=name in ("host", "ids"),
                         justify="right" if name in ("free", "total") else "left")
    for p in pools:
        device = [_opt(name_of(p.vendor_id, p.product_id))] if name_of else []
        table.add_row(
            p.host, ids_text(p.vendor_id, p.product_id), *device,
            dev_type_text(p.dev_type.value), _opt(p.numa_node), _opt(p.parent_addr),
            tags_text(p.tags),
            Text(str(p.free), style="green" if p.free else "red"), str(p.total),
        )
    return table


def token_view(obj: Mapping[str, Any]) -> RenderableType:
    table = _kv_table("Token created", [
        ("id", _opt(obj.get("id"))),
        ("role", _opt(obj.get("role"))),
        ("project", _opt(obj.get("project"))),
        ("host", _opt(obj.get("host"))),
    ])
    note = Text("Store this token now: it is not shown again.\n", style="yellow")
    token = Text(str(obj.get("token")), style="bold")
    return Group(table, note, token)


# --- catalog: aliases, flavors, images ---------------------------------------------------

_ENTRY_SHOWN_ELSEWHERE = frozenset({"name", "device_type", "numa_policy"})


def alias_entry_text(entry: AliasEntry) -> str:
    """One alternative in a line: ``10de:20f1`` plus whatever else it constrains."""
    obj = alias_entry_to_json(entry)
    parts = []
    if "vendor_id" in obj or "product_id" in obj:
        parts.append(ids_text(obj.pop("vendor_id", "*"), obj.pop("product_id", "*")))
    match = obj.pop("match", {})
    for key, value in obj.items():
        if key not in _ENTRY_SHOWN_ELSEWHERE:
            parts.append(f"{key}={value}")
    for key, value in match.items():
        values = value if isinstance(value, list) else [value]
        parts.append(f"{key}={'|'.join(_value_text(v) for v in values)}")
    return " ".join(parts) or "-"


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def aliases_table(aliases: Sequence[Alias], *, title: str = "PCI aliases") -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("name", "device type", "NUMA policy", "matches (any of)"):
        table.add_column(name, overflow="fold", no_wrap=name == "name")
    for a in aliases:
        table.add_row(a.name, a.dev_type.value if a.dev_type else "any",
                      a.numa_policy.value, "\n".join(alias_entry_text(e) for e in a.entries))
    return table


def alias_view(a: Alias) -> RenderableType:
    return _kv_table(f"Alias {a.name}", [
        ("device type", a.dev_type.value if a.dev_type else "any"),
        ("NUMA policy", a.numa_policy.value),
        *((f"entry {i}", alias_entry_text(e)) for i, e in enumerate(a.entries, start=1)),
    ])


def _access_text(f: FlavorRecord) -> str:
    if f.is_public:
        return "public"
    return f"private: {', '.join(f.projects)}" if f.projects else "private (no project yet)"


def _other_specs(specs: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(specs.items())
                     if k not in (ALIAS_SPEC, ALIAS_PREFERRED_SPEC)) or "-"


def flavors_table(flavors: Sequence[FlavorRecord], *, title: str = "Flavors") -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("name", "id", "vCPUs", "RAM MiB", "disk GB", "PCI devices", "preferred",
                 "other extra specs", "access"):
        table.add_column(name, overflow="fold", no_wrap=name == "name")
    for f in flavors:
        table.add_row(f.name, f.id, str(f.vcpus), str(f.ram_mb), str(f.disk_gb),
                      _opt(f.extra_specs.get(ALIAS_SPEC)),
                      _opt(f.extra_specs.get(ALIAS_PREFERRED_SPEC)),
                      _other_specs(f.extra_specs), _access_text(f))
    return table


def flavor_view(f: FlavorRecord) -> RenderableType:
    return _kv_table(f"Flavor {f.name}", [
        ("id", f.id),
        ("vCPUs", str(f.vcpus)),
        ("RAM MiB", str(f.ram_mb)),
        ("disk GB", str(f.disk_gb)),
        ("access", _access_text(f)),
        *((k, v) for k, v in sorted(f.extra_specs.items())),
    ])


def _owner_text(i: ImageRecord) -> str:
    return "public" if i.project is None else f"project {i.project}"


def images_table(images: Sequence[ImageRecord], *, title: str = "Images") -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("name", "id", "source", "properties", "visibility"):
        table.add_column(name, overflow="fold", no_wrap=name == "name")
    for i in images:
        table.add_row(i.name, i.id, i.source, tags_text(i.properties), _owner_text(i))
    return table


def image_view(i: ImageRecord) -> RenderableType:
    return _kv_table(f"Image {i.name}", [
        ("id", i.id), ("source", i.source), ("visibility", _owner_text(i)),
        *((k, v) for k, v in sorted(i.properties.items())),
    ])


# --- servers, the scheduler, quotas, usage ----------------------------------------------

_STATUS_STYLE = {
    ServerStatus.BUILDING: "yellow",
    ServerStatus.ACTIVE: "green",
    ServerStatus.ERROR: "bold red",
    ServerStatus.DELETING: "dim",
    ServerStatus.DELETED: "dim",
}


def status_text(status: ServerStatus) -> Text:
    return Text(status.value, style=_STATUS_STYLE.get(status, ""))


def server_devices_text(s: ServerRecord) -> str:
    """``2 x a100`` per alias, riders (group mates handed out along) counted apart."""
    counts: dict[str, int] = {}
    for d in s.devices:
        key = d.alias if d.alias is not None else "(group mate)"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} x {alias}" for alias, n in counts.items()) or "-"


def servers_table(servers: Sequence[ServerRecord], *, title: str = "Servers") -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("name", "id", "project", "status", "flavor", "host", "devices", "NUMA",
                 "fault"):
        table.add_column(name, overflow="fold", no_wrap=name in ("name", "status"))
    for s in servers:
        table.add_row(s.name, s.id, s.project, status_text(s.status), s.flavor, _opt(s.host),
                      server_devices_text(s), _nodes_text(s.numa_cells), _opt(s.fault))
    return table


def _nodes_text(nodes: Sequence[int]) -> str:
    return ",".join(str(n) for n in nodes) or "-"


def server_view(s: ServerRecord) -> RenderableType:
    info = _kv_table(f"Server {s.name}", [
        ("id", s.id),
        ("project", s.project),
        ("status", s.status.value),
        ("flavor", s.flavor),
        ("image", s.image),
        ("host", _opt(s.host)),
        ("guest NUMA cells on host nodes", _nodes_text(s.numa_cells)),
        ("not granted", ", ".join(s.not_granted) or "-"),
        ("fault", _opt(s.fault)),
        ("created", s.created_at.isoformat(timespec="seconds")),
        ("updated", s.updated_at.isoformat(timespec="seconds")),
    ])
    parts: list[RenderableType] = [info]
    if not s.devices:
        parts.append(Text("no PCI devices held", style="dim"))
    else:
        devices = Table(title="Devices", title_justify="left")
        for name in ("address", "alias", "state", "ids", "type", "NUMA"):
            devices.add_column(name, overflow="fold", no_wrap=name in ("address", "ids"))
        for d in s.devices:
            devices.add_row(str(d.address), d.alias or "(group mate)",
                            Text(d.state.value, style=_STATE_STYLE.get(d.state, "")),
                            ids_text(d.vendor_id, d.product_id),
                            dev_type_text(d.dev_type.value), _opt(d.numa_node))
        parts.append(devices)
    if s.ports:
        parts.append(ports_table(s.ports, title="Ports", server=False))
    return Group(*parts)


def _detail_text(detail: Mapping[str, Any]) -> str:
    parts = []
    for k, v in detail.items():
        if isinstance(v, list):
            v = ", ".join(str(x.get("address", x)) if isinstance(x, Mapping) else str(x)
                          for x in v) or "-"
        parts.append(f"{k}={v}")
    return "; ".join(parts) or "-"


def events_table(events: Sequence[EventRecord], *, title: str = "Events") -> Table:
    """A server's action log, oldest first."""
    table = Table(title=title, title_justify="left")
    for name in ("at", "action", "outcome", "host", "message", "detail"):
        table.add_column(name, overflow="fold", no_wrap=name in ("at", "action", "outcome"))
    style = {"done": "green", "failed": "red", "started": "yellow"}
    for e in events:
        table.add_row(e.at.isoformat(timespec="seconds"), e.action,
                      Text(e.outcome, style=style.get(e.outcome, "")), _opt(e.host),
                      _opt(e.message), _detail_text(e.detail))
    return table


def moves_table(moves: Sequence[Mapping[str, Any]], *, title: str = "Moves") -> Table:
    """A server's resizes and migrations (``GET /v1/servers/{ref}/moves``), oldest first."""
    table = Table(title=title, title_justify="left")
    for name in ("id", "kind", "status", "from", "to", "flavor", "message"):
        table.add_column(name, overflow="fold", no_wrap=name in ("id", "kind", "status"))
    style = {"done": "green", "reverted": "cyan", "failed": "red"}
    for m in moves:
        status = str(m.get("status"))
        flavor = str(m.get("old_flavor"))
        if m.get("new_flavor") != m.get("old_flavor"):
            flavor += f" -> {m.get('new_flavor')}"
        table.add_row(str(m.get("id")), str(m.get("kind")),
                      Text(status, style=style.get(status, "yellow")), str(m.get("source")),
                      str(m.get("dest")), flavor, _opt(m.get("message")))
    return table


def drain_view(obj: Mapping[str, Any], servers: Sequence[ServerRecord]) -> RenderableType:
    """``GET /v1/hosts/{host}/drain``: what still runs there, and whether each could move
    live (``servers``: the entries' servers, parsed)."""
    host = obj.get("host") or {}
    head = Text(f"Host {host.get('name')}: reserved="
                f"{'yes' if host.get('reserved') else 'no'}"
                + (f" ({host.get('reserved_reason')})" if host.get("reserved_reason") else "")
                + f"; {len(servers)} server{'s' if len(servers) != 1 else ''} still there")
    table = Table(title="Servers on the host", title_justify="left")
    for name in ("name", "id", "status", "devices", "ports", "live-migratable", "blockers"):
        table.add_column(name, overflow="fold", no_wrap=name in ("name", "status"))
    for entry, s in zip(obj.get("servers") or (), servers, strict=True):
        ok = bool(entry.get("live_migratable"))
        devices = ", ".join(f"{d.address} ({d.alias or 'group mate'})" for d in s.devices)
        nics = ", ".join(f"{port_label(p)} {p.vnic_type}" for p in s.ports)
        table.add_row(s.name, s.id, status_text(s.status), devices or "-", nics or "-",
                      Text("yes" if ok else "no", style="green" if ok else "red"),
                      "; ".join(str(b) for b in entry.get("blockers") or ()) or "-")
    note = Text(str(obj.get("note") or ""), style="dim")
    return Group(head, table, note)


def live_drain_view(obj: Mapping[str, Any]) -> RenderableType:
    """``POST /v1/hosts/{host}/drain`` with ``live_migrate``: what started moving, what stays."""
    host = obj.get("host") or {}
    moving = list(obj.get("migrating") or ())
    stays = list(obj.get("not_moved") or ())
    head = Text(f"Host {host.get('name')}: {len(moving)} server"
                f"{'s' if len(moving) != 1 else ''} live-migrating, {len(stays)} staying")
    table = Table(title="Servers", title_justify="left")
    for name in ("name", "id", "status", "outcome", "why"):
        table.add_column(name, overflow="fold", no_wrap=name in ("name", "status"))
    for s in moving:
        table.add_row(str(s.get("name")), str(s.get("id")), str(s.get("status")),
                      Text("migrating", style="green"), "-")
    for n in stays:
        s = n.get("server") or {}
        why = "; ".join(str(b) for b in n.get("blockers") or ()) or str(n.get("reason") or "-")
        table.add_row(str(s.get("name")), str(s.get("id")), str(s.get("status")),
                      Text("stays", style="red"), why)
    return Group(head, table)


# --- networks and ports ---------------------------------------------------------------------

_PORT_STATUS_STYLE = {"ACTIVE": "green", "BUILD": "yellow", "DOWN": "dim"}


def _scope_text(project: str | None) -> str:
    return "shared" if project is None else f"project {project}"


def segmentation_text(segmentation: str, segmentation_id: int | None) -> str:
    """``vlan 100`` or ``flat``."""
    return segmentation if segmentation_id is None else f"{segmentation} {segmentation_id}"


def networks_table(networks: Sequence[NetworkRecord], *, title: str = "Networks") -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("name", "id", "physical network", "segmentation", "visibility", "ports"):
        table.add_column(name, overflow="fold", no_wrap=name == "name",
                         justify="right" if name == "ports" else "left")
    for n in networks:
        table.add_row(n.name, n.id, n.physical_network,
                      segmentation_text(n.segmentation, n.segmentation_id),
                      _scope_text(n.project), str(n.ports))
    return table


def network_view(n: NetworkRecord) -> RenderableType:
    return _kv_table(f"Network {n.name}", [
        ("id", n.id),
        ("physical network", n.physical_network),
        ("segmentation", segmentation_text(n.segmentation, n.segmentation_id)),
        ("visibility", _scope_text(n.project)),
        ("ports", str(n.ports)),
        ("created", n.created_at.isoformat(timespec="seconds")),
    ])


def port_label(p: PortRecord) -> str:
    return p.name or p.id


def _rate_text(p: PortRecord) -> str:
    if not p.max_tx_rate_mbps and not p.min_tx_rate_mbps:
        return "-"
    return f"{p.min_tx_rate_mbps or 0}-{p.max_tx_rate_mbps or 'max'} Mbit/s"


def ports_table(ports: Sequence[PortRecord], *, title: str = "Ports",
                server: bool = True) -> Table:
    """Each port and its binding: host, address (VF, or PF for direct-physical), PF netdev,
    VF index. ``server``: a column naming the server it is attached to."""
    table = Table(title=title, title_justify="left")
    columns = ["port", "network", "vnic type", "MAC", "status", *(["server"] if server else []),
               "host", "address", "PF", "VF"]
    for name in columns:
        table.add_column(name, overflow="fold", no_wrap=name in ("MAC", "address", "status"))
    for p in ports:
        b = p.binding
        attached = [_opt(p.server_id)] if server else []
        table.add_row(
            port_label(p), f"{p.network} ({p.physical_network})", p.vnic_type, p.mac,
            Text(p.status, style=_PORT_STATUS_STYLE.get(p.status, "")), *attached,
            _opt(b.host if b else None), _opt(b.address if b else None),
            _opt(b.pf_netdev if b else None), _opt(b.vf_index if b else None))
    return table


def port_view(p: PortRecord) -> RenderableType:
    b = p.binding
    return _kv_table(f"Port {port_label(p)}", [
        ("id", p.id),
        ("name", _opt(p.name)),
        ("project", p.project),
        ("network", f"{p.network} ({p.network_id})"),
        ("physical network", p.physical_network),
        ("VLAN", _opt(p.segmentation_id)),
        ("vnic type", p.vnic_type),
        ("MAC", p.mac),
        ("status", p.status),
        ("trusted", "yes" if p.trusted else "no"),
        ("spoof check", "on" if p.spoofchk else "off"),
        ("tx rate", _rate_text(p)),
        ("NUMA policy", _opt(p.numa_affinity_policy)),
        ("server", _opt(p.server_id)),
        ("deleted with its server", "yes" if p.auto_delete else "no"),
        ("host", _opt(b.host if b else None)),
        ("address", _opt(b.address if b else None)),
        ("PF netdev", _opt(b.pf_netdev if b else None)),
        ("VF index", _opt(b.vf_index if b else None)),
        ("VF netdev", _opt(b.vf_netdev if b else None)),
        ("created", p.created_at.isoformat(timespec="seconds")),
    ])


def explain_view(obj: Mapping[str, Any]) -> RenderableType:
    """The scheduler's verdict: the summary, then why each host does or does not fit."""
    fits = bool(obj.get("fits"))
    summary = Text("fits: " if fits else "does not fit: ",
                   style="bold green" if fits else "bold red")
    summary.append(str(obj.get("message") or ""))
    table = Table(title="Hosts", title_justify="left")
    for name in ("host", "fits", "reason", "devices"):
        table.add_column(name, overflow="fold", no_wrap=name == "host")
    for h in obj.get("hosts") or []:
        ok = bool(h.get("fits"))
        table.add_row(str(h.get("host")),
                      Text("yes", style="green") if ok else Text("no", style="red"),
                      _opt(h.get("reason")), ", ".join(str(d) for d in h.get("devices") or [])
                      or "-")
    return Group(summary, table)


def quotas_table(quotas: Sequence[QuotaRecord], *, title: str = "Quotas") -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("project", "alias", "used", "limit"):
        table.add_column(name, justify="right" if name in ("used", "limit") else "left")
    for q in quotas:
        full = q.used >= q.limit
        table.add_row(q.project, q.alias, Text(str(q.used), style="red" if full else ""),
                      str(q.limit))
    return table


def usage_table(usage: Sequence[UsageRecord], *, title: str = "Device usage") -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("project", "alias", "device-hours", "device-seconds"):
        table.add_column(name, justify="left" if name in ("project", "alias") else "right")
    for u in usage:
        table.add_row(u.project, u.alias, f"{u.device_seconds / 3600:.4f}",
                      f"{u.device_seconds:.0f}")
    return table


def _kv_table(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    return table
