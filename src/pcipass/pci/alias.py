"""Nova's ``[pci] alias``: the names tenants ask for devices by, and what each name matches.

An alias entry is one JSON object exactly as nova.conf takes it::

    {"name": "gpu", "vendor_id": "10de", "product_id": "20b5",
     "device_type": "type-PCI", "numa_policy": "required"}

Several entries with one name are alternatives: a device matching any of them will do. As in
Nova, they must agree on ``device_type`` and ``numa_policy`` (an absent ``numa_policy`` is
``legacy``), ``vendor_id``/``product_id`` are four hex digits, names are stripped, and
``capability_type``, ``resource_class``, ``traits`` and ``live_migratable`` are accepted.

Beyond Nova, an entry may constrain any discovered attribute or device-spec tag under one
explicit ``match`` object, each key taking one value or a list of allowed values::

    {"name": "vf-net1", "device_type": "type-VF",
     "match": {"physical_network": "physnet1", "trusted": true, "driver": ["iavf", "vfio-pci"]}}

``match`` keys: ``driver``, ``class_code`` (a hex prefix: ``"03"`` is any display controller),
``subsystem_vendor_id``, ``subsystem_product_id``, and any other name is a device-spec tag
(``physical_network``, ``trusted``, ``remote_managed``, ``live_migratable``, custom labels).
Any other top-level key is refused, as Nova's schema refuses it: the line between "a tag" and
"a typo" is the ``match`` object, so ``"physical_netwrok": "x"`` at the top level is an error
rather than a constraint nothing satisfies.

Also refused (naming the alias and the key): an entry that constrains nothing that identifies
a device (no ids, ``resource_class``, ``traits`` or ``match``; ``device_type`` alone would hand
out any VF on the host), an empty list of allowed values (it could never match), a name that a
flavor could never ask for (empty, or holding ``:`` or ``,``), and entries of one name with
different device types or NUMA policies.

Where we differ from Nova, on purpose: Nova (2024.2 on) requires both ``vendor_id`` and
``product_id``; we require at least one identifying constraint, since ``match`` can identify a
device too. Nova fails with a bare ``'dev_type'`` KeyError when several entries of one name omit
``device_type``; we treat "absent" as a value that entries must agree on.

Matching follows Nova's: strings compare case-insensitively; a PF is matched only by an entry
asking for ``type-PF``; a device tagged ``remote_managed`` true only by an entry that asks for
it. A boolean tag the device does not carry counts as false (Nova adds ``remote_managed=false``
the same way).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pcipass.errors import InvalidAlias
from pcipass.pci.boolwords import bool_word
from pcipass.pci.device import DevType, PciDevice

__all__ = [
    "Alias",
    "AliasEntry",
    "Constraint",
    "NumaPolicy",
    "alias_entry_to_json",
    "build_aliases",
    "parse_alias_entry",
    "parse_aliases",
]


class NumaPolicy(StrEnum):
    """Nova's PCI NUMA affinity policies (``fields.PCINUMAAffinityPolicy``)."""

    REQUIRED = "required"
    LEGACY = "legacy"
    PREFERRED = "preferred"
    SOCKET = "socket"


NOVA_KEYS = frozenset({
    "name", "vendor_id", "product_id", "device_type", "numa_policy", "capability_type",
    "resource_class", "traits", "live_migratable",
})
ALIAS_KEYS = NOVA_KEYS | {"match"}
MAX_NAME = 256

# Discovered attributes a ``match`` may name; every other match key is a device-spec tag.
ATTRIBUTE_KEYS = frozenset({"driver", "class_code", "subsystem_vendor_id", "subsystem_product_id"})
# Keys that belong at the top level (or nowhere) rather than in ``match``.
_NOT_MATCH_KEYS = frozenset({
    "name", "vendor_id", "product_id", "device_type", "dev_type", "numa_policy",
    "capability_type", "resource_class", "traits", "address", "devname", "numa_node",
})
# Tags that hold booleans; compared as booleans, and absent means false.
BOOL_TAGS = frozenset({"trusted", "remote_managed", "live_migratable", "managed", "one_time_use"})

_HEX4 = re.compile(r"^[0-9a-fA-F]{4}$")
_HEX_PREFIX = re.compile(r"^[0-9a-f]{1,6}$")
_NOT_PLACEMENT = re.compile(r"[^A-Z0-9_]")


def _placement_key(name: str) -> str:
    """A resource class or trait name as placement would normalise it, minus ``CUSTOM_``.

    Nova upper-cases names and prefixes unknown ones with ``CUSTOM_`` on both the device and
    the alias side; comparing without the prefix gives the same verdicts without carrying
    placement's list of standard traits.
    """
    key = _NOT_PLACEMENT.sub("_", name.strip().upper())
    return key.removeprefix("CUSTOM_")


