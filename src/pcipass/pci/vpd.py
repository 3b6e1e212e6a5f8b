"""PCI Vital Product Data: the card's own record of what it is, read from sysfs ``vpd``.

Nova lets a ``remote_managed`` device spec select only functions whose card has a serial
number in its VPD: a SmartNIC DPU's control plane finds the card by that number, so a VF
without one could be bound but never programmed. This module turns the bytes of a ``vpd``
file into the fields a host reports; it does no I/O.

The layout (PCI Local Bus 3.0, appendix I; PCIe 6.28) is a list of resource items:

- a large item is a tag byte ``1nnnnnnn``, a 16-bit little-endian length, then data:
  ``0x82`` the identifier string (the product name), ``0x90`` the read-only fields (VPD-R),
  ``0x91`` the writable ones (VPD-W);
- a small item is ``0nnnnlll``: name in bits 6..3, length in bits 2..0; ``0x78`` ends the list.

VPD-R and VPD-W hold keyword entries: two ASCII letters, a length byte, the value. VPD-R's
``RV`` entry carries a checksum byte that makes every byte from the start of the VPD to it
sum to zero. Like libvirt, a VPD that breaks these rules is refused whole rather than half
believed: a serial number from a corrupt record could point a DPU at the wrong card.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["MAX_VPD_BYTES", "Vpd", "VpdFormatError", "encode_vpd", "parse_vpd"]

#: The VPD address register is 15 bits wide: no record is longer.
MAX_VPD_BYTES = 0x8000

_ID_STRING = 0x82
_VPD_R = 0x90
_VPD_W = 0x91
_END = 0x78
_CHECKSUM_KEY = "RV"
# Keywords are two alphanumeric ASCII characters (PN, EC, SN, V0..VZ, Y0..YZ, RV, RW, ...).
_KEY_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


class VpdFormatError(ValueError):
    """The bytes are not a well-formed VPD record; ``offset`` is where reading stopped."""

    def __init__(self, problem: str, offset: int) -> None:
        super().__init__(f"{problem} at byte {offset}")
        self.problem = problem
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Vpd:
    """A card's VPD: its product name and read-only fields (``RV`` left out)."""

    product_name: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def serial_number(self) -> str | None:
        """The ``SN`` field, or None when it is missing or blank (useless to identify a card)."""
        value = self.fields.get("SN")
        return value or None


def parse_vpd(data: bytes) -> Vpd:
    """The record at the start of ``data``.

    Empty data, or data starting with 0x00 or 0xff (a blank EEPROM), is no VPD. Bytes after
    the end tag are ignored; data that stops between items without an end tag is accepted,
    since some cards leave it out. Anything else malformed raises :class:`VpdFormatError`.
    """
    if len(data) > MAX_VPD_BYTES:
        data = data[:MAX_VPD_BYTES]
    if data[:1] in (b"\x00", b"\xff"):
        return Vpd()  # a blank EEPROM: the kernel's rule too, not a corrupt record
    name: str | None = None
    fields: dict[str, str] = {}
    seen_read_only = False
    pos = 0
    while pos < len(data):
        tag = data[pos]
        if tag == _END:
            break
        if not tag & 0x80:
            # A small item other than the end tag: skip it (none is defined for VPD).
            pos += 1 + (tag & 0x07)
            continue
        if pos + 3 > len(data):
            raise VpdFormatError(f"large resource tag {tag:#04x} is cut short", pos)
        length = data[pos + 1] | data[pos + 2] << 8
        start = pos + 3
        end = start + length
        if end > len(data):
            raise VpdFormatError(
                f"resource {tag:#04x} says {length} bytes but only {len(data) - start} follow",
                pos)
        if tag == _ID_STRING:
            if name is not None:
                raise VpdFormatError("a second identifier string", pos)
            name = _text(data[start:end], pos, "identifier string") or None
        elif tag == _VPD_R:
            if seen_read_only:
                raise VpdFormatError("a second read-only section", pos)
            seen_read_only = True
            _read_only(data, start, end, fields)
        elif tag == _VPD_W:
            pass  # writable fields are scratch space: nothing there identifies the card
        else:
            raise VpdFormatError(f"unknown resource tag {tag:#04x}", pos)
        pos = end
    return Vpd(product_name=name, fields=fields)


def _read_only(data: bytes, start: int, end: int, fields: dict[str, str]) -> None:
    pos = start
    checked = False
    while pos < end:
        if pos + 3 > end:
            raise VpdFormatError("a read-only keyword entry is cut short", pos)
        raw_key = data[pos:pos + 2]
        length = data[pos + 2]
        value_start = pos + 3
        value_end = value_start + length
        if value_end > end:
            raise VpdFormatError(f"keyword {raw_key!r} runs past its section", pos)
        if not all(b in _KEY_CHARS for b in raw_key):
            raise VpdFormatError(f"keyword {raw_key!r} is not two letters or digits", pos)
        key = raw_key.decode("ascii")
        if key == _CHECKSUM_KEY:
            if length < 1:
                raise VpdFormatError("the RV entry has no checksum byte", pos)
            total = sum(data[:value_start + 1]) & 0xFF
            if total != 0:
                raise VpdFormatError(
                    f"checksum does not match (bytes up to it sum to {total:#04x}, not 0)", pos)
            checked = True
            break  # RV closes the section; what follows is reserved
        if key in fields:
            raise VpdFormatError(f"keyword {key!r} appears twice", pos)
        fields[key] = _text(data[value_start:value_end], pos, f"keyword {key!r}")
        pos = value_end
    if not checked:
        raise VpdFormatError("the read-only section has no RV checksum entry", start - 3)


def _text(raw: bytes, pos: int, what: str) -> str:
    """Printable ASCII with trailing padding (spaces, NULs) removed."""
    value = raw.rstrip(b" \x00")
    if not all(0x20 <= b < 0x7F for b in value):
        raise VpdFormatError(f"{what} holds bytes that are not printable ASCII", pos)
    return value.decode("ascii")


def encode_vpd(product_name: str | None, fields: Mapping[str, str]) -> bytes:
    """A well-formed record (identifier, VPD-R with its checksum, end tag): what a card
    stores, for building test trees and profiles. Values are ASCII of at most 255 bytes."""
    out = bytearray()
    if product_name is not None:
        name = product_name.encode("ascii")
        out += bytes((_ID_STRING, len(name) & 0xFF, len(name) >> 8)) + name
    body = bytearray()
    for key, value in fields.items():
        raw_key = key.encode("ascii")
        raw = value.encode("ascii")
        if len(raw_key) != 2 or not all(b in _KEY_CHARS for b in raw_key) or key == "RV":
            raise ValueError(f"keyword {key!r} is not two letters or digits other than RV")
        if len(raw) > 0xFF:
            raise ValueError(f"keyword {key!r}: value is longer than 255 bytes")
        body += raw_key + bytes((len(raw),)) + raw
    rv_length = 1  # just the checksum byte
    length = len(body) + 3 + rv_length
    out += bytes((_VPD_R, length & 0xFF, length >> 8)) + body + b"RV" + bytes((rv_length,))
    out.append((-sum(out)) & 0xFF)
    out.append(_END)
    return bytes(out)
