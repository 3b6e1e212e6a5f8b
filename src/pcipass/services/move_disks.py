"""A cold move's boot disk, handed from the source host to the destination through the
control plane (as Nova's cross-cell resize goes through an image): the source's agent uploads
the stopped server's overlay, the destination's agent downloads it before its spawn, and the
copy goes once the move is over.

Who may do which is decided by :func:`disk_access` (pure: a move record and a principal);
:class:`MoveDisks` keeps the files, one per move, under the server's state directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path

import anyio.to_thread

from pcipass.errors import Conflict, Forbidden, NotFound
from pcipass.records import MoveKind, MoveRecord, MoveStatus, Principal, Role

__all__ = ["MOVE_DISKS_DIR", "MoveDisks", "disk_access"]

MOVE_DISKS_DIR = "move-disks"
_FILE = re.compile(r"^\.?(\d+)(?:\.qcow2|-)")   # N.qcow2, or .N-xxxx while uploading


def disk_access(p: Principal, move: MoveRecord, *, upload: bool) -> None:
    """Raise unless ``p`` may upload (the source's agent, while its ``migrate_out`` runs) or
    download (the destination's agent, while its spawn runs) the move's disk; an admin may
    either, at those steps too."""
    side, step = ("source", MoveStatus.CLAIMED) if upload else ("dest", MoveStatus.MOVING)
    host = move.source if upload else move.dest
    if p.role is Role.AGENT:
        if p.host != host:
            raise Forbidden(f"move {move.id}'s disk is for the {side} host {host}'s agent, "
                            f"not {p.host!r}'s", field="move")
    elif p.role is not Role.ADMIN:
        raise Forbidden(f"a {p.role.value} token may not hand a move's disk over")
    if move.kind is MoveKind.LIVE or move.source == move.dest:
        raise Conflict(f"move {move.id} hands no disk over ({move.kind.value} from "
                       f"{move.source} to {move.dest})", field="move", code="no_disk_handoff")
    if move.status is not step:
        raise Conflict(f"move {move.id} is {move.status.value}: its disk is "
                       f"{'uploaded' if upload else 'downloaded'} while it is {step.value}",
                       field="move", code="move_not_ready")


class MoveDisks:
    """The copies in flight, ``ROOT/MOVE_ID.qcow2``; each written whole or not at all."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, move_id: str) -> Path:
        return self.root / f"{int(move_id)}.qcow2"

    def stored(self, move_id: str) -> Path:
        path = self.path(move_id)
        if not path.is_file():
            raise NotFound(f"move {move_id}'s source host has not handed its disk over",
                           field="move")
        return path

    async def receive(self, move_id: str, chunks: AsyncIterator[bytes]) -> int:
        """Store the upload (replacing an earlier one: a resumed task uploads again); its
        size in bytes."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{int(move_id)}-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:   # written off the event loop: disks are big
                    await anyio.to_thread.run_sync(out.write, chunk)
                    size += len(chunk)
            os.replace(tmp, self.path(move_id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return size

    def sweep(self, closed: Callable[[Collection[int]], Collection[int]]) -> list[int]:
        """Remove the copies (and interrupted uploads) of the moves ``closed`` says are over
        (asked about the ids found: a move opened meanwhile is never among them); the ids."""
        files: dict[int, list[Path]] = {}
        for f in self.root.iterdir() if self.root.is_dir() else ():
            found = _FILE.match(f.name)
            if found is not None:
                files.setdefault(int(found[1]), []).append(f)
        over = sorted(set(closed(list(files))) & set(files))
        for move_id in over:
            for f in files[move_id]:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
        return over
