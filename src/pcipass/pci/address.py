"""PCI addresses: one parser, one immutable value.

An address prints as ``dddd:bb:ss.f`` in lower-case hex. Intel VMD puts devices in domains
above 0xffff (``10000:01:00.0``), so the domain keeps as many digits as it needs (at least
four, up to 32 bits, as libvirt's schema allows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Self

from pcipass.errors import InvalidAddress

MAX_DOMAIN = 0xFFFFFFFF
MAX_BUS = 0xFF
MAX_SLOT = 0x1F
MAX_FUNCTION = 0x7

_ADDRESS_RE = re.compile(
    r"^(?P<domain>[0-9a-fA-F]{1,8}):(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<slot>[0-9a-fA-F]{1,2})\.(?P<function>[0-7])$"
)


@dataclass(frozen=True, order=True, slots=True)
class PciAddress:
    domain: int
    bus: int
    slot: int
    function: int

    def __post_init__(self) -> None:
        for name, value, top in (
            ("domain", self.domain, MAX_DOMAIN),
            ("bus", self.bus, MAX_BUS),
            ("slot", self.slot, MAX_SLOT),
            ("function", self.function, MAX_FUNCTION),
        ):
            if not 0 <= value <= top:
                raise InvalidAddress(
                    f"PCI address {name} {value:#x} is out of range (0 to {top:#x})",
                    field=name,
                )

    @classmethod
    def parse(cls, text: str, *, field: str = "address") -> Self:
        """Parse ``dddd:bb:ss.f`` (any case); the error names ``field``."""
        if not isinstance(text, str):
            raise InvalidAddress(f"PCI address must be a string, not {type(text).__name__}",
                                 field=field)
        m = _ADDRESS_RE.match(text.strip())
        if m is None:
            raise InvalidAddress(
                f"{text!r} is not a PCI address (expected dddd:bb:ss.f in hex)", field=field
            )
        try:
            return cls(
                int(m["domain"], 16), int(m["bus"], 16), int(m["slot"], 16),
                int(m["function"], 16),
            )
        except InvalidAddress as exc:
            raise InvalidAddress(f"{text!r}: {exc.message}", field=field) from None

    @property
    def slot_address(self) -> tuple[int, int, int]:
        """The (domain, bus, slot) that the functions of one multi-function device share."""
        return (self.domain, self.bus, self.slot)

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    def __repr__(self) -> str:
        return f"PciAddress('{self}')"
