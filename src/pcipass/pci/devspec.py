"""Nova's ``[pci] device_spec``: which discovered devices may be passed through, and their tags.

Each spec is a JSON object (or a list of them) exactly as nova.conf takes it. ``vendor_id`` and
``product_id`` are hex or ``*``; ``address`` is a glob or a dict of regexes
(:mod:`pcipass.pci.devspec_address`); ``devname`` names a netdev instead of an address; every
other key is a tag. Matching follows Nova's so that an operator's configuration selects the
same devices, including its two PF rules:

- a spec whose address is one exact address (a glob with no wildcard, or a regex dict of four
  bare hex strings) that names a PF also matches that PF's VFs;
- a ``devname`` that belongs to a PF also matches the PF's VFs; one that belongs to anything
  else matches only that device; one that no device holds matches nothing.

Nova reads sysfs for both rules; here the host's devices stand in for sysfs (:class:`HostView`).
A spec tagged ``remote_managed`` true (an off-path SmartNIC DPU) also follows Nova: it never
takes a PF, and takes a VF only when its card has a serial number in its VPD.
The first matching spec gives a device its tags. Parsing refuses a bad spec at once, naming
the spec, the key and the problem; nothing here does I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from pcipass.errors import InvalidDeviceSpec
from pcipass.pci.address import PciAddress
from pcipass.pci.boolwords import bool_word
from pcipass.pci.device import DevType, PciDevice
from pcipass.pci.devspec_address import (
    ANY,
    AddressGlob,
    AddressRegex,
    AddressSpec,
    SpecProblem,
    parse_glob,
    parse_hex,
    parse_regex,
)

__all__ = [
    "AddressGlob",
    "AddressRegex",
    "DeviceSpec",
    "DeviceSpecSet",
    "HostView",
    "load_device_specs",
    "parse_device_spec",
    "parse_device_spec_json",
    "spec_to_json",
    "split_spec_lines",
]

MAX_ID = 0xFFFF
SPECIAL_KEYS = ("vendor_id", "product_id", "address", "devname")

# Tags whose value newer Nova parses strictly as a boolean and stores as "true"/"false"
# (oslo's bool_from_string word lists).
BOOL_TAGS = frozenset({"managed", "live_migratable", "one_time_use"})

_SHOWN_MAX = 80


@dataclass(frozen=True, eq=False)
class HostView:
    """The two facts Nova reads from sysfs while matching: which addresses are PFs
    (``sriov_totalvfs`` > 0) and which device holds a netdev name."""

    pfs: frozenset[PciAddress] = frozenset()
    netdevs: Mapping[str, PciAddress] = field(default_factory=dict)
    pf_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        # A regex dict names a PF by its sysfs directory name, so keep those too.
        object.__setattr__(self, "pf_names", frozenset(str(a) for a in self.pfs))

    @classmethod
    def of(cls, devices: Iterable[PciDevice]) -> HostView:
        pfs: set[PciAddress] = set()
        netdevs: dict[str, PciAddress] = {}
        for dev in devices:
            if _is_pf(dev):
                pfs.add(dev.address)
            if dev.parent_addr is not None:
                pfs.add(dev.parent_addr)  # a VF's physfn is a PF with VFs, by definition
            for nd in dev.netdevs:
                netdevs.setdefault(nd.name, dev.address)
        return cls(frozenset(pfs), netdevs)


def _is_pf(dev: PciDevice) -> bool:
    if dev.total_vfs is not None:
        return dev.total_vfs > 0
    return dev.dev_type is DevType.PF


def _device_id(text: str) -> int | None:
    return parse_hex(text) if isinstance(text, str) else None


@dataclass(frozen=True)
class DeviceSpec:
    """One parsed device_spec entry. ``None`` ids mean any; ``where`` names it in messages."""

    vendor_id: int | None = None
    product_id: int | None = None
    address: AddressSpec = field(default_factory=AddressGlob)
    devname: str | None = None
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    where: str = field(default="device_spec[0]", compare=False)

    def matches(self, dev: PciDevice, host: HostView | None = None) -> bool:
        """Nova's verdict on ``dev``. ``host`` should describe every device of the host;
        without it only ``dev`` itself is known (a devname on its PF cannot be resolved)."""
        if host is None:
            host = HostView.of((dev,))
        return self.selects(dev, host) and self.remote_problem(dev) is None

    def selects(self, dev: PciDevice, host: HostView) -> bool:
        """Whether the ids and the address (or devname) name ``dev``."""
        if self.vendor_id is not None and _device_id(dev.vendor_id) != self.vendor_id:
            return False
        if self.product_id is not None and _device_id(dev.product_id) != self.product_id:
            return False
        if self.devname is not None:
            owner = host.netdevs.get(self.devname)
            if owner is None:
                return False
            if owner in host.pfs and dev.parent_addr == owner:
                return True
            return dev.address == owner
        parent = dev.parent_addr
        if parent is not None and self._names_pf(host) and self.address.matches(parent):
            return True
        return self.address.matches(dev.address)

    @property
    def remote_managed(self) -> bool:
        """Nova reads this tag leniently (oslo's non-strict bool): only a true word counts."""
        value = self.tags.get("remote_managed")
        return value is not None and bool_word(value) is True

    def remote_problem(self, dev: PciDevice) -> str | None:
        """Why this ``remote_managed`` spec cannot take ``dev`` although it names it.

        Nova's two rules: a DPU manages VFs through their representors and has none for a
        PF, so a PF is never remote-managed; and the DPU finds the card by the serial number
        in its VPD, so a function without one could be bound but never wired.
        """
        if not self.remote_managed:
            return None
        if _is_pf(dev):
            return (f"{self.where} is remote_managed, which a PF cannot be (only its VFs, "
                    "through their representors on the DPU)")
        if not dev.card_serial_number:
            whose = "its PF's VPD" if dev.parent_addr is not None else "its VPD"
            return (f"{self.where} is remote_managed but {whose} has no card serial number "
                    "(the DPU finds the card by it)")
        return None

    def _names_pf(self, host: HostView) -> bool:
        if isinstance(self.address, AddressGlob):
            exact = self.address.exact
            return exact is not None and exact in host.pfs
        literal = self.address.literal
        return literal is not None and literal in host.pf_names


@dataclass(frozen=True)
class DeviceSpecSet:
    """All the specs of a host, in order: any match makes a device assignable, the first
    match gives its tags."""

    specs: tuple[DeviceSpec, ...] = ()

    def match(self, dev: PciDevice, host: HostView | None = None) -> DeviceSpec | None:
        return self.verdict(dev, host)[0]

    def verdict(self, dev: PciDevice, host: HostView | None = None
                ) -> tuple[DeviceSpec | None, str | None]:
        """The first spec that takes ``dev``, and why the first ``remote_managed`` spec that
        names it before then could not (None when none did)."""
        if host is None:
            host = HostView.of((dev,))
        problem: str | None = None
        for spec in self.specs:
            if not spec.selects(dev, host):
                continue
            why = spec.remote_problem(dev)
            if why is None:
                return spec, problem
            problem = problem or why
        return None, problem

    def apply(self, devices: Sequence[PciDevice]) -> tuple[PciDevice, ...]:
        """Copies of ``devices`` with ``assignable`` and ``tags`` set from the specs.

        A ``remote_managed`` spec that names a device it cannot take leaves a warning on the
        device saying why, so ``discover`` and ``device show`` explain a missing VF.
        """
        host = HostView.of(devices)
        out = []
        for dev in devices:
            chosen, problem = self.verdict(dev, host)
            warnings = dev.warnings
            if problem is not None and problem not in warnings:   # applying twice adds none
                warnings = (*warnings, problem)
            out.append(replace(dev, assignable=chosen is not None, warnings=warnings,
                               tags=dict(chosen.tags) if chosen is not None else {}))
        return tuple(out)


# --- parsing -----------------------------------------------------------------------------

def _shown(obj: object) -> str:
    try:
        text = json.dumps(obj, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(obj)
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."


class _Spec:
    """Where one entry sits, to name it in every error about it."""

    def __init__(self, where: str, obj: object) -> None:
        self.where = where
        self.shown = _shown(obj)

    def error(self, key: str | None, problem: str) -> InvalidDeviceSpec:
        path = f"{self.where}.{key}" if key else self.where
        return InvalidDeviceSpec(f"{self.where} {self.shown}: {problem}", field=path)


def _parse_id(spec: _Spec, obj: Mapping[str, object], key: str) -> int | None:
    if key not in obj:
        return None
    raw = obj[key]
    if not isinstance(raw, str):
        raise spec.error(key, f"{key} must be a hex string or '*', not {_kind(raw)}")
    # Nova strips the vendor id before looking for '*', but not the product id.
    if (raw.strip() if key == "vendor_id" else raw) == ANY:
        return None
    value = parse_hex(raw)
    if value is None:
        raise spec.error(key, f"{key} {raw!r} is not a hex number or '*'")
    if value > MAX_ID:
        raise spec.error(key, f"{key} {raw!r} is greater than the maximum {MAX_ID:#x}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _parse_address(spec: _Spec, raw: object) -> AddressSpec:
    try:
        if isinstance(raw, str):
            return parse_glob(raw) if raw else AddressGlob()
        if isinstance(raw, Mapping):
            return parse_regex(dict(raw)) if raw else AddressGlob()
    except SpecProblem as exc:
        raise spec.error(exc.key, f"address: {exc.problem}") from None
    raise spec.error("address", "address must be a glob string or an object of regexes "
                     f"(domain, bus, slot, function), not {_kind(raw)}")


def _tag_value(spec: _Spec, key: str, value: object) -> str | None:
    if value is None:
        return None  # Nova keeps None, which every comparison treats as an absent tag
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        try:
            text = str(value)
        except ValueError:
            raise spec.error(key, f"{key} is a number too long to be a tag value") from None
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise spec.error(key, f"{key} {value!r} is not a usable tag value")
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise spec.error(key, f"{key} must be a string, number or boolean, not {_kind(value)}"
                         " (tag values are compared as strings)")
    if key in BOOL_TAGS:
        truth = bool_word(text)
        if truth is not None:
            return "true" if truth else "false"
        raise spec.error(key, f"{key} {text!r} is not a boolean "
                         "(true/false, yes/no, on/off, 1/0, t/f, y/n)")
    return text


def _parse_one(obj: object, where: str) -> DeviceSpec:
    spec = _Spec(where, obj)
    if not isinstance(obj, Mapping):
        raise spec.error(None, f"each device spec must be a JSON object, not {_kind(obj)}")
    for key in obj:
        if not isinstance(key, str):
            raise spec.error(None, f"key {key!r} is not a string")
    vendor_id = _parse_id(spec, obj, "vendor_id")
    product_id = _parse_id(spec, obj, "product_id")
    raw_devname = obj.get("devname")
    if raw_devname is not None and not isinstance(raw_devname, str):
        raise spec.error("devname", f"devname must be a string, not {_kind(raw_devname)}")
    devname = raw_devname or None
    raw_address = obj.get("address")
    if raw_address is not None and not isinstance(raw_address, str | Mapping):
        raise spec.error("address", "address must be a glob string or an object of regexes "
                         f"(domain, bus, slot, function), not {_kind(raw_address)}")
    # Like Nova, an empty address or devname counts as absent.
    if devname is not None and raw_address:
        raise spec.error("devname", "devname and address cannot be used together; "
                         "give one of them")
    address: AddressSpec = AddressGlob()
    if devname is None and raw_address:
        address = _parse_address(spec, raw_address)
    tags: dict[str, str] = {}
    for key, value in obj.items():
        if key in SPECIAL_KEYS:
            continue
        text = _tag_value(spec, key, value)
        if text is not None:
            tags[key] = text
    return DeviceSpec(vendor_id=vendor_id, product_id=product_id, address=address,
                      devname=devname, tags=tags, where=where)


def parse_device_spec(obj: object, *, position: int = 0) -> tuple[DeviceSpec, ...]:
    """One ``device_spec`` value (already decoded): an object or a list of objects.

    Entries are named ``device_spec[position]``, or ``device_spec[position][i]`` in a list.
    """
    where = f"device_spec[{position}]"
    if isinstance(obj, Mapping):
        return (_parse_one(obj, where),)
    if isinstance(obj, list | tuple):
        return tuple(_parse_one(item, f"{where}[{i}]") for i, item in enumerate(obj))
    raise _Spec(where, obj).error(
        None, f"a device spec must be a JSON object or a list of objects, not {_kind(obj)}"
    )


def parse_device_spec_json(text: str, *, position: int = 0) -> tuple[DeviceSpec, ...]:
    """One ``device_spec`` line as nova.conf holds it: JSON text."""
    where = f"device_spec[{position}]"
    if not isinstance(text, str):
        raise _Spec(where, text).error(None, f"a device spec must be JSON text, not "
                                       f"{_kind(text)}")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Spec(where, text).error(
            None, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise _Spec(where, text).error(None, f"not usable JSON ({exc})") from None
    return parse_device_spec(obj, position=position)


def load_device_specs(
    texts: Sequence[str | Mapping[str, object] | list[object]],
) -> DeviceSpecSet:
    """Every ``device_spec`` value of a host, in order; each string is JSON text.

    The first bad entry is raised and nothing is returned, so a bad line never half-applies.
    """
    items: Sequence[object] = [texts] if isinstance(texts, str) else texts
    specs: list[DeviceSpec] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            specs.extend(parse_device_spec_json(item, position=i))
        else:
            specs.extend(parse_device_spec(item, position=i))
    return DeviceSpecSet(tuple(specs))


def split_spec_lines(text: str) -> list[str]:
    """A file holding one spec per line: blank lines and ``#`` comment lines are skipped."""
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def spec_to_json(spec: DeviceSpec) -> dict[str, object]:
    """The canonical JSON of a spec: parsing it again gives an equal spec."""
    out: dict[str, object] = {}
    if spec.vendor_id is not None:
        out["vendor_id"] = f"{spec.vendor_id:04x}"
    if spec.product_id is not None:
        out["product_id"] = f"{spec.product_id:04x}"
    if spec.devname is not None:
        out["devname"] = spec.devname
    elif isinstance(spec.address, AddressRegex):
        out["address"] = spec.address.to_json()
    elif not spec.address.is_any:
        out["address"] = str(spec.address)
    out.update(spec.tags)
    return out
