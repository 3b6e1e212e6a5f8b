"""The ``address`` of a device spec: Nova's glob string or its dict of regexes.

Both forms are compared the way Nova compares them, so a nova.conf selects the same functions:

- A glob ``[[[[domain]:]bus]:][slot][.[function]]`` is split on the first ``.``, then on ``:``;
  missing leading parts, blank parts and ``*`` match anything, so ``0a:00`` is bus 0a slot 00,
  ``:0a:`` is bus 0a and a lone ``5`` is slot 5. Each given part is a hex number (an optional
  ``0x``, any case, leading zeros), compared by value.
- A dict of regexes (``domain``, ``bus``, ``slot``, ``function``; a missing key is ``.*``) is
  matched with :func:`re.match` against the device's lower-case fields (``0000``, ``0a``,
  ``00``, ``5``): anchored at the start only, so ``{"bus": "0"}`` also selects bus ``0a``.

Nova caps the domain at 0xffff; Intel VMD domains (``10000``) are accepted here, up to 32 bits.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

from pcipass.pci.address import MAX_BUS, MAX_DOMAIN, MAX_FUNCTION, MAX_SLOT, PciAddress

ANY = "*"
REGEX_ANY = ".*"
REGEX_KEYS = ("domain", "bus", "slot", "function")

# Nova reads hex with int(text, 16): surrounding blanks and a 0x prefix pass. Signs and
# underscores, which int() also takes, are refused here: no real address is written so.
_HEX = re.compile(r"\s*(?:0[xX])?([0-9a-fA-F]+)\s*\Z")


class SpecProblem(ValueError):
    """One thing wrong with a spec; the parser adds which spec and key it was."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


def parse_hex(text: str) -> int | None:
    """The value of a hex field as Nova's ``int(text, 16)`` reads it, or None."""
    m = _HEX.match(text)
    return int(m[1], 16) if m else None


def _hex_part(text: str, name: str, top: int, key: str, shown: str) -> int:
    value = parse_hex(text)
    if value is None:
        raise SpecProblem(key, f"{name} {text!r} in {shown} is not a hex number or '*'")
    if value > top:
        raise SpecProblem(
            key, f"{name} {value:#x} in {shown} is greater than the maximum {top:#x}"
        )
    return value


@dataclass(frozen=True, slots=True)
class AddressGlob:
    """A glob address; None in a part means any value."""

    domain: int | None = None
    bus: int | None = None
    slot: int | None = None
    function: int | None = None

    @property
    def exact(self) -> PciAddress | None:
        """The one address this glob names, when no part is a wildcard.

        Only such an address makes Nova treat the spec as a PF's (matching its VFs).
        """
        if self.domain is None or self.bus is None or self.slot is None or self.function is None:
            return None
        return PciAddress(self.domain, self.bus, self.slot, self.function)

    @property
    def is_any(self) -> bool:
        return (self.domain, self.bus, self.slot, self.function) == (None, None, None, None)

    def matches(self, addr: PciAddress) -> bool:
        return (
            self.domain in (None, addr.domain)
            and self.bus in (None, addr.bus)
            and self.slot in (None, addr.slot)
            and self.function in (None, addr.function)
        )

    def __str__(self) -> str:
        def part(value: int | None, width: int) -> str:
            return ANY if value is None else f"{value:0{width}x}"

        return (
            f"{part(self.domain, 4)}:{part(self.bus, 2)}:{part(self.slot, 2)}"
            f".{part(self.function, 1)}"
        )


@dataclass(frozen=True)
class AddressRegex:
    """A dict-of-regexes address, kept as written (the text is what Nova matches with)."""

    domain: str = REGEX_ANY
    bus: str = REGEX_ANY
    slot: str = REGEX_ANY
    function: str = REGEX_ANY
    _patterns: tuple[re.Pattern[str], ...] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_patterns",
            tuple(re.compile(p) for p in (self.domain, self.bus, self.slot, self.function)),
        )

    @property
    def literal(self) -> str | None:
        """``d:b:s.f`` when every regex is bare hex digits, else None.

        Nova then looks that text up in sysfs as a PCI device name: when it names a PF, the
        spec also matches that PF's VFs. Only the canonical spelling (``0000``, ``0a``, ``00``,
        ``0``) can name one.
        """
        parts = (self.domain, self.bus, self.slot, self.function)
        if all(all(c in string.hexdigits for c in p) for p in parts):
            return f"{self.domain}:{self.bus}:{self.slot}.{self.function}"
        return None

    def matches(self, addr: PciAddress) -> bool:
        texts = (f"{addr.domain:04x}", f"{addr.bus:02x}", f"{addr.slot:02x}",
                 f"{addr.function:x}")
        return all(p.match(t) is not None for p, t in zip(self._patterns, texts, strict=True))

    def to_json(self) -> dict[str, str]:
        return {"domain": self.domain, "bus": self.bus, "slot": self.slot,
                "function": self.function}


AddressSpec = AddressGlob | AddressRegex


def parse_glob(text: str, key: str = "address") -> AddressGlob:
    """Read a glob the way Nova does; raise :class:`SpecProblem` naming the bad part."""
    shown = repr(text)
    dbs, _, func = text.partition(".")
    function: int | None = None
    if func:
        # Nova tests the part before stripping it: "00. " is a blank, hence bad, function.
        f = func.strip()
        if f != ANY:
            function = _hex_part(f, "function", MAX_FUNCTION, key, shown)
    domain = bus = slot = None
    if dbs:
        fields = dbs.split(":")
        if len(fields) > 3:
            raise SpecProblem(
                key, f"{shown} has {len(fields)} ':'-separated parts before the '.', "
                "at most 3 (domain:bus:slot)",
            )
        padded = [ANY] * (3 - len(fields)) + [s.strip() or ANY for s in fields]
        values = [
            None if s == ANY else _hex_part(s, name, top, key, shown)
            for s, name, top in zip(padded, ("domain", "bus", "slot"),
                                    (MAX_DOMAIN, MAX_BUS, MAX_SLOT), strict=True)
        ]
        domain, bus, slot = values
    return AddressGlob(domain, bus, slot, function)


def parse_regex(obj: dict[str, object], key: str = "address") -> AddressRegex:
    """Compile a dict of regexes; unknown keys are refused (Nova ignores them, so a typo
    such as ``func`` would silently select every function)."""
    unknown = sorted(str(k) for k in obj if k not in REGEX_KEYS)
    if unknown:
        raise SpecProblem(
            key, f"unknown key(s) {', '.join(map(repr, unknown))} in the address regex dict "
            f"(allowed: {', '.join(REGEX_KEYS)})",
        )
    texts: dict[str, str] = {}
    for name in REGEX_KEYS:
        value = obj.get(name, REGEX_ANY)
        if not isinstance(value, str):
            raise SpecProblem(f"{key}.{name}", f"{name} must be a regex string, "
                              f"not {type(value).__name__}")
        try:
            re.compile(value)
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            raise SpecProblem(f"{key}.{name}", f"{name} {value!r} is not a valid regex: "
                              f"{exc}") from None
        texts[name] = value
    return AddressRegex(**texts)
