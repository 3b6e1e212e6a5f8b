"""What the agent remembers across restarts: one small JSON file per host in the state dir.

The generation lets a restarted agent write without first losing a round trip to a conflict;
the hash of the last accepted report lets it say whether the host changed while it was down.
A missing or unreadable file is a fresh start, never a reason to stop: the server holds the
truth and a 409 re-reads it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SavedState:
    server: str | None = None
    generation: int | None = None
    report_hash: str | None = None


def state_path(state_dir: Path, host: str) -> Path:
    return state_dir / f"agent-{host}.json"


def load_state(path: Path, server: str) -> SavedState:
    """The saved state, or a fresh one when absent, unreadable or saved for another server."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return SavedState(server=server)
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable agent state %s: %s", path, exc)
        return SavedState(server=server)
    if not isinstance(raw, dict) or raw.get("server") != server:
        return SavedState(server=server)
    generation = raw.get("generation")
    report_hash = raw.get("report_hash")
    return SavedState(
        server=server,
        generation=generation if isinstance(generation, int)
        and not isinstance(generation, bool) else None,
        report_hash=report_hash if isinstance(report_hash, str) else None,
    )


def save_state(path: Path, state: SavedState) -> None:
    """Write atomically (temp file + rename): a crash leaves the old state or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"server": state.server, "generation": state.generation,
                       "report_hash": state.report_hash}, indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
