"""A server's boot disk on the host: a qcow2 overlay whose backing file is the image's source.

:class:`QemuImgOverlays` runs ``qemu-img`` (real hosts, the libvirt driver);
:class:`RecordingOverlays` writes an empty file and records the call (the fake driver, the demo,
the end-to-end tests). Both refuse a missing image source the same way, create the overlay
whole or not at all (a temporary name, then a rename), leave an existing overlay alone (a
resumed spawn must not wipe what a guest already wrote) and remove one that is absent without
complaint. Failures are :class:`~pcipass.errors.VirtError` with operation ``create_disk`` or
``remove_disk``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from pcipass.errors import VirtError
from pcipass.virt.domain import BootDisk

__all__ = ["CREATE_DISK", "REMOVE_DISK", "DiskOverlays", "QemuImgOverlays",
           "RecordingOverlays"]

CREATE_DISK = "create_disk"
REMOVE_DISK = "remove_disk"
GIB = 1024 ** 3
QEMU_IMG_TIMEOUT_S = 120.0


def _error(op: str, path: str, message: str) -> VirtError:
    return VirtError(f"{op} {path}: {message}", operation=op)


class DiskOverlays(ABC):
    """Create and remove boot-disk overlays."""

    def create(self, disk: BootDisk, *, size_gb: int = 0) -> bool:
        """Make ``disk.overlay`` on ``disk.backing``, at least ``size_gb`` GiB (0: the image's
        size). False when the overlay was already there (and is left as it is)."""
        overlay, backing = Path(disk.overlay), Path(disk.backing)
        if overlay.exists():
            return False
        if not backing.is_file():
            raise _error(CREATE_DISK, disk.overlay,
                         f"image source {disk.backing} does not exist on this host")
        try:
            overlay.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _error(CREATE_DISK, disk.overlay, exc.strerror or str(exc)) from None
        fd, tmp_name = tempfile.mkstemp(dir=overlay.parent, prefix=f".tmp-{overlay.name}-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            self._write(disk, tmp, size_gb)
            os.replace(tmp, overlay)
        except OSError as exc:
            raise _error(CREATE_DISK, disk.overlay, exc.strerror or str(exc)) from None
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def remove(self, overlay: str | Path) -> bool:
        """Delete the overlay; False when there was none."""
        path = Path(overlay)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _error(REMOVE_DISK, str(path), exc.strerror or str(exc)) from None
        self._removed(path)
        return True

    @abstractmethod
    def _write(self, disk: BootDisk, target: Path, size_gb: int) -> None:
        """Write the overlay for ``disk`` at ``target`` (a temporary name)."""

    def _removed(self, path: Path) -> None:  # noqa: B027 (optional hook)
        """Called after an overlay was deleted."""


class QemuImgOverlays(DiskOverlays):
    """``qemu-img create -f qcow2 -b SOURCE -F FORMAT OVERLAY [SIZE]``; the size is given only
    when the flavor's disk is bigger than the image (qemu-img would shrink the guest's view)."""

    def __init__(self, qemu_img: str = "qemu-img") -> None:
        self.qemu_img = qemu_img

    def _run(self, args: Sequence[str], overlay: str) -> str:
        try:
            done = subprocess.run([self.qemu_img, *args], capture_output=True, text=True,
                                  timeout=QEMU_IMG_TIMEOUT_S, check=False)
        except FileNotFoundError:
            raise _error(CREATE_DISK, overlay, f"{self.qemu_img} is not installed "
                         "(Debian: qemu-utils)") from None
        except subprocess.TimeoutExpired:
            raise _error(CREATE_DISK, overlay, f"{self.qemu_img} {args[0]} took more than "
                         f"{QEMU_IMG_TIMEOUT_S:.0f}s") from None
        if done.returncode != 0:
            text = " ".join((done.stderr or done.stdout).split()) or f"exit {done.returncode}"
            raise _error(CREATE_DISK, overlay, f"qemu-img {args[0]}: {text}")
        return done.stdout

    def virtual_size(self, disk: BootDisk) -> int:
        """The image's size as the guest sees it, in bytes (``-U``: it may be in use)."""
        out = self._run(["info", "-U", "--output=json", "-f", str(disk.backing_format),
                         disk.backing], disk.overlay)
        try:
            return int(json.loads(out)["virtual-size"])
        except (ValueError, KeyError, TypeError):
            raise _error(CREATE_DISK, disk.overlay, f"qemu-img info on {disk.backing} gave "
                         "no virtual size") from None

    def _write(self, disk: BootDisk, target: Path, size_gb: int) -> None:
        args = ["create", "-q", "-f", "qcow2", "-b", disk.backing,
                "-F", str(disk.backing_format), str(target)]
        if size_gb > 0 and size_gb * GIB > self.virtual_size(disk):
            args.append(f"{size_gb}G")
        target.unlink(missing_ok=True)  # qemu-img writes the file itself
        self._run(args, disk.overlay)


class RecordingOverlays(DiskOverlays):
    """An empty file for an overlay, and one JSON line per call in ``record``."""

    def __init__(self, record: Path) -> None:
        self.record = Path(record)

    def _log(self, entry: dict[str, object]) -> None:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        with self.record.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def _write(self, disk: BootDisk, target: Path, size_gb: int) -> None:
        target.write_bytes(b"")
        self._log({"operation": CREATE_DISK, "overlay": disk.overlay, "backing": disk.backing,
                   "format": str(disk.backing_format), "size_gb": size_gb})

    def _removed(self, path: Path) -> None:
        self._log({"operation": REMOVE_DISK, "overlay": str(path)})

    @property
    def calls(self) -> list[dict[str, object]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text(encoding="utf-8").splitlines()
                if line.strip()]