def _device_rc(dev: PciDevice) -> str:
    rc = dev.tags.get("resource_class")
    if rc:
        return _placement_key(rc)
    return _placement_key(f"PCI_{dev.vendor_id}_{dev.product_id}")


def _device_traits(dev: PciDevice) -> frozenset[str]:
    raw = dev.tags.get("traits", "")
    found = {_placement_key(t) for t in raw.split(",") if t.strip()}
    found.add("COMPUTE_MANAGED_PCI_DEVICE")  # Nova gives every PCI provider this trait
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class Constraint:
    """One ``match`` key and the values it allows (normalised for comparison)."""

    key: str
    allowed: tuple[str, ...]

    def test(self, dev: PciDevice) -> bool:
        if self.key == "class_code":
            code = dev.class_code.lower()
            return any(code.startswith(p) for p in self.allowed)
        if self.key in ATTRIBUTE_KEYS:
            value = getattr(dev, self.key)
            return value is not None and value.lower() in self.allowed
        raw = dev.tags.get(self.key)
        if self.key in BOOL_TAGS:
            truth = False if raw is None else bool_word(raw)
            return truth is not None and ("true" if truth else "false") in self.allowed
        return raw is not None and raw.lower() in self.allowed

    def to_json(self) -> str | bool | list[str | bool]:
        values: list[str | bool] = [
            (v == "true") if self.key in BOOL_TAGS else v for v in self.allowed
        ]
        return values[0] if len(values) == 1 else values


@dataclass(frozen=True, slots=True)
class AliasEntry:
    """One alias JSON object: one alternative for its name."""

    name: str
    vendor_id: str | None = None
    product_id: str | None = None
    dev_type: DevType | None = None
    numa_policy: NumaPolicy = NumaPolicy.LEGACY
    resource_class: str | None = None
    traits: tuple[str, ...] = ()
    live_migratable: bool | None = None
    match: tuple[Constraint, ...] = ()
    capability_type: str | None = None

    @property
    def wants_remote_managed(self) -> bool:
        return any(c.key == "remote_managed" and "true" in c.allowed for c in self.match)

    def matches(self, dev: PciDevice) -> bool:
        """Whether ``dev``'s attributes satisfy this entry (not whether it is free or usable)."""
        if self.vendor_id is not None and dev.vendor_id.lower() != self.vendor_id:
            return False
        if self.product_id is not None and dev.product_id.lower() != self.product_id:
            return False
        if self.dev_type is not None and dev.dev_type is not self.dev_type:
            return False
        # Nova drops PF pools unless a PF is asked for: PFs share product ids with their VFs.
        if dev.dev_type is DevType.PF and self.dev_type is not DevType.PF:
            return False
        # ...and remote-managed (SmartNIC DPU) functions unless those are asked for.
        remote = dev.tags.get("remote_managed")
        if remote is not None and bool_word(remote) and not self.wants_remote_managed:
            return False
        if self.resource_class is not None and (
                _device_rc(dev) != _placement_key(self.resource_class)):
            return False
        if self.traits and not {_placement_key(t) for t in self.traits} <= _device_traits(dev):
            return False
        if self.live_migratable is not None:
            raw = dev.tags.get("live_migratable")
            if bool(raw is not None and bool_word(raw)) is not self.live_migratable:
                return False
        return all(c.test(dev) for c in self.match)


@dataclass(frozen=True, slots=True)
class Alias:
    """All the entries of one name: a device matching any of them satisfies the alias."""

    name: str
    entries: tuple[AliasEntry, ...]

    @property
    def numa_policy(self) -> NumaPolicy:
        return self.entries[0].numa_policy

    @property
    def dev_type(self) -> DevType | None:
        return self.entries[0].dev_type

    def matches(self, dev: PciDevice) -> bool:
        return any(e.matches(dev) for e in self.entries)


# --- parsing -----------------------------------------------------------------------------

