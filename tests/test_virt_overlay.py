"""Boot-disk overlays: real ``qemu-img`` (qemu-utils; skipped loudly where it is missing,
except in CI) and the recording stand-in the fake driver uses, held to the same rules."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pcipass.errors import VirtError
from pcipass.virt.domain import BootDisk, DiskFormat
from pcipass.virt.overlay import (
    CREATE_DISK,
    GIB,
    REMOVE_DISK,
    DiskOverlays,
    QemuImgOverlays,
    RecordingOverlays,
)
from test_virt_xml import need

MIB = 1024 ** 2


def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        need("qemu-img is not installed (Debian: qemu-utils)")
        raise AssertionError("unreachable")
    return path


def info(path: Path) -> dict[str, Any]:
    out = subprocess.run([qemu_img(), "info", "-U", "--output=json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def image(tmp_path: Path, fmt: str, size_mb: int = 16) -> Path:
    path = tmp_path / "images" / f"base.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([qemu_img(), "create", "-q", "-f", fmt, str(path), f"{size_mb}M"],
                   check=True)
    return path


@pytest.fixture(params=["qemu-img", "recording"])
def overlays(request: pytest.FixtureRequest, tmp_path: Path) -> DiskOverlays:
    if request.param == "qemu-img":
        qemu_img()
        return QemuImgOverlays()
    return RecordingOverlays(tmp_path / "record.jsonl")


def test_missing_source_is_a_clear_error_and_leaves_nothing(overlays: DiskOverlays,
                                                            tmp_path: Path) -> None:
    disk = BootDisk(str(tmp_path / "disks" / "s.qcow2"), "/nonexistent/cuda.qcow2")
    with pytest.raises(VirtError) as exc:
        overlays.create(disk)
    assert exc.value.operation == CREATE_DISK
    assert "image source /nonexistent/cuda.qcow2 does not exist" in exc.value.message
    assert not Path(disk.overlay).exists()
    assert not list(tmp_path.glob("disks/.tmp-*"))


def test_create_keeps_an_existing_overlay_and_remove_is_idempotent(
        overlays: DiskOverlays, tmp_path: Path) -> None:
    source = tmp_path / "base.qcow2"
    source.write_bytes(b"")
    if isinstance(overlays, QemuImgOverlays):
        source = image(tmp_path, "qcow2")
    disk = BootDisk(str(tmp_path / "disks" / "s.qcow2"), str(source))
    assert overlays.create(disk) is True
    overlay = Path(disk.overlay)
    overlay.write_bytes(b"what the guest wrote")   # a resumed spawn must not wipe it
    assert overlays.create(disk) is False
    assert overlay.read_bytes() == b"what the guest wrote"
    assert overlays.remove(overlay) is True
    assert not overlay.exists()
    assert overlays.remove(overlay) is False
    assert [p.name for p in overlay.parent.iterdir()] == []


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_qemu_img_overlay_is_backed_by_the_image(tmp_path: Path, fmt: str) -> None:
    source = image(tmp_path, fmt)
    disk = BootDisk(str(tmp_path / "disks" / "s.qcow2"), str(source), DiskFormat(fmt))
    assert QemuImgOverlays().create(disk)
    got = info(Path(disk.overlay))
    assert got["format"] == "qcow2"
    assert got["backing-filename"] == str(source)
    assert got["backing-filename-format"] == fmt
    assert got["virtual-size"] == 16 * MIB   # no size asked: the image's
    assert source.stat().st_size <= 16 * MIB + 1024 * 1024  # the image is left as it was


def test_qemu_img_grows_to_the_flavor_disk_never_shrinks(tmp_path: Path) -> None:
    source = image(tmp_path, "qcow2", size_mb=2048)
    grown = BootDisk(str(tmp_path / "grown.qcow2"), str(source))
    QemuImgOverlays().create(grown, size_gb=3)
    assert info(Path(grown.overlay))["virtual-size"] == 3 * GIB
    kept = BootDisk(str(tmp_path / "kept.qcow2"), str(source))
    QemuImgOverlays().create(kept, size_gb=1)   # smaller than the image: the image's size
    assert info(Path(kept.overlay))["virtual-size"] == 2048 * MIB


def test_qemu_img_failure_carries_its_words(tmp_path: Path) -> None:
    qemu_img()
    source = tmp_path / "not-an-image.qcow2"
    source.write_text("hello")
    disk = BootDisk(str(tmp_path / "s.qcow2"), str(source), DiskFormat.QCOW2)
    with pytest.raises(VirtError) as exc:
        QemuImgOverlays().create(disk, size_gb=1)
    assert exc.value.operation == CREATE_DISK
    assert "qemu-img" in exc.value.message and str(source) in exc.value.message
    assert not Path(disk.overlay).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["not-an-image.qcow2"]


def test_missing_qemu_img_says_which_package(tmp_path: Path) -> None:
    source = tmp_path / "base.qcow2"
    source.write_bytes(b"")
    with pytest.raises(VirtError, match="qemu-utils"):
        QemuImgOverlays("/nonexistent/qemu-img").create(
            BootDisk(str(tmp_path / "s.qcow2"), str(source)), size_gb=1)


def test_recording_overlays_record_every_call(tmp_path: Path) -> None:
    source = tmp_path / "base.raw"
    source.write_bytes(b"\0" * 512)
    rec = RecordingOverlays(tmp_path / "state" / "disks.jsonl")
    disk = BootDisk(str(tmp_path / "disks" / "s.qcow2"), str(source), DiskFormat.RAW)
    rec.create(disk, size_gb=20)
    rec.create(disk, size_gb=20)   # kept: not recorded again
    assert Path(disk.overlay).read_bytes() == b""
    rec.remove(disk.overlay)
    rec.remove(disk.overlay)
    assert rec.calls == [
        {"operation": CREATE_DISK, "overlay": disk.overlay, "backing": str(source),
         "format": "raw", "size_gb": 20},
        {"operation": REMOVE_DISK, "overlay": disk.overlay},
    ]
    assert RecordingOverlays(tmp_path / "elsewhere.jsonl").calls == []
