"""A cold move's disk hand-off (pcipass.services.move_disks): who may upload or download
it at which step, the copies kept whole or not at all, and the sweep of moves that are over
(on SQLite and PostgreSQL). End to end: tests/test_e2e_moves.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from fleet import ADMIN, T0, member
from pcipass.errors import Conflict, Forbidden
from pcipass.records import MoveKind, MoveRecord, MoveStatus, Principal, Role
from pcipass.services.move_disks import MoveDisks, disk_access

MOVE = MoveRecord(id="7", server_id="s", kind=MoveKind.MIGRATE, status=MoveStatus.CLAIMED,
                  source="src", dest="dst", old_flavor="f", new_flavor="f",
                  auto_confirm=False, on_dest=False, message=None, created_at=T0,
                  updated_at=T0, generation=1)


def agent(host: str) -> Principal:
    return Principal(f"agent-{host}", Role.AGENT, host=host)


def test_the_source_uploads_while_claimed_and_the_destination_downloads_while_moving(
        ) -> None:
    disk_access(agent("src"), MOVE, upload=True)
    disk_access(ADMIN, MOVE, upload=True)
    moving = replace(MOVE, status=MoveStatus.MOVING)
    disk_access(agent("dst"), moving, upload=False)
    for who, move, upload in ((agent("dst"), MOVE, True), (agent("src"), moving, False),
                              (agent("other"), moving, False), (member("p1"), MOVE, True)):
        with pytest.raises(Forbidden):
            disk_access(who, move, upload=upload)
    with pytest.raises(Conflict) as early:
        disk_access(agent("dst"), MOVE, upload=False)     # not uploaded yet: still claimed
    assert early.value.code == "move_not_ready"
    for move in (replace(MOVE, kind=MoveKind.LIVE), replace(MOVE, dest="src")):
        with pytest.raises(Conflict) as none:
            disk_access(agent("src"), move, upload=True)
        assert none.value.code == "no_disk_handoff"


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def broken() -> AsyncIterator[bytes]:
    yield b"half a disk"
    raise OSError("the agent hung up")


def test_a_copy_is_stored_whole_or_not_at_all_and_replaced_by_a_later_upload(
        tmp_path: Path) -> None:
    disks = MoveDisks(tmp_path / "move-disks")
    assert anyio.run(disks.receive, "7", chunks(b"abc", b"def")) == 6
    assert disks.stored("7").read_bytes() == b"abcdef"
    with pytest.raises(OSError):
        anyio.run(disks.receive, "7", broken())
    assert disks.stored("7").read_bytes() == b"abcdef"          # the earlier copy stands
    assert [f.name for f in disks.root.iterdir()] == ["7.qcow2"]  # no half file left
    anyio.run(disks.receive, "7", chunks(b"again"))
    assert disks.stored("7").read_bytes() == b"again"


def test_the_sweep_removes_only_the_moves_said_to_be_over(tmp_path: Path) -> None:
    disks = MoveDisks(tmp_path / "move-disks")
    assert disks.sweep(lambda ids: set(ids)) == []               # no directory yet
    for move_id in ("1", "2", "3"):
        anyio.run(disks.receive, move_id, chunks(b"x"))
    (disks.root / ".2-interrupted").write_bytes(b"x")
    (disks.root / "notes.txt").write_bytes(b"x")
    asked: list[list[int]] = []

    def closed(ids: list[int]) -> set[int]:
        asked.append(sorted(ids))
        return {2, 3, 99}

    assert disks.sweep(closed) == [2, 3]
    assert asked == [[1, 2, 3]]
    assert sorted(f.name for f in disks.root.iterdir()) == ["1.qcow2", "notes.txt"]