def _shown(obj: object) -> str:
    try:
        text = json.dumps(obj, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


class _Where:
    """Names the alias (or its position, before the name is known) in every message."""

    def __init__(self, where: str, obj: object) -> None:
        self.where = where
        self.label = f"{where} {_shown(obj)}"

    def named(self, name: str) -> None:
        self.label = f"alias {name!r} ({self.where})"

    def error(self, key: str | None, problem: str) -> InvalidAlias:
        field = f"{self.where}.{key}" if key else self.where
        return InvalidAlias(f"{self.label}: {problem}", field=field)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return "a string" if isinstance(value, str) else type(value).__name__


def _string(w: _Where, obj: Mapping[str, Any], key: str) -> str | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise w.error(key, f"{key} must be a string, not {_kind(value)}")
    return value


def _hex_id(w: _Where, obj: Mapping[str, Any], key: str) -> str | None:
    value = _string(w, obj, key)
    if value is None:
        return None
    if not _HEX4.match(value):
        raise w.error(key, f"{key} {value!r} is not four hex digits (Nova takes no '*' or "
                           "'0x' in an alias)")
    return value.lower()


def _match_value(w: _Where, key: str, value: object) -> str:
    path = f"match.{key}"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int) and key not in BOOL_TAGS:
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise w.error(path, f"match {key!r} values must be strings or booleans, not "
                            f"{_kind(value)}")
    if key in BOOL_TAGS:
        truth = bool_word(text)
        if truth is None:
            raise w.error(path, f"match {key!r} value {text!r} is not a boolean "
                                "(true/false, yes/no, on/off, 1/0)")
        return "true" if truth else "false"
    if key == "class_code":
        code = text.lower().removeprefix("0x")
        if not _HEX_PREFIX.match(code):
            raise w.error(path, f"match 'class_code' {text!r} is not a prefix of a class code "
                                "(1 to 6 hex digits, e.g. '03' or '0302')")
        return code
    if key in ("subsystem_vendor_id", "subsystem_product_id"):
        if not _HEX4.match(text):
            raise w.error(path, f"match {key!r} {text!r} is not four hex digits")
        return text.lower()
    if not text:
        raise w.error(path, f"match {key!r} has an empty value")
    return text.lower()


def _parse_match(w: _Where, raw: object) -> tuple[Constraint, ...]:
    if not isinstance(raw, Mapping):
        raise w.error("match", f"match must be an object of key: value(s), not {_kind(raw)}")
    out = []
    for key, value in raw.items():
        if not isinstance(key, str) or not key.strip():
            raise w.error("match", f"match key {key!r} is not a name")
        if key in _NOT_MATCH_KEYS:
            hint = ("give it at the top level" if key in NOVA_KEYS
                    else "it is not something an alias can ask for")
            raise w.error(f"match.{key}", f"{key!r} cannot be a match key ({hint})")
        values = value if isinstance(value, list | tuple) else [value]
        if not values:
            raise w.error(f"match.{key}", f"match {key!r} allows no value, so the alias "
                                          "could never match anything")
        allowed = tuple(dict.fromkeys(_match_value(w, key, v) for v in values))
        out.append(Constraint(key, allowed))
    return tuple(sorted(out, key=lambda c: c.key))


def parse_alias_entry(obj: object, *, where: str = "alias[0]") -> AliasEntry:
    """One alias object (already decoded from JSON); errors name the alias and the key."""
    w = _Where(where, obj)
    if not isinstance(obj, Mapping):
        raise w.error(None, f"an alias must be a JSON object, not {_kind(obj)}")
    raw_name = obj.get("name")
    if not isinstance(raw_name, str):
        raise w.error("name", "name is required" if raw_name is None
                      else f"name must be a string, not {_kind(raw_name)}")
    if len(raw_name) > MAX_NAME:
        raise w.error("name", f"name is longer than {MAX_NAME} characters")
    name = raw_name.strip()
    if not name:
        raise w.error("name", "name is empty")
    w.named(name)
    if ":" in name or "," in name:
        raise w.error("name", "a name holding ':' or ',' could never be asked for in "
                              "pci_passthrough:alias ('name:count, ...')")
    for key in obj:
        if key not in ALIAS_KEYS:
            raise w.error(str(key), f"unknown key {key!r} (an alias takes "
                          f"{', '.join(sorted(ALIAS_KEYS))}; tags and discovered attributes "
                          "go under \"match\")")
    vendor_id = _hex_id(w, obj, "vendor_id")
    product_id = _hex_id(w, obj, "product_id")
    dev_type = None
    raw_type = _string(w, obj, "device_type")
    if raw_type is not None:
        try:
            dev_type = DevType(raw_type)
        except ValueError:
            raise w.error("device_type", f"device_type {raw_type!r} is not one of "
                          f"{', '.join(t.value for t in DevType)}") from None
    policy = NumaPolicy.LEGACY
    raw_policy = _string(w, obj, "numa_policy")
    if raw_policy:  # Nova: an empty policy is the default
        try:
            policy = NumaPolicy(raw_policy)
        except ValueError:
            raise w.error("numa_policy", f"numa_policy {raw_policy!r} is not one of "
                          f"{', '.join(p.value for p in NumaPolicy)}") from None
    capability = _string(w, obj, "capability_type")
    if capability is not None and capability != "pci":
        raise w.error("capability_type", f"capability_type {capability!r} is not 'pci'")
    rc_raw = _string(w, obj, "resource_class")
    resource_class = rc_raw.strip() if rc_raw and rc_raw.strip() else None
    traits_raw = _string(w, obj, "traits")
    traits = tuple(dict.fromkeys(t.strip() for t in (traits_raw or "").split(",") if t.strip()))
    live: bool | None = None
    raw_live = obj.get("live_migratable")
    if raw_live is not None:
        if not isinstance(raw_live, str | bool):
            raise w.error("live_migratable", f"live_migratable must be a string, not "
                                             f"{_kind(raw_live)}")
        live = raw_live if isinstance(raw_live, bool) else bool_word(raw_live)
        if live is None:
            raise w.error("live_migratable", f"live_migratable {raw_live!r} is not a boolean "
                                             "(true/false, yes/no, on/off, 1/0)")
    match = _parse_match(w, obj["match"]) if "match" in obj else ()
    if live is not None and any(c.key == "live_migratable" for c in match):
        raise w.error("match.live_migratable", "live_migratable is given both at the top "
                                               "level and under match")
    if not (vendor_id or product_id or resource_class or traits or match):
        raise w.error(None, "the alias constrains nothing that identifies a device: give "
                            "vendor_id/product_id, resource_class, traits or a match")
    return AliasEntry(
        name=name, vendor_id=vendor_id, product_id=product_id, dev_type=dev_type,
        numa_policy=policy, resource_class=resource_class, traits=traits,
        live_migratable=live, match=match, capability_type=capability,
    )


