"""Human names for PCI ids, from the pci.ids database that lspci uses.

Only vendor and device lines are kept: subsystem lines are skipped and parsing stops at the
class section, so the ~1.3 MB file parses in a few tens of milliseconds, once, on the first
lookup. A missing or unreadable file gives a lookup that answers ``None``: names are a courtesy
in a report, never a reason for discovery to fail.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

log = logging.getLogger(__name__)

# Debian/Ubuntu ship it in misc/, Fedora/RHEL in hwdata/.
DEFAULT_PATHS = (Path("/usr/share/misc/pci.ids"), Path("/usr/share/hwdata/pci.ids"))

_HEX = frozenset("0123456789abcdef")

_cache: dict[Path, PciIds] = {}
_cache_lock = threading.Lock()


def _is_id(text: str) -> bool:
    return len(text) == 4 and all(c in _HEX for c in text)


def parse(text: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Vendor id -> (vendor name, {device id -> device name}), ids in lower-case hex."""
    vendors: dict[str, tuple[str, dict[str, str]]] = {}
    devices: dict[str, str] | None = None
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        if line[0] == "\t":
            if devices is None or line[1:2] == "\t":
                continue  # a subsystem line, or a device line outside any vendor
            ident, _, name = line[1:].partition(" ")
            ident = ident.lower()
            if _is_id(ident):
                devices[ident] = name.strip()
            continue
        if line.startswith("C "):
            break  # the class section: no more vendors follow
        ident, _, name = line.partition(" ")
        ident = ident.lower()
        if _is_id(ident):
            devices = {}
            vendors[ident] = (name.strip(), devices)
        else:
            devices = None
    return vendors


class PciIds:
    """A lazy lookup of vendor and device names.

    ``name()`` answers like lspci: ``"NVIDIA Corporation GA100 [A100 PCIe 40GB]"``, or
    ``"NVIDIA Corporation Device 2331"`` when only the vendor is known, or ``None``.
    """

    def __init__(self, path: Path | None = None, *, text: str | None = None) -> None:
        self.path = path
        self._text = text
        self._vendors: dict[str, tuple[str, dict[str, str]]] | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path | str | None = None) -> PciIds:
        """The database at ``path`` (or the distribution's), shared by every caller.

        Never raises: an absent file gives an object whose lookups answer ``None``.
        """
        if path is None:
            path = next((p for p in DEFAULT_PATHS if p.exists()), DEFAULT_PATHS[0])
        key = Path(path)
        with _cache_lock:
            found = _cache.get(key)
            if found is None:
                found = _cache[key] = cls(key)
            return found

    @classmethod
    def from_text(cls, text: str) -> PciIds:
        return cls(text=text)

    def _table(self) -> dict[str, tuple[str, dict[str, str]]]:
        vendors = self._vendors
        if vendors is not None:
            return vendors
        with self._lock:
            if self._vendors is None:
                self._vendors = parse(self._read())
            return self._vendors

    def _read(self) -> str:
        if self._text is not None:
            return self._text
        if self.path is None:
            return ""
        try:
            return self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            log.warning("cannot read PCI id database %s (%s): devices will have no names",
                        self.path, exc.strerror or exc)
            return ""

    @property
    def available(self) -> bool:
        """Whether the database held any vendor at all."""
        return bool(self._table())

    def vendor_name(self, vendor_id: str) -> str | None:
        entry = self._table().get(vendor_id.lower().removeprefix("0x"))
        return entry[0] if entry else None

    def device_name(self, vendor_id: str, product_id: str) -> str | None:
        entry = self._table().get(vendor_id.lower().removeprefix("0x"))
        if entry is None:
            return None
        return entry[1].get(product_id.lower().removeprefix("0x"))

    def name(self, vendor_id: str, product_id: str) -> str | None:
        entry = self._table().get(vendor_id.lower().removeprefix("0x"))
        if entry is None:
            return None
        vendor, devices = entry
        product = product_id.lower().removeprefix("0x")
        device = devices.get(product)
        return f"{vendor} {device}" if device else f"{vendor} Device {product}"