def build_aliases(entries: Iterable[AliasEntry]) -> dict[str, Alias]:
    """Group entries by name, refusing names whose entries disagree as Nova does."""
    grouped: dict[str, list[AliasEntry]] = {}
    for entry in entries:
        first = grouped.get(entry.name)
        if first:
            head = first[0]
            if head.numa_policy is not entry.numa_policy:
                raise InvalidAlias(
                    f"alias {entry.name!r}: NUMA policy mismatch: one entry has numa_policy "
                    f"{head.numa_policy.value!r}, another {entry.numa_policy.value!r} "
                    "(entries of one name must agree)", field="numa_policy")
            if head.dev_type is not entry.dev_type:
                def shown(t: DevType | None) -> str:
                    return repr(t.value) if t is not None else "none"
                raise InvalidAlias(
                    f"alias {entry.name!r}: device type mismatch: one entry has device_type "
                    f"{shown(head.dev_type)}, another {shown(entry.dev_type)} "
                    "(entries of one name must agree)", field="device_type")
            if entry in first:
                continue  # the same alternative twice adds nothing
        grouped.setdefault(entry.name, []).append(entry)
    return {name: Alias(name, tuple(es)) for name, es in grouped.items()}


def _decode(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidAlias(f"{where}: not valid JSON ({exc})", field=where) from None


def parse_aliases(values: object) -> dict[str, Alias]:
    """Aliases from config or an API body: one object, a list of objects, JSON text, or a list
    mixing JSON text (one nova.conf ``alias =`` line each) and objects."""
    items: Sequence[object]
    if isinstance(values, str):
        decoded = _decode(values, "alias[0]")
        items = decoded if isinstance(decoded, list) else [decoded]
    elif isinstance(values, Mapping):
        items = [values]
    elif isinstance(values, list | tuple):
        items = values
    else:
        raise InvalidAlias(f"aliases must be an object or a list of objects, not "
                           f"{_kind(values)}", field="alias")
    entries = []
    for i, item in enumerate(items):
        where = f"alias[{i}]"
        obj = _decode(item, where) if isinstance(item, str) else item
        entries.append(parse_alias_entry(obj, where=where))
    return build_aliases(entries)


def alias_entry_to_json(entry: AliasEntry) -> dict[str, Any]:
    """The canonical JSON of an entry: parsing it again gives an equal entry."""
    out: dict[str, Any] = {"name": entry.name}
    if entry.vendor_id is not None:
        out["vendor_id"] = entry.vendor_id
    if entry.product_id is not None:
        out["product_id"] = entry.product_id
    if entry.dev_type is not None:
        out["device_type"] = entry.dev_type.value
    out["numa_policy"] = entry.numa_policy.value
    if entry.capability_type is not None:
        out["capability_type"] = entry.capability_type
    if entry.resource_class is not None:
        out["resource_class"] = entry.resource_class
    if entry.traits:
        out["traits"] = ",".join(entry.traits)
    if entry.live_migratable is not None:
        out["live_migratable"] = "true" if entry.live_migratable else "false"
    if entry.match:
        out["match"] = {c.key: c.to_json() for c in entry.match}
    return out
